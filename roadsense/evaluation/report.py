"""report.md and its pictures: what a person needs to judge a policy in a minute."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in containers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HEADLINE = (
    ("behavioral_success_rate", "behavioural success", "{:.1%}"),
    ("collision_rate", "collisions", "{:.1%}"),
    ("reception_rate", "hazard received", "{:.1%}"),
    ("reaction_rate", "reacted", "{:.1%}"),
    ("mean_reaction_time_s", "mean reaction (s)", "{:.2f}"),
    ("mean_min_distance_post_hazard_m", "min gap after hazard (m)", "{:.1f}"),
)


def _fmt(value: Any, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def write_report(output: Path, metrics: dict[str, Any], progress_csv: Path | None = None,
                 sections: Sequence[str] = ()) -> Path:
    """Write report.md plus learning_curve.png, bucket_heatmap.png and reaction_times.png.

    ``sections``: markdown lines appended at the end (e.g. the collisions and near-misses).
    """
    pictures = [("bucket_heatmap.png", "Behavioural success per bucket"), ("reaction_times.png", "Reaction times")]
    _heatmap(metrics["per_bucket"], output / "bucket_heatmap.png")
    _reaction_histogram(metrics.get("reaction_times_s", []), output / "reaction_times.png")
    if progress_csv is not None and progress_csv.exists() and _learning_curve(progress_csv, output / "learning_curve.png"):
        pictures.insert(0, ("learning_curve.png", "Learning curve"))

    rows = [("policy", metrics["policy"], metrics["overall"])]
    rows += [("baseline", name, m["overall"]) for name, m in metrics.get("baselines", {}).items()]
    lines = [
        f"# Evaluation: {metrics['policy']}",
        "",
        f"{metrics['overall']['episodes']} episodes over {len(metrics['per_bucket'])} buckets "
        f"(peer count x hazard rank), hazards always on, eval seed {metrics['plan']['eval_seed']}.",
        "",
        "| | " + " | ".join(label for _, label, _ in HEADLINE) + " |",
        "|---|" + "---|" * len(HEADLINE),
    ]
    for kind, name, m in rows:
        lines.append(f"| {kind}: {name} | " + " | ".join(_fmt(m.get(key), p) for key, _, p in HEADLINE) + " |")
    lines += ["", "## Per peer count", "", "| peers | episodes | behavioural success | collisions | reaction (s) |",
              "|---|---|---|---|---|"]
    for n, m in metrics["per_peer_count"].items():
        lines.append(f"| {n} | {m['episodes']} | {_fmt(m['behavioral_success_rate'], '{:.1%}')} | "
                     f"{_fmt(m['collision_rate'], '{:.1%}')} | {_fmt(m['mean_reaction_time_s'], '{:.2f}')} |")
    lines.append("")
    for file, title in pictures:
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    path = output / "report.md"
    path.write_text("\n".join([*lines, *sections]))
    return path


def _heatmap(per_bucket: dict[str, Any], path: Path) -> None:
    grid = np.full((5, 5), np.nan)
    for key, m in per_bucket.items():
        n, k = (int(part[1:]) for part in key.split("_"))
        grid[n - 1, k - 1] = m["behavioral_success_rate"]
    fig, ax = plt.subplots(figsize=(5, 4))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", origin="lower")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(5), [str(k) for k in range(1, 6)])
    ax.set_yticks(range(5), [str(n) for n in range(1, 6)])
    ax.set_xlabel("hazard on peer rank k")
    ax.set_ylabel("peers n")
    ax.set_title("Behavioural success")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _reaction_histogram(times: list[float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3))
    if times:
        ax.hist(times, bins=min(30, max(5, len(times) // 3)), color="tab:blue")
    else:
        ax.text(0.5, 0.5, "no reactions", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("reaction time after hazard start (s)")
    ax.set_ylabel("episodes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _learning_curve(progress_csv: Path, path: Path) -> bool:
    """Episode reward against env steps from SB3's progress.csv; False if it holds no points."""
    steps, rewards = [], []
    with open(progress_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                steps.append(float(row["time/total_timesteps"]))
                rewards.append(float(row["rollout/ep_rew_mean"]))
            except (KeyError, ValueError):
                continue
    if not steps:
        return False
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(steps, rewards)
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean episode reward")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
