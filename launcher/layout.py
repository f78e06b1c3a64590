"""Run ids, job names and where a run's files live in S3 (and in the local mirror ``runs/<run-id>/``).

One run id owns the prefix ``s3://<bucket>/<run-id>/``::

    launch.json                          launch record: every attempt's request, git commit, times
    dataset/...                          the uploaded dataset channel (--dataset)
    checkpoints/...                      synced by SageMaker during the job; reused by --resume
    output/<job>/output/model.tar.gz     the model package (SageMaker packs /opt/ml/model)
    output/<job>/output/output.tar.gz    /opt/ml/output/data (TensorBoard logs, full log)
    sweep.json                           only for a sweep's parent: its children and their settings

``--local`` lays out exactly the same tree under ``<runs-dir>/<run-id>/``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

RUN_ID_MAX = 40
_RUN_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{RUN_ID_MAX - 1}}}$")
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class RunIdError(ValueError):
    """The run id cannot be used; the message says what is allowed."""


def validate_run_id(run_id: str, max_length: int = RUN_ID_MAX) -> str:
    """``run_id`` if it is 1..max_length letters, digits, ``-`` or ``_``, starting with a letter or digit."""
    if not _RUN_ID.match(run_id) or len(run_id) > max_length:
        raise RunIdError(
            f"run id {run_id!r}: use 1-{max_length} letters, digits, '-' or '_', starting with a letter or digit"
        )
    return run_id


def job_name(run_id: str, now: datetime | None = None, token: str | None = None) -> str:
    """A legal, unique-per-attempt job name: ``cloud_prod_001`` -> ``cloud-prod-001-20250101-120000-a1b2``.

    Job names allow no underscores, so they become dashes; the time and a random token make
    every attempt (a retry, a --resume) a new name, which SageMaker requires.
    """
    validate_run_id(run_id)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    name = f"{run_id.replace('_', '-')}-{stamp}-{token or secrets.token_hex(2)}"
    assert JOB_NAME.match(name), name  # guaranteed by the run id rules and RUN_ID_MAX
    return name


@dataclass(frozen=True)
class RunLayout:
    """The keys and URIs of one run under one bucket."""

    bucket: str
    run_id: str

    @property
    def prefix(self) -> str:
        return f"{self.run_id}/"

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.run_id}/{key}"

    @property
    def launch_key(self) -> str:
        return f"{self.run_id}/launch.json"

    @property
    def sweep_key(self) -> str:
        return f"{self.run_id}/sweep.json"

    @property
    def checkpoints_key(self) -> str:
        return f"{self.run_id}/checkpoints/"

    @property
    def dataset_key(self) -> str:
        return f"{self.run_id}/dataset/"

    @property
    def output_uri(self) -> str:
        return self.uri("output")

    @property
    def checkpoints_uri(self) -> str:
        return self.uri("checkpoints")

    @property
    def dataset_uri(self) -> str:
        return self.uri("dataset")

    def model_key(self, job: str) -> str:
        return f"{self.run_id}/output/{job}/output/model.tar.gz"

    def output_data_key(self, job: str) -> str:
        return f"{self.run_id}/output/{job}/output/output.tar.gz"
