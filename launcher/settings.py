"""Launch settings: one typed model; each field from the first source that sets it.

Precedence, highest first:

1. command-line flags (``--bucket``, ``--role-arn``...);
2. environment variables (:data:`_ENV_KEYS`: ``AWS_REGION``, ``AWS_PROFILE``,
   ``ROADSENSE_LAUNCH_BUCKET``...);
3. the config file: ``roadsense-launch.toml`` in the working directory (top-level keys or a
   ``[launch]`` table), or else the ``[tool.roadsense.launch]`` table of ``pyproject.toml``
   there; ``--config PATH`` names another file. Keys are the field names of
   :class:`LaunchSettings`;
4. the outputs of the infra stack (``roadsense-launch infra deploy``, :mod:`launcher.stack`): bucket, role ARN,
   ECR repository and CodeBuild project (:func:`with_stack_outputs`);
5. the built-in defaults below.

:func:`load_settings` merges 1-3 and 5 without touching AWS; the CLI then fills step 4
from the stack (:func:`launcher.aws.with_stack_defaults`), which needs AWS only when a
stack-provided field is still unset.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from launcher.remote import Limits
from launcher.stack import (
    DEFAULT_STACK,
    OUTPUT_BUCKET,
    OUTPUT_PROJECT,
    OUTPUT_REPOSITORY_URI,
    OUTPUT_ROLE_ARN,
)
from roadsense.errors import UserError

_LIMITS = Limits()

DEFAULT_CONFIG_FILE = "roadsense-launch.toml"


class SettingsError(UserError, ValueError):
    """A launch setting is unknown or invalid; the message names the source and the key."""


class LaunchSettings(BaseModel):
    """Where and how a training job runs. Every field can come from the file, env or a flag."""

    model_config = ConfigDict(extra="forbid")

    region: str = "il-central-1"
    profile: str | None = Field(default=None, description="AWS profile; None = the default credential chain.")
    bucket: str = "saferide-training-results"
    role_arn: str | None = Field(default=None, description="SageMaker execution role; None = the infra stack's output.")
    image_uri: str | None = Field(default=None, description="Training image; None = build and push one.")
    instance_type: str = "ml.c6i.xlarge"
    instance_count: int = Field(default=1, ge=1, le=100)
    volume_size_gb: int = Field(default=30, ge=1, le=16384)
    max_runtime_s: int = Field(default=24 * 3600, ge=60, le=28 * 24 * 3600)
    spot_max_wait_s: int = Field(
        default=48 * 3600, ge=60, le=28 * 24 * 3600, description="Spot only: runtime plus time spent waiting for capacity."
    )
    stack_name: str = Field(default=DEFAULT_STACK, description="The infra stack whose outputs fill unset fields.")
    ecr_repository: str = "roadsense-training"
    codebuild_project: str = "roadsense-image"
    runs_dir: Path = Path("runs")
    container_command: str = Field(
        default="roadsense-container",
        description="Command --local runs (a test hook: a script that fakes the container).",
    )
    # Bounds on what is read back from the (shared, untrusted) bucket: see launcher.remote.Limits.
    max_download_bytes: int = Field(
        default=_LIMITS.object_bytes, ge=1, description="Largest S3 object fetch/compare downloads."
    )
    max_json_bytes: int = Field(
        default=_LIMITS.json_bytes, ge=1, description="Largest launch.json, sweep.json or metrics.json."
    )
    max_extract_bytes: int = Field(
        default=_LIMITS.extract_bytes, ge=1, description="Most bytes one results archive may extract to."
    )
    max_archive_members: int = Field(
        default=_LIMITS.members, ge=1, description="Most files and folders in one results archive."
    )
    max_listed_runs: int = Field(default=_LIMITS.listed_runs, ge=1, description="Most run prefixes `list` reads.")

    @property
    def limits(self) -> Limits:
        return Limits(
            self.max_download_bytes,
            self.max_json_bytes,
            self.max_extract_bytes,
            self.max_archive_members,
            self.max_listed_runs,
        )


# Environment variables read on top of the config file; boto3 itself also honours
# AWS_ENDPOINT_URL, so a moto server is reached without the launcher knowing about it.
_ENV_KEYS: dict[str, str] = {
    "AWS_DEFAULT_REGION": "region",
    "AWS_REGION": "region",  # listed second: it wins, as in the AWS CLI
    "AWS_PROFILE": "profile",
    "ROADSENSE_LAUNCH_BUCKET": "bucket",
    "ROADSENSE_LAUNCH_ROLE_ARN": "role_arn",
    "ROADSENSE_LAUNCH_IMAGE_URI": "image_uri",
    "ROADSENSE_CONTAINER_CMD": "container_command",
}


def read_config_file(path: Path | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """The launch table of ``path``, or of the default files in ``cwd``; {} if there is none."""
    base = cwd or Path.cwd()
    if path is not None:
        if not path.is_file():
            raise SettingsError(f"--config {path}: no such file")
        return _table(path)
    if (base / DEFAULT_CONFIG_FILE).is_file():
        return _table(base / DEFAULT_CONFIG_FILE)
    if (base / "pyproject.toml").is_file():
        return _table(base / "pyproject.toml")
    return {}


def read_toml(path: Path, error: type[UserError], label: str = "") -> dict[str, Any]:
    """The top-level table of a TOML file; one that cannot be read or parsed raises ``error``,
    whose message starts with ``label`` (the flag that named the file), then the path."""
    where = f"{label} {path}".strip()
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise error(f"{where}: cannot read it ({exc})") from None
    except ValueError as exc:  # not UTF-8, or not TOML: UnicodeDecodeError and TOMLDecodeError are ValueErrors
        raise error(f"{where}: not a TOML file ({exc})") from None


def _table(path: Path) -> dict[str, Any]:
    data = read_toml(path, SettingsError)
    if path.name == "pyproject.toml":
        return dict(data.get("tool", {}).get("roadsense", {}).get("launch", {}))
    # roadsense-launch.toml may hold the keys at top level or under [launch].
    return dict(data.get("launch", data))


def load_settings(
    flags: Mapping[str, object] | None = None,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LaunchSettings:
    """Defaults < config file < environment < flags (flags that are None are not given).

    Only the keys some source gave end up in ``model_fields_set``: that is how
    :func:`with_stack_outputs` knows which fields it may fill.
    """
    merged: dict[str, Any] = read_config_file(config_file, cwd)
    environ = os.environ if env is None else env
    for var, key in _ENV_KEYS.items():
        if environ.get(var):
            merged[key] = environ[var]
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return LaunchSettings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"launch settings: {problems}") from None


# Stack output -> the setting it provides.
STACK_FIELDS: dict[str, str] = {
    OUTPUT_BUCKET: "bucket",
    OUTPUT_ROLE_ARN: "role_arn",
    OUTPUT_REPOSITORY_URI: "ecr_repository",
    OUTPUT_PROJECT: "codebuild_project",
}


def with_stack_outputs(settings: LaunchSettings, outputs: Mapping[str, str]) -> LaunchSettings:
    """``settings`` with every stack-provided field that no flag, variable or file set taken from ``outputs``."""
    values = {field: outputs[key] for key, field in STACK_FIELDS.items() if outputs.get(key)}
    if "ecr_repository" in values:
        # The output is the repository URI, <registry>/<name>; the launcher composes URIs from the name.
        values["ecr_repository"] = values["ecr_repository"].split("/", 1)[-1]
    unset = {field: value for field, value in values.items() if field not in settings.model_fields_set}
    return settings.model_copy(update=unset) if unset else settings
