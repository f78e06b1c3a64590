"""The launch record ``<run-id>/launch.json``: every attempt of a run (request, git commit, times).

The same JSON is written to S3 for cloud runs and to ``<runs-dir>/<run-id>/launch.json`` for
local ones; the latest attempt names the job whose results ``fetch``, ``logs`` and ``stop`` use.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import botocore.exceptions

from launcher.layout import RunLayout


def new_attempt(request: dict[str, Any], git_commit: str, mode: str) -> dict[str, Any]:
    """One attempt: ``mode`` is ``sagemaker`` or ``local``."""
    return {
        "job_name": request["TrainingJobName"],
        "mode": mode,
        "git_commit": git_commit,
        "launched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "request": request,
    }


def add_attempt(record: dict[str, Any] | None, run_id: str, attempt: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``attempt`` appended (a new record if there was none)."""
    base = record or {"run_id": run_id, "attempts": []}
    return {**base, "attempts": [*base["attempts"], attempt]}


def latest_job(record: dict[str, Any]) -> str:
    return record["attempts"][-1]["job_name"]


def to_json(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"


def read_record(s3: Any, layout: RunLayout) -> dict[str, Any] | None:
    """The run's record from S3, or None if the run id was never launched."""
    try:
        body = s3.get_object(Bucket=layout.bucket, Key=layout.launch_key)["Body"].read()
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(body)


def write_record(s3: Any, layout: RunLayout, record: dict[str, Any]) -> None:
    s3.put_object(Bucket=layout.bucket, Key=layout.launch_key, Body=to_json(record).encode(), ContentType="application/json")


def prefix_in_use(s3: Any, layout: RunLayout) -> bool:
    """True if anything is stored under the run's prefix (a launch, checkpoints or results)."""
    listing = s3.list_objects_v2(Bucket=layout.bucket, Prefix=layout.prefix, MaxKeys=1)
    return listing.get("KeyCount", 0) > 0
