"""Aggregate episode summaries into metrics.json (domain.md, 'Evaluation')."""

from __future__ import annotations

from typing import Any

import numpy as np

BEHAVIORAL_REWARD_FLOOR = -1000.0


def aggregate(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The rates and means of one group of episodes."""
    n = len(episodes)
    if n == 0:
        return {"episodes": 0}
    collisions = [e["collision"] for e in episodes]
    # An episode that SUMO cut short proves nothing, so it never counts as a success.
    completed = [e["sim_error"] is None for e in episodes]
    reacted = [e for e in episodes if e["reaction"]]
    gaps = [e["min_gap_post_hazard_m"] for e in episodes if e["min_gap_post_hazard_m"] is not None]
    return {
        "episodes": n,
        "collision_rate": float(np.mean(collisions)),
        "success_rate": float(np.mean([ok and not c for ok, c in zip(completed, collisions)])),
        "behavioral_success_rate": float(np.mean(
            [ok and not e["collision"] and e["reward"] > BEHAVIORAL_REWARD_FLOOR for ok, e in zip(completed, episodes)])),
        "reception_rate": float(np.mean([e["hazard_received"] for e in episodes])),
        "reaction_rate": len(reacted) / n,
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
