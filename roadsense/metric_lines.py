"""Single-line metric output that log scrapers (SageMaker MetricDefinitions, grep) can read.

A line looks like ``[train] timesteps=4096 fps=1032.5 ep_rew_mean=-12.3``: a tag, then
``name=value`` pairs. :data:`METRIC_DEFINITIONS` is the matching list for
``CreateTrainingJob``; the launcher reads it from here so the two never drift apart.
"""

from __future__ import annotations

import math
import re
import sys
from typing import TextIO

TRAIN_TAG = "train"
EVAL_TAG = "eval"
VAL_TAG = "val"  # the current policy on the val split, during training (model selection)

# (tag, metric name) pairs that are published; the regex of each is derived below.
PUBLISHED: tuple[tuple[str, str], ...] = (
    (TRAIN_TAG, "timesteps"),
    (TRAIN_TAG, "total_timesteps"),
    (TRAIN_TAG, "fps"),
    (TRAIN_TAG, "ep_rew_mean"),
    (TRAIN_TAG, "explained_variance"),
    (TRAIN_TAG, "approx_kl"),
    (TRAIN_TAG, "std"),
    (TRAIN_TAG, "sim_errors"),
    (VAL_TAG, "timesteps"),
    (VAL_TAG, "behavioral_success_rate"),
    (VAL_TAG, "collision_rate"),
    (EVAL_TAG, "collision_rate"),
    (EVAL_TAG, "success_rate"),
    (EVAL_TAG, "behavioral_success_rate"),
    (EVAL_TAG, "reaction_rate"),
    (EVAL_TAG, "mean_reaction_time_s"),
)

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def metric_regex(tag: str, name: str) -> str:
    """Regex whose first group is the value of ``name`` on a ``[tag]`` line."""
    return rf"\[{tag}\].*\b{name}={_NUMBER}"


METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": f"{tag}:{name}", "Regex": metric_regex(tag, name)} for tag, name in PUBLISHED
]


def format_line(tag: str, values: dict[str, float | int]) -> str:
    """``[tag] a=1 b=2.5``; NaN and infinities are left out (a scraper cannot parse them)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, float):
            if not math.isfinite(value):
                continue
            parts.append(f"{key}={value:.6g}")
        else:
            parts.append(f"{key}={value}")
    return f"[{tag}] " + " ".join(parts)


def emit(tag: str, values: dict[str, float | int], stream: TextIO | None = None) -> None:
    """Print one metric line and flush, so it reaches the log scraper at once."""
    out = stream or sys.stdout
    print(format_line(tag, values), file=out, flush=True)


def parse_line(line: str) -> tuple[str, dict[str, float]] | None:
    """The inverse of :func:`format_line`; ``None`` for any other line."""
    match = re.match(r"^\[(\w+)\] (.*)$", line.strip())
    if not match:
        return None
    values = {}
    for pair in match.group(2).split():
        key, sep, value = pair.partition("=")
        if sep:
            try:
                values[key] = float(value)
            except ValueError:
                continue
    return match.group(1), values
