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

from roadsense.evaluation.metrics import RATES, format_rate  # noqa: E402

HEADLINE = (
    ("behavioral_success_rate", "behavioural success"),
    ("collision_rate", "collisions"),
    ("reception_rate", "hazard received"),
    ("reaction_rate", "reacted"),
    ("mean_reaction_time_s", "mean reaction (s)"),
    ("mean_min_distance_post_hazard_m", "min gap after hazard (m)"),
)
_MEAN_FORMATS = {"mean_reaction_time_s": "{:.2f}", "mean_min_distance_post_hazard_m": "{:.1f}"}


def _fmt(value: Any, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _cell(section: dict[str, Any], key: str) -> str:
    """A rate with its 95 % interval, or a mean."""
    return format_rate(section, key) if key in RATES else _fmt(section.get(key), _MEAN_FORMATS[key])


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
        "Rates are shares of episodes, each with its 95 % Wilson interval in percent (low-high).",
        "",
        "| | " + " | ".join(label for _, label in HEADLINE) + " |",
        "|---|" + "---|" * len(HEADLINE),
    ]
    for kind, name, m in rows:
        lines.append(f"| {kind}: {name} | " + " | ".join(_cell(m, key) for key, _ in HEADLINE) + " |")
    lines += ["", "## Per peer count", "", "| peers | episodes | behavioural success | collisions | reaction (s) |",
              "|---|---|---|---|---|"]
    for n, m in metrics["per_peer_count"].items():
        lines.append(f"| {n} | {m['episodes']} | {_cell(m, 'behavioral_success_rate')} | "
                     f"{_cell(m, 'collision_rate')} | {_cell(m, 'mean_reaction_time_s')} |")
    lines += ["", "## Per bucket", "", "| peers n | hazard rank k | episodes | behavioural success | collisions |",
              "|---|---|---|---|---|"]
    for key, m in metrics["per_bucket"].items():
        n, k = _bucket(key)
        lines.append(f"| {n} | {k} | {m['episodes']} | {_cell(m, 'behavioral_success_rate')} | {_cell(m, 'collision_rate')} |")
    lines.append("")
    lines += _selection_lines(metrics.get("model_selection"))
    for file, title in pictures:
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    path = output / "report.md"
    path.write_text("\n".join([*lines, *sections]))
    return path


def _selection_lines(selection: dict[str, Any] | None) -> list[str]:
    """Which checkpoint was evaluated, and its score on the val split (never the eval split)."""
    if selection is None:
        return []
    lines = ["## Model selection", ""]
    steps = f"{selection['selected_timesteps']:,} steps (the run ended at {selection['last_timesteps']:,})"
    score = selection.get("validation")
    if score is None:
        return lines + [f"The evaluated model is the last checkpoint, {steps}: {selection['reason']}.", ""]
    lines += [
        f"The evaluated model is the **{selection['selected']}** checkpoint by validation, at {steps}; "
        f"criterion: {selection['criterion']}.",
        f"On the val split ({score['episodes']} episodes, val seed {selection['val_seed']}): behavioural success "
        f"{format_rate(score, 'behavioral_success_rate')}, collisions {format_rate(score, 'collision_rate')}. "
        f"{len(selection['history'])} validations in all; `model_last.zip` is the last checkpoint.",
        "",
    ]
    return lines


def _bucket(key: str) -> tuple[int, int]:
    """``"n3_k2"`` -> (3, 2): peer count and hazard rank."""
    n, k = (int(part[1:]) for part in key.split("_"))
    return n, k


def _heatmap(per_bucket: dict[str, Any], path: Path) -> None:
    grid = np.full((5, 5), np.nan)
    for key, m in per_bucket.items():
        n, k = _bucket(key)
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
    """Episode reward, and behavioural success on the val split, against env steps from progress.csv.

    False if it holds no points. Validation rows are logged at their own step (SB3's CSV
    leaves the other columns empty there).
    """
    reward_curve: tuple[list[float], list[float]] = ([], [])
    val_curve: tuple[list[float], list[float]] = ([], [])
    with open(progress_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            for column, curve in (("rollout/ep_rew_mean", reward_curve), ("val/behavioral_success_rate", val_curve)):
                try:
                    value = float(row[column])
                    step = float(row["time/total_timesteps"] or row["val/timesteps"])
                except (KeyError, ValueError, TypeError):
                    continue
                curve[0].append(step)
                curve[1].append(value)
    if not reward_curve[0] and not val_curve[0]:
        return False
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(*reward_curve, color="tab:blue")
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean episode reward", color="tab:blue")
    if val_curve[0]:
        val_ax = ax.twinx()
        val_ax.plot(*val_curve, "o-", color="tab:green")
        val_ax.set_ylim(0, 1.02)
        val_ax.set_ylabel("val behavioural success", color="tab:green")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
