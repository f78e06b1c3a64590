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


def read_metrics(model_archive: Path) -> dict[str, float]:
    """The trained policy's headline metrics from ``metrics.json`` in a model.tar.gz (read in memory).

    These are the published evaluation metrics (metric_lines.PUBLISHED) of its ``overall``
    section; the per-bucket, per-peer-count and baseline sections are left to the report.
    """
    with tarfile.open(model_archive) as tar:
        try:
            member = tar.extractfile("metrics.json")
        except KeyError:
            return {}
        overall = json.load(member).get("overall", {}) if member else {}
    return {name: float(overall[name]) for name in EVAL_METRICS if isinstance(overall.get(name), (int, float))}
