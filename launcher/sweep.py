"""Sweeps: a grid of seeds and ``--set key=v1,v2`` values, one run per point, under a parent run id.

Children are ``<parent>-001``, ``<parent>-002``...; the parent's ``sweep.json`` (in S3 and, for
``--local``, in ``<runs-dir>/<parent>/``) lists each child's run id and settings, which is
what ``compare`` (:mod:`launcher.compare`) reads.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, TypedDict, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from launcher import aws, jobs
from launcher.display import Report
from launcher.launch import Launched, LaunchOptions, check_launch, launch
from launcher.layout import RUN_ID_MAX, RunId, validate_run_id
from launcher.remote import parse
from launcher.settings import LaunchSettings
from launcher.store import LocalRunStore, RunStore, S3RunStore
from roadsense.config import ConfigError

CHILD_SUFFIX = "-000"
MAX_POINTS = 999  # the child suffix has three digits
Item = TypeVar("Item")
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


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> the training seeds of a sweep."""
    try:
        return [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected whole numbers separated by commas, e.g. --seeds 0,1,2") from None


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
    items: Iterable[Item],
    start: Callable[[Item], Handle],
    finished: Callable[[Handle], bool],
    max_parallel: int,
    poll_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Handle]:
    """Start every item, never more than ``max_parallel`` unfinished at once; returns all handles."""
    pending: list[Item] = list(items)
    running: list[Handle] = []
    started: list[Handle] = []
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
    return (
        json.dumps({"parent_run_id": parent, "preset": preset, "children": children}, indent=2, sort_keys=True) + "\n"
    )


class SweepRecord(TypedDict):
    """sweep.json as the launcher reads it back: the fields :class:`_SweepRecord` checks."""

    parent_run_id: str
    preset: str
    children: dict[str, dict[str, str]]  # child run id -> its --set overrides


class _SweepRecord(BaseModel):
    """sweep.json as read back: its child run ids become S3 keys and paths, so they are checked."""

    model_config = ConfigDict(extra="allow")

    parent_run_id: RunId
    preset: str = Field(max_length=64)
    children: dict[RunId, dict[str, str]] = Field(max_length=MAX_POINTS)

    @field_validator("children")
    @classmethod
    def _children_of_the_parent(
        cls, children: dict[str, dict[str, str]], info: ValidationInfo
    ) -> dict[str, dict[str, str]]:
        parent = info.data.get("parent_run_id", "")
        stray = next((child for child in children if not re.fullmatch(re.escape(parent) + r"-\d{3}", child)), None)
        if stray is not None:
            raise ValueError(f"{stray!r} is not a child of {parent!r} (children are {parent}-001, {parent}-002...)")
        return children


def parse_sweep(data: bytes, source: str) -> SweepRecord:
    """A sweep record checked against its schema."""
    # _SweepRecord checked every field of SweepRecord; model_dump() returns them (and the unchecked rest) untyped.
    return cast(SweepRecord, parse(_SweepRecord, data, source).model_dump())


def run_sweep(
    template: LaunchOptions,
    settings: LaunchSettings,
    parent: str,
    seeds: list[int],
    sets: list[str],
    max_parallel: int,
    poll_seconds: float,
) -> Report:
    """Launch one run of ``template`` per grid point, never more than ``max_parallel`` unfinished at once
    (local runs in threads; SageMaker jobs polled every ``poll_seconds``), and report how each ended."""
    points = grid(seeds, sets)
    children = dict(zip(child_run_ids(parent, len(points)), points, strict=True))
    options = [
        dataclasses.replace(
            template,
            run_id=child,
            parent_run_id=parent,
            wait=False,
            sets=(*template.sets, *(f"{k}={v}" for k, v in point.items())),
            # rich shows one live display at a time: a progress bar only for local runs one after another.
            show_progress=template.local and max_parallel == 1,
        )
        for child, point in children.items()
    ]
    for child_options in options:  # every child's config (and runtime) is valid before the first one starts
        check_launch(child_options, settings)
    _write_sweep(settings, parent, sweep_record(parent, children, template.preset), template.local)
    results: list[Launched]
    if template.local:
        with ThreadPoolExecutor(max_parallel) as pool:
            handles: list[Future[Launched]] = schedule(
                options, lambda o: pool.submit(launch, o, settings), Future.done, max_parallel, 1.0
            )
        results = [handle.result() for handle in handles]
    else:
        sagemaker = aws.make_session(settings).client("sagemaker")
        results = schedule(
            options,
            lambda o: launch(o, settings),
            lambda r: jobs.describe_job(sagemaker, r.job_name).terminal,
            max_parallel,
            poll_seconds,
        )
    return Report(
        f"sweep {parent}",
        ["run id", "job", "status", "failure"],
        [(r.run_id, r.job_name, r.status, r.failure_reason) for r in results],
    )


def _write_sweep(settings: LaunchSettings, parent: str, text: str, local: bool) -> None:
    """The parent's sweep.json: in --runs-dir for a local sweep, and in S3 (for a local sweep only if
    the bucket is reachable, as its children publish themselves)."""
    session = aws.make_session(settings)
    stores: list[RunStore] = [LocalRunStore(settings.runs_dir, settings.bucket, settings.limits)] if local else []
    if not local or aws.s3_reachable(session, settings.bucket):
        stores.append(S3RunStore(session.client("s3"), settings.bucket, settings.limits))
    for store in stores:
        store.put(store.layout(parent).sweep_key, text.encode())
