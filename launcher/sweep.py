"""Sweeps: a grid of seeds and ``--set key=v1,v2`` values, one run per point, under a parent run id.

Children are ``<parent>-001``, ``<parent>-002``...; the parent's ``sweep.json`` (in S3 and, for
``--local``, in ``<runs-dir>/<parent>/``) lists each child's run id and settings, which is
what ``compare`` reads.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, ValidationInfo, create_model, field_validator

from launcher.fetch import read_member
from launcher.layout import RUN_ID_MAX, RunId, validate_run_id
from launcher.remote import Limits, parse
from roadsense.config import ConfigError
from roadsense.metric_lines import EVAL_TAG, PUBLISHED

CHILD_SUFFIX = "-000"
MAX_POINTS = 999  # the child suffix has three digits
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
    if count > MAX_POINTS:
        raise ConfigError(f"the sweep has {count} points; at most {MAX_POINTS}")
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


class _SweepRecord(BaseModel):
    """sweep.json as read back: its child run ids become S3 keys and paths, so they are checked."""

    model_config = ConfigDict(extra="allow")

    parent_run_id: RunId
    preset: str = Field(max_length=64)
    children: dict[RunId, dict[str, str]] = Field(max_length=MAX_POINTS)

    @field_validator("children")
    @classmethod
    def _children_of_the_parent(cls, children: dict[str, dict[str, str]], info: ValidationInfo) -> dict[str, dict[str, str]]:
        parent = info.data.get("parent_run_id", "")
        stray = next((child for child in children if not re.fullmatch(re.escape(parent) + r"-\d{3}", child)), None)
        if stray is not None:
            raise ValueError(f"{stray!r} is not a child of {parent!r} (children are {parent}-001, {parent}-002...)")
        return children


def parse_sweep(data: bytes, source: str) -> dict[str, Any]:
    """A sweep record checked against its schema."""
    return parse(_SweepRecord, data, source).model_dump()


EVAL_METRICS = [name for tag, name in PUBLISHED if tag == EVAL_TAG]


# A metric read back must be a finite JSON number: a string, a boolean, NaN or an infinity is refused.
_Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]
_Overall = create_model(  # type: ignore[call-overload]
    "_Overall", __config__=ConfigDict(extra="allow"), **{name: (_Number | None, None) for name in EVAL_METRICS}
)


class _Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    overall: _Overall = Field(default_factory=_Overall)  # type: ignore[valid-type]


def read_metrics(model_archive: Path, limits: Limits = Limits()) -> dict[str, float]:
    """The trained policy's headline metrics from ``metrics.json`` in a model.tar.gz (read in memory).

    These are the published evaluation metrics (metric_lines.PUBLISHED) of its ``overall``
    section; the per-bucket, per-peer-count and baseline sections are left to the report.
    The archive and metrics.json are bounded and checked like fetched results.
    """
    data = read_member(model_archive, "metrics.json", limits)
    if data is None:
        return {}
    overall = parse(_Metrics, data, f"metrics.json in {model_archive}").overall.model_dump()
    return {name: overall[name] for name in EVAL_METRICS if overall[name] is not None}
