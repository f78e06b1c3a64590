"""The launch record ``<run-id>/launch.json``: every attempt of a run (request, git commit, times).

The same JSON is kept in the run's store (:mod:`launcher.store`): in S3 for cloud runs and in
``<runs-dir>/<run-id>/launch.json`` for local ones; the latest attempt names the job whose results
``status``, ``fetch``, ``logs`` and ``stop`` use.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal, TypedDict, cast

from pydantic import BaseModel, ConfigDict, Field

from launcher.layout import JobName, RunId, RunLayout
from launcher.remote import parse
from launcher.store import RunStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sagemaker.type_defs import CreateTrainingJobRequestTypeDef

MAX_ATTEMPTS = 1000  # far more than anyone retries one run id; bounds what `list` and `fetch` walk
Mode = Literal["sagemaker", "local"]


class Attempt(TypedDict):
    """One attempt as the launcher reads it back: the fields :class:`_Attempt` checks. Its other fields
    (the request, the git commit) are provenance, kept as they were written."""

    job_name: str
    mode: Mode
    launched_at: str


class NewAttempt(Attempt):
    """One attempt as :func:`new_attempt` writes it."""

    git_commit: str
    request: CreateTrainingJobRequestTypeDef


class LaunchRecord(TypedDict):
    """launch.json: the run id and its attempts, oldest first."""

    run_id: str
    attempts: list[Attempt]


class _Attempt(BaseModel):
    # Only the fields the launcher acts on are checked; the request and commit are provenance.
    model_config = ConfigDict(extra="allow")

    job_name: JobName  # becomes an S3 key and a local path
    mode: Mode
    launched_at: str = Field(max_length=64)


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_id: RunId
    attempts: list[_Attempt] = Field(min_length=1, max_length=MAX_ATTEMPTS)


def new_attempt(request: CreateTrainingJobRequestTypeDef, git_commit: str, mode: Mode) -> NewAttempt:
    """One attempt: ``mode`` is ``sagemaker`` or ``local``."""
    return {
        "job_name": request["TrainingJobName"],
        "mode": mode,
        "git_commit": git_commit,
        "launched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "request": request,
    }


def add_attempt(record: LaunchRecord | None, run_id: str, attempt: Attempt) -> LaunchRecord:
    """``record`` with ``attempt`` appended (a new record if there was none)."""
    base: LaunchRecord = record or {"run_id": run_id, "attempts": []}
    return {**base, "attempts": [*base["attempts"], attempt]}


def latest_job(record: LaunchRecord) -> str:
    return record["attempts"][-1]["job_name"]


def to_json(record: LaunchRecord) -> str:
    return json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"


def parse_record(data: bytes, source: str) -> LaunchRecord:
    """A launch record checked against its schema (job names, modes, at least one attempt)."""
    # _Record checked every field of LaunchRecord; model_dump() returns them (and the unchecked rest) untyped.
    return cast(LaunchRecord, parse(_Record, data, source).model_dump())


def read_record(store: RunStore, run_id: str) -> LaunchRecord | None:
    """The run's record (bounded and checked), or None if the run id was never launched there."""
    return store.document(store.layout(run_id).launch_key, parse_record)


def write_record(store: RunStore, run_id: str, record: LaunchRecord) -> None:
    store.put(store.layout(run_id).launch_key, to_json(record).encode())


def prefix_in_use(s3: S3Client, layout: RunLayout) -> bool:
    """True if anything is stored for the run: under its prefix (a launch or results) or its
    checkpoints prefix (which a new job would silently resume from)."""
    return any(
        s3.list_objects_v2(Bucket=layout.bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0) > 0
        for prefix in (layout.prefix, layout.checkpoints_key)
    )
