"""Run ids, job names and where a run's files live in S3 (and in the local mirror ``runs/<run-id>/``).

One run id owns the prefix ``s3://<bucket>/<run-id>/``::

    launch.json                          launch record: every attempt's request, git commit, times
    dataset/...                          the uploaded dataset channel (--dataset)
    output/<job>/output/model.tar.gz     the model package (SageMaker packs /opt/ml/model)
    output/<job>/output/output.tar.gz    /opt/ml/output/data (TensorBoard logs, full log)
    sweep.json                           only for a sweep's parent: its children and their settings
    tuning.json                          only for a tuning job's parent: the tuning job's name

and its checkpoints live apart, under ``s3://<bucket>/checkpoints/<run-id>/`` (synced by SageMaker
during the job; reused by --resume): S3 lifecycle filters are literal prefixes, so the bucket's
rule that expires checkpoints (infra/roadsense.yaml) can only match one top-level prefix.
``checkpoints`` and ``codebuild`` (the image build's artifacts) are therefore not run ids.

``--local`` lays out the same tree under ``<runs-dir>/<run-id>/``, checkpoints in ``checkpoints/``
there; publishing a local run puts them under ``checkpoints/<run-id>/`` like a cloud run's.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

from pydantic import AfterValidator

from roadsense.errors import UserError

RUN_ID_MAX = 40
# Allow-lists, always applied with fullmatch: `$` alone would accept a trailing newline.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_RUN_ID_RULE = "letters, digits, '-' or '_', starting with a letter or digit"
_JOB_NAME_RULE = "1-63 letters, digits or '-', starting and ending with a letter or digit (no underscores)"
CHECKPOINTS_PREFIX = "checkpoints/"  # the bucket's lifecycle rule expires exactly this prefix
# Top-level prefixes of the bucket that are not runs: a run with one of these ids would mix its
# records with them (and its launch.json would expire with the checkpoints).
RESERVED_PREFIXES = (CHECKPOINTS_PREFIX.rstrip("/"), "codebuild")


class RunIdError(UserError, ValueError):
    """A run id or job name cannot be used; the message says what is allowed."""


def check_name(value: object, pattern: re.Pattern[str], max_length: int, what: str, rule: str) -> str:
    """``value`` if it is a string that fullmatches ``pattern`` within ``max_length``: the one check of
    every name that becomes part of an S3 key or a local path."""
    if not isinstance(value, str) or len(value) > max_length or not pattern.fullmatch(value):
        raise RunIdError(f"{what} {value!r}: use 1-{max_length} {rule}")
    return value


def validate_run_id(run_id: str, max_length: int = RUN_ID_MAX) -> str:
    """``run_id`` if it is 1..max_length letters, digits, ``-`` or ``_``, starting with a letter or digit,
    and not one of the bucket's :data:`RESERVED_PREFIXES`."""
    check_name(run_id, _RUN_ID, max_length, "run id", _RUN_ID_RULE)
    if run_id in RESERVED_PREFIXES:
        raise RunIdError(
            f"run id {run_id!r} is reserved (the bucket keeps {run_id}/ for itself); choose another run id"
        )
    return run_id


def validate_job_name(name: str) -> str:
    """``name`` if it is a legal SageMaker job name (job names read from launch.json become S3 keys and paths)."""
    return check_name(name, JOB_NAME, 63, "job name", _JOB_NAME_RULE)


# For pydantic models of records read from the bucket.
RunId = Annotated[str, AfterValidator(validate_run_id)]
JobName = Annotated[str, AfterValidator(validate_job_name)]


def job_name(run_id: str, now: datetime | None = None, token: str | None = None) -> str:
    """A legal, unique-per-attempt job name: ``cloud_prod_001`` -> ``cloud-prod-001-20250101-120000-a1b2``.

    Job names allow no underscores, so they become dashes; the time and a random token make
    every attempt (a retry, a --resume) a new name, which SageMaker requires.
    """
    validate_run_id(run_id)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return validate_job_name(f"{run_id.replace('_', '-')}-{stamp}-{token or secrets.token_hex(2)}")


@dataclass(frozen=True)
class RunLayout:
    """The keys and URIs of one run under one bucket; refuses an invalid run id, so no key is built from one."""

    bucket: str
    run_id: str

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)

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
    def tuning_key(self) -> str:
        return f"{self.run_id}/tuning.json"

    @property
    def checkpoints_key(self) -> str:
        return f"{CHECKPOINTS_PREFIX}{self.run_id}/"

    @property
    def dataset_key(self) -> str:
        return f"{self.run_id}/dataset/"

    @property
    def output_uri(self) -> str:
        return self.uri("output")

    @property
    def checkpoints_uri(self) -> str:
        return f"s3://{self.bucket}/{self.checkpoints_key}"

    @property
    def dataset_uri(self) -> str:
        return self.uri("dataset")

    def model_key(self, job: str) -> str:
        return f"{self.run_id}/output/{validate_job_name(job)}/output/model.tar.gz"

    def output_data_key(self, job: str) -> str:
        return f"{self.run_id}/output/{validate_job_name(job)}/output/output.tar.gz"
