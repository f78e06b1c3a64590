"""Aggregate episode summaries into metrics.json (docs/design.md, "Evaluation").

Every rate ``<rate>`` of a section (overall, each peer count, each bucket, and the same for
each baseline) has its Wilson 95 % interval beside it as ``<rate>_ci95`` = [low, high]
(roadsense.evaluation.stats), over that section's ``episodes``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from roadsense.evaluation.stats import wilson_interval

BEHAVIORAL_REWARD_FLOOR = -1000.0
# The shares of episodes in a section; each gets an interval.
RATES = ("collision_rate", "success_rate", "behavioral_success_rate", "reception_rate", "reaction_rate")
CI_SUFFIX = "_ci95"


def aggregate(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The rates (with their 95 % intervals) and means of one group of episodes."""
    n = len(episodes)
    if n == 0:
        return {"episodes": 0}
    collisions = [e["collision"] for e in episodes]
    # An episode that SUMO cut short proves nothing, so it never counts as a success.
    completed = [e["sim_error"] is None for e in episodes]
    reacted = [e for e in episodes if e["reaction"]]
    gaps = [e["min_gap_post_hazard_m"] for e in episodes if e["min_gap_post_hazard_m"] is not None]
    # completed and collisions hold one entry per episode, so every zip below is strict.
    rates = {
        "collision_rate": float(np.mean(collisions)),
        "success_rate": float(np.mean([ok and not c for ok, c in zip(completed, collisions, strict=True)])),
        "behavioral_success_rate": float(np.mean(
            [ok and not e["collision"] and e["reward"] > BEHAVIORAL_REWARD_FLOOR
             for ok, e in zip(completed, episodes, strict=True)])),
        "reception_rate": float(np.mean([e["hazard_received"] for e in episodes])),
        "reaction_rate": len(reacted) / n,
    }
    return {
        "episodes": n,
        **rates,
        **{rate + CI_SUFFIX: list(wilson_interval(value, n)) for rate, value in rates.items()},
        "mean_reaction_time_s": float(np.mean([e["reaction_time_s"] for e in reacted])) if reacted else None,
        "mean_min_distance_post_hazard_m": float(np.mean(gaps)) if gaps else None,
        "mean_reward": float(np.mean([e["reward"] for e in episodes])),
        "sim_errors": completed.count(False),
    }


def compute_metrics(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """``overall``, ``per_peer_count`` and ``per_bucket`` (keys ``n{n}_k{k}``)."""
    per_count: dict[str, Any] = {}
    per_bucket: dict[str, Any] = {}
    for n in sorted({e["bucket_n"] for e in episodes}):
        group = [e for e in episodes if e["bucket_n"] == n]
        per_count[str(n)] = aggregate(group)
        for k in sorted({e["bucket_k"] for e in group}):
            per_bucket[f"n{n}_k{k}"] = aggregate([e for e in group if e["bucket_k"] == k])
    return {"overall": aggregate(episodes), "per_peer_count": per_count, "per_bucket": per_bucket}


def rate_interval(section: dict[str, Any], rate: str) -> tuple[float, float] | None:
    """The 95 % interval of ``section[rate]``: the stored ``<rate>_ci95``, else (a metrics.json
    written before the intervals) Wilson's from the rate and ``episodes``; None if either is missing."""
    stored = section.get(rate + CI_SUFFIX)
    if stored is not None:
        return stored[0], stored[1]
    value, n = section.get(rate), section.get("episodes")
    if not isinstance(value, (int, float)) or not isinstance(n, int) or n <= 0:
        return None
    return wilson_interval(float(value), n)


def format_rate(section: dict[str, Any], rate: str) -> str:
    """``section[rate]`` as a percentage with its 95 % interval in percent, e.g. ``98.7% (96.2-99.6)``."""
    value = section.get(rate)
    if value is None:
        return "n/a"
    interval = rate_interval(section, rate)
    if interval is None:
        return f"{value:.1%}"
    return f"{value:.1%} ({100 * interval[0]:.1f}-{100 * interval[1]:.1f})"
