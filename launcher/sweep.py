"""Sweeps: a grid of seeds and ``--set key=v1,v2`` values, one run per point, under a parent run id.

Children are ``<parent>-001``, ``<parent>-002``...; the parent's ``sweep.json`` (in S3 and, for
``--local``, in ``<runs-dir>/<parent>/``) lists each child's run id and settings, which is
what ``compare`` reads.
"""

from __future__ import annotations

import itertools
import json
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from launcher.layout import RUN_ID_MAX, validate_run_id
from roadsense.config import ConfigError
from roadsense.evaluation.metrics import RATES, format_rate
from roadsense.evaluation.stats import differs
from roadsense.metric_lines import EVAL_TAG, PUBLISHED

CHILD_SUFFIX = "-000"
Handle = TypeVar("Handle")


def split_values(text: str) -> list[str]:
    """``"1e-4,3e-4"`` -> two values; commas inside brackets stay (``[0.8,1.2],[0.9,1.1]``)."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if any(v == "" for v in values):
        raise ConfigError(f"--set values {text!r}: empty value in the list")
    return values


def grid(seeds: list[int], sets: list[str]) -> list[dict[str, str]]:
    """Every combination of the seeds and the ``key=v1,v2`` lists, as ``--set`` overrides."""
    axes: list[list[tuple[str, str]]] = []
    if seeds:
        axes.append([("seed", str(seed)) for seed in seeds])
    for item in sets:
        key, sep, values = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=v1,v2")
        axes.append([(key.strip(), value) for value in split_values(values)])
    return [dict(point) for point in itertools.product(*axes)]


def child_run_ids(parent: str, count: int) -> list[str]:
    validate_run_id(parent, max_length=RUN_ID_MAX - len(CHILD_SUFFIX))
    if count > 999:
        raise ConfigError(f"the sweep has {count} points; at most 999")
    return [f"{parent}-{index:03d}" for index in range(1, count + 1)]


def schedule(
    items: Iterable[Any],
    start: Callable[[Any], Handle],
    finished: Callable[[Handle], bool],
    max_parallel: int,
    poll_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Handle]:
    """Start every item, never more than ``max_parallel`` unfinished at once; returns all handles."""
    pending, running, started = list(items), [], []
    while pending or running:
        running = [handle for handle in running if not finished(handle)]
        while pending and len(running) < max_parallel:
            handle = start(pending.pop(0))
            running.append(handle)
            started.append(handle)
        if running:
            sleep(poll_seconds)
    return started


def sweep_record(parent: str, children: dict[str, dict[str, str]], preset: str) -> str:
    return json.dumps({"parent_run_id": parent, "preset": preset, "children": children}, indent=2, sort_keys=True) + "\n"


EVAL_METRICS = [name for tag, name in PUBLISHED if tag == EVAL_TAG]
# The rate where lower is better; for every other rate higher is better (compare's best run).
LOWER_IS_BETTER = frozenset({"collision_rate"})
DIFFERS_MARK = "*"
DIFFERS_LEGEND = (
    f"{DIFFERS_MARK} differs from the best run in its column (lowest collision_rate, highest other rates) "
    "by more than the noise: the 95 % interval of the difference (Newcombe's hybrid score, from the two "
    "Wilson intervals) excludes 0. Rates show their 95 % Wilson interval in percent."
)


def read_metrics(model_archive: Path) -> dict[str, Any]:
    """The ``overall`` section of the trained policy's ``metrics.json`` in a model.tar.gz (read in memory).

    It holds the published evaluation metrics (metric_lines.PUBLISHED), ``episodes`` and, if
    written after the intervals, each rate's ``<rate>_ci95``; the per-bucket, per-peer-count
    and baseline sections are left to the report. {} if the archive has no metrics.json.
    """
    with tarfile.open(model_archive) as tar:
        try:
            member = tar.extractfile("metrics.json")
        except KeyError:
            return {}
        return json.load(member).get("overall", {}) if member else {}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _counted(run: dict[str, Any], rate: str) -> bool:
    """Whether ``run``'s ``rate`` comes with the episode count that an interval needs."""
    episodes = run.get("episodes")
    return _number(run.get(rate)) and isinstance(episodes, int) and episodes > 0


def has_rates(columns: list[str]) -> bool:
    """Whether a compare table with these columns shows rates, and so needs :data:`DIFFERS_LEGEND`."""
    return any(column in RATES for column in columns)


def compare_cells(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The published evaluation metrics that some run has, and each run's cell of each.

    ``runs`` are ``overall`` sections (:func:`read_metrics`; {} for a run without results). A
    rate reads ``10.0% (1.2-32.2)`` with its 95 % interval, then :data:`DIFFERS_MARK` when it
    differs by more than the noise from the column's best run; the episode counts come from
    each run's ``episodes``, so a run without them shows its rate alone and is never marked.
    """
    columns = [name for name in EVAL_METRICS if any(_number(run.get(name)) for run in runs)]
    cells: list[list[str]] = [[] for _ in runs]
    for name in columns:
        if name not in RATES:
            for run, row in zip(runs, cells):
                row.append(f"{run[name]:.4g}" if _number(run.get(name)) else "")
            continue
        counted = [run for run in runs if _counted(run, name)]
        pick = min if name in LOWER_IS_BETTER else max
        best = pick(counted, key=lambda run: run[name]) if counted else None
        for run, row in zip(runs, cells):
            if not _number(run.get(name)):
                row.append("")
                continue
            marked = best is not None and _counted(run, name) and differs(run[name], run["episodes"], best[name], best["episodes"])
            row.append(format_rate(run, name) + (f" {DIFFERS_MARK}" if marked else ""))
    return columns, cells
