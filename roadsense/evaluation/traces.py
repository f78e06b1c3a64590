"""Per-step traces of single episodes, their plots, and the report's "Collisions and near-misses".

Evaluation records only a summary per episode. After it, the collisions and the closest
near-misses of the evaluated policy are re-run from their plan (same scenario, seed and
hazard rank; the policies act deterministically, so the episode is the same) with a
:class:`TraceRecorder` watching every step. Each trace is written as JSON (columns and units
below) next to a PNG plot, and the re-run's outcome is checked against the evaluation's.

Trace JSON: ``{"episode": {...how to re-run it...}, "summary": {...the env's episode summary...},
"columns": {name: unit and meaning}, "steps": {name: [one value per step]}}``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from roadsense.env.convoy_env import COLLISION_GAP_M, MAX_DECEL
from roadsense.env.observation import BRAKING_ACCEL, SIGNAL_DECAY
from roadsense.env.reward import BRAKING_ACTION
from roadsense.evaluation.matrix import EpisodeSpec
from roadsense.evaluation.policies import BASELINES
from roadsense.evaluation.runner import run_episodes
from roadsense.sim.backend import STEP_S

if TYPE_CHECKING:
    from roadsense.config import PipelineConfig
    from roadsense.env.convoy_env import ConvoyEnv

NEAR_MISS_GAP_M = 10.0  # a true gap under this after the hazard, without a collision, is a near-miss
MAX_TRACED = 12  # plots in the report: enough to see a pattern, few enough to read
TRACE_DIR = "traces"
# Summary fields a re-run must reproduce exactly for its trace to stand for the evaluated episode.
REPRODUCED_KEYS = ("collision", "min_gap_post_hazard_m", "steps", "hazard_received", "reaction_time_s")

TRACE_COLUMNS = {
    "step": f"agent step after warm-up (1 = after the first action); one step is {STEP_S} s",
    "t_s": "time since the end of warm-up at the end of the step, s",
    "true_gap_m": "SUMO's bumper-to-bumper gap from the ego to the nearest peer ahead, m (null: none ahead)",
    "ego_speed_mps": "ego speed (ground truth), m/s",
    "action": f"brake intensity the ego applied, 0..1 (<= {BRAKING_ACTION}: SUMO's car-following drives; "
              f"1 = {MAX_DECEL:g} m/s^2)",
    "braking_signal": f"the ego's braking signal, 0..1 (1 when a received peer reports accel <= {BRAKING_ACCEL} m/s^2, "
                      f"x{SIGNAL_DECAY} per step)",
    "messages_received": "peers whose message reached the ego over the mesh in this step",
    "hazard_message": "1 if a message from the hazard peer reached the ego in this step (0 before the hazard)",
    "reward": "the step's reward (unnormalised)",
}


@dataclass(frozen=True, slots=True)
class TracedEpisode:
    """Which episode a trace shows: everything needed to re-run it."""

    policy: str  # a model.zip path or a baseline name
    dataset_id: str
    scenario_id: str
    seed: int
    n_peers: int
    hazard_rank: int
    episode: int | None = None  # index within its bucket; None when addressed by scenario and seed

    @property
    def bucket(self) -> str:
        return f"n{self.n_peers}_k{self.hazard_rank}"

    @property
    def stem(self) -> str:
        """File name (without suffix) of its trace and plot."""
        if self.episode is None:
            return f"{self.scenario_id}-seed{self.seed}-k{self.hazard_rank}"
        return f"{self.bucket}-e{self.episode}"

    @property
    def policy_label(self) -> str:
        return self.policy if self.policy in BASELINES else f"model {Path(self.policy).name}"


class TraceRecorder:
    """A runner observer that keeps one row of :data:`TRACE_COLUMNS` per step."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float | int | None]] = []
        self.hazard_start_step = -1
        self.backend = ""

    def __call__(self, env: "ConvoyEnv", action: npt.NDArray[np.float32], reward: float, info: dict[str, Any]) -> None:
        if not self.rows:
            self.hazard_start_step, self.backend = env.hazard.start_step, env.backend.name
        gap = info.get("true_gap_m")  # absent when SUMO failed in this step
        row: dict[str, float | int | None] = {
            "step": env.t, "t_s": round(env.t * STEP_S, 1),
            "true_gap_m": gap if gap is not None and math.isfinite(gap) else None}
        row.update(env.trace_point())
        row["reward"] = reward
        self.rows.append(row)

    def result(self) -> dict[str, Any]:
        return {"hazard_start_step": self.hazard_start_step, "backend": self.backend,
                "steps": {name: [row[name] for row in self.rows] for name in TRACE_COLUMNS}}


