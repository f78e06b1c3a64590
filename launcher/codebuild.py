"""Build the training image in CodeBuild (``roadsense-launch build --codebuild``).

The project comes from ``infra/roadsense.yaml`` and runs ``buildspec.yml``: it builds
``container/Dockerfile`` at the requested commit, pushes ``<repository>:<commit>`` and
exports the pushed URI as ``IMAGE_URI``, which :func:`follow_build` returns.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import boto3
from rich.console import Console

from roadsense.errors import RunFailed

if TYPE_CHECKING:
    from mypy_boto3_codebuild.type_defs import BuildTypeDef

IMAGE_URI_VARIABLE = "IMAGE_URI"  # exported by buildspec.yml (env: exported-variables)

console = Console(highlight=False)


class BuildError(RunFailed):
    """The image was not built or pushed; the message says where it failed and where the logs are."""


def start_build(session: boto3.Session, project_name: str, source_version: str) -> str:
    """Start a build of ``source_version`` (a commit, branch or tag); returns the build id."""
    build = session.client("codebuild").start_build(projectName=project_name, sourceVersion=source_version)["build"]
    console.print(f"CodeBuild {build['id']} started for {source_version}")
    return build["id"]


def follow_build(session: boto3.Session, build_id: str, poll_s: float = 10.0) -> str:
    """Print each phase as the build reaches it; returns the image URI, or raises :class:`BuildError`."""
    client = session.client("codebuild")
    shown_phase = None
    while True:
        build = client.batch_get_builds(ids=[build_id])["builds"][0]
        if build["currentPhase"] != shown_phase:
            shown_phase = build["currentPhase"]
            console.print(f"  {shown_phase}")
        if build["buildStatus"] == "SUCCEEDED":
            return _image_uri(build)
        if build["buildStatus"] != "IN_PROGRESS":
            raise BuildError(_failure(build))
        time.sleep(poll_s)


def _image_uri(build: BuildTypeDef) -> str:
    exported = {v["name"]: v["value"] for v in build.get("exportedEnvironmentVariables", [])}
    if not exported.get(IMAGE_URI_VARIABLE):
        raise BuildError(
            f"build {build['id']} succeeded but exported no {IMAGE_URI_VARIABLE} (is buildspec.yml the project's?)"
        )
    return exported[IMAGE_URI_VARIABLE]


def _failure(build: BuildTypeDef) -> str:
    """One line: the status, the first failed phase with CodeBuild's reason, and the log link."""
    failed = [p for p in build.get("phases", []) if p.get("phaseStatus") not in (None, "SUCCEEDED")]
    where = ""
    if failed:
        reasons = "; ".join(c.get("message", "") for c in failed[0].get("contexts", []) if c.get("message"))
        where = f" in {failed[0]['phaseType']}" + (f" ({reasons})" if reasons else "")
    logs = build.get("logs", {}).get("deepLink", "the CodeBuild console")
    return f"build {build['id']} {build['buildStatus']}{where}; logs: {logs}"