def write_trace(folder: Path, episode: TracedEpisode, summary: dict[str, Any], observed: dict[str, Any]) -> Path:
    """Write ``<stem>.json`` (see the module docstring) and ``<stem>.png``; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "episode": {**asdict(episode), "bucket": episode.bucket, "policy_label": episode.policy_label,
                    "backend": observed["backend"],
                    "hazard_start_step": observed["hazard_start_step"],
                    "hazard_start_s": round(observed["hazard_start_step"] * STEP_S, 1)},
        "summary": summary,
        "columns": TRACE_COLUMNS,
        "steps": observed["steps"],
    }
    path = folder / f"{episode.stem}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    plot_trace(document, path.with_suffix(".png"))
    return path


def outcome(summary: dict[str, Any]) -> str:
    """``collision``, ``near-miss``, ``SUMO error`` or ``safe`` (definitions in the report)."""
    if summary["sim_error"] is not None:
        return "SUMO error"
    if summary["collision"]:
        return "collision"
    gap = summary["min_gap_post_hazard_m"]
    return "near-miss" if gap is not None and gap < NEAR_MISS_GAP_M else "safe"


def plot_trace(document: dict[str, Any], path: Path) -> None:
    """Four panels over time: true gap, ego speed, action and braking signal, message receptions."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers or CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    episode, steps, summary = document["episode"], document["steps"], document["summary"]
    t = np.asarray(steps["t_s"])
    gap = np.array([np.nan if g is None else g for g in steps["true_gap_m"]])
    fig, axes = plt.subplots(4, 1, figsize=(7, 6.5), sharex=True, height_ratios=(3, 2, 2, 1.5))
    axes[0].plot(t, gap, color="black", label="true gap")
    axes[0].axhline(COLLISION_GAP_M, color="tab:red", lw=0.8, ls="--", label=f"collision ({COLLISION_GAP_M:g} m)")
    axes[0].axhline(NEAR_MISS_GAP_M, color="tab:orange", lw=0.8, ls="--", label=f"near-miss ({NEAR_MISS_GAP_M:g} m)")
    axes[0].set_ylabel("gap (m)")
    axes[0].legend(fontsize=7, loc="upper right")
    axes[1].plot(t, steps["ego_speed_mps"], color="tab:blue")
    axes[1].set_ylabel("ego speed\n(m/s)")
    axes[2].step(t, steps["action"], where="post", color="tab:purple", label="action (brake)")
    axes[2].plot(t, steps["braking_signal"], color="tab:green", label="braking signal")
    axes[2].set_ylim(-0.05, 1.05)
    axes[2].set_ylabel("0..1")
    axes[2].legend(fontsize=7, loc="upper right")
    axes[3].step(t, steps["messages_received"], where="post", color="tab:gray", lw=0.8, label="messages received")
    hazard_t = t[np.asarray(steps["hazard_message"], bool)]
    axes[3].plot(hazard_t, np.full_like(hazard_t, -0.5), "|", color="tab:red", ms=6, label="from the hazard peer")
    axes[3].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[3].set_ylabel("messages\nper step")
    axes[3].set_xlabel("time since warm-up (s)")
    axes[3].legend(fontsize=7, loc="upper right")
    for ax in axes:
        ax.axvline(episode["hazard_start_s"], color="tab:red", lw=1.0, alpha=0.6)
    gap_text = summary["min_gap_post_hazard_m"]
    detail = "" if gap_text is None else f", min gap after hazard {gap_text:.2f} m"
    fig.suptitle(f"{episode['scenario_id']}  seed {episode['seed']}  bucket {episode['bucket']}  {episode['policy_label']}\n"
                 f"{outcome(summary)}{detail} (red line: hazard start)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def select_failures(episodes: list[dict[str, Any]], cap: int = MAX_TRACED) -> list[dict[str, Any]]:
    """Up to ``cap`` episodes to trace: collisions, then near-misses, closest first.

    Collisions are taken one bucket at a time (the first of every bucket, in plan order, then
    the second...), so a policy that collides often shows where, not just its first bucket.
    """
    seen: dict[tuple[int, int], int] = {}
    rounds: list[tuple[int, dict[str, Any]]] = []  # (the collision's round in its bucket, the episode)
    for e in episodes:
        if outcome(e) == "collision":
            bucket = (e["bucket_n"], e["bucket_k"])
            seen[bucket] = seen.get(bucket, -1) + 1
            rounds.append((seen[bucket], e))
    collisions = [e for _, e in sorted(rounds, key=lambda pair: pair[0])]  # stable: plan order within a round
    near = sorted((e for e in episodes if outcome(e) == "near-miss"), key=lambda e: e["min_gap_post_hazard_m"])
    return (collisions + near)[:cap]


def trace_failures(output: Path, policy: str, dataset_root: Path, dataset_id: str, config: "PipelineConfig",
                   episodes: list[dict[str, Any]]) -> list[str]:
    """Re-run and trace the collisions and near-misses of ``episodes``; returns the report section's lines.

    ``episodes`` are the evaluation's summaries of ``policy`` (with bucket, episode and seed).
    Traces go to ``output/traces/``.
    """
    chosen = select_failures(episodes)
    started = time.monotonic()
    reruns: list[dict[str, Any]] = []
    if chosen:
        specs = [EpisodeSpec(e["bucket_n"], e["bucket_k"], e["episode"], e["scenario_id"], e["seed"]) for e in chosen]
        reruns = run_episodes(specs, [policy], dataset_root, config.env, config.evaluation.eval_workers,
                              observer=TraceRecorder)[policy]
    for rerun in reruns:
        observed = rerun.pop("observed")
        episode = TracedEpisode(policy, dataset_id, rerun["scenario_id"], rerun["seed"], rerun["bucket_n"],
                                rerun["bucket_k"], rerun["episode"])
        write_trace(output / TRACE_DIR, episode, rerun, observed)
    return failure_section(policy, episodes, chosen, reruns, time.monotonic() - started)


def failure_section(policy: str, episodes: list[dict[str, Any]], chosen: list[dict[str, Any]],
                    reruns: list[dict[str, Any]], seconds: float) -> list[str]:
    """Markdown of "Collisions and near-misses": definitions, a table and one plot per traced episode."""
    counts = {kind: sum(outcome(e) == kind for e in episodes) for kind in ("collision", "near-miss")}
    label = policy if policy in BASELINES else "the model"
    lines = [
        "## Collisions and near-misses",
        "",
        f"A collision is a true (SUMO) bumper-to-bumper gap under {COLLISION_GAP_M:g} m; the episode ends there. "
        f"A near-miss is an episode without a collision whose true gap fell under {NEAR_MISS_GAP_M:g} m after the "
        "hazard started.",
        "",
    ]
    if not chosen:
        return lines + [f"None: {label} had no collision and no near-miss in {len(episodes)} episodes.", ""]
    lines += [
        f"{label}: {counts['collision']} collision(s) and {counts['near-miss']} near-miss(es) in {len(episodes)} "
        f"episodes. Traced below: {len(chosen)} (at most {MAX_TRACED}), collisions first, then the closest "
        f"near-misses. Each was re-run after the evaluation from its plan (scenario, seed, hazard rank; the policy "
        f"acts deterministically) in {seconds:.1f} s; `reproduced` says whether the re-run gave the evaluated "
        f"outcome ({', '.join(REPRODUCED_KEYS)}) exactly. Per-step data: `{TRACE_DIR}/<bucket>-e<episode>.json`. "
        "Watch one: `roadsense replay --run <this folder> --bucket <bucket> --episode <episode> [--gui]`.",
        "",
        "| bucket | episode | scenario | seed | outcome | min gap after hazard (m) | hazard's braking message received | "
        "reaction (s) | reproduced |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for evaluated, rerun in zip(chosen, reruns, strict=True):  # one re-run per chosen episode
        same = all(evaluated[k] == rerun[k] for k in REPRODUCED_KEYS)
        reaction = "none" if evaluated["reaction_time_s"] is None else f"{evaluated['reaction_time_s']:.1f}"
        lines.append(
            f"| n{evaluated['bucket_n']}_k{evaluated['bucket_k']} | {evaluated['episode']} | {evaluated['scenario_id']} "
            f"| {evaluated['seed']} | {outcome(evaluated)} | {evaluated['min_gap_post_hazard_m']:.3f} | "
            f"{'yes' if evaluated['hazard_received'] else 'no'} | {reaction} | "
            f"{'yes' if same else '**no**: ' + _differences(evaluated, rerun)} |")
    lines.append("")
    for evaluated in chosen:
        stem = f"n{evaluated['bucket_n']}_k{evaluated['bucket_k']}-e{evaluated['episode']}"
        lines += [f"![{outcome(evaluated)} {stem}]({TRACE_DIR}/{stem}.png)", ""]
    return lines


def _differences(evaluated: dict[str, Any], rerun: dict[str, Any]) -> str:
    return ", ".join(f"{k} {evaluated[k]} -> {rerun[k]}" for k in REPRODUCED_KEYS if evaluated[k] != rerun[k])
