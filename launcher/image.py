"""The training image: built by CodeBuild (the default) or here with docker/podman, and pushed to ECR.

Images are tagged with the git commit they were built from, so a job's image says which
code it ran.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import boto3

from launcher.aws import LaunchError
from launcher.codebuild import BuildError, follow_build, start_build
from launcher.settings import LaunchSettings

DOCKERFILE = "container/Dockerfile"
LOCAL_IMAGE = "roadsense-train"


def ecr_image_uri(account: str, region: str, repository: str, tag: str) -> str:
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{repository}:{tag}"


def build_with_codebuild(session: boto3.Session, settings: LaunchSettings, commit: str) -> str:
    """Build and push the image of ``commit`` in CodeBuild; returns its URI."""
    return follow_build(session, start_build(session, settings.codebuild_project, commit))


def _run(argv: list[str], stdin: str | None = None) -> None:
    try:
        subprocess.run(argv, input=stdin, text=True, check=True)
    except FileNotFoundError:
        raise LaunchError(
            f"{argv[0]} is not installed",
            "install docker or podman, or build in CodeBuild (roadsense-launch without --builder local)",
        ) from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{' '.join(argv[:2])} failed with exit code {exc.returncode} (its output is above)") from None


def build_locally(engine: str, tag: str, repo_root: Path, build_args: dict[str, str] | None = None) -> str:
    """``<engine> build -f container/Dockerfile -t LOCAL_IMAGE:tag`` from the repo root; returns the local name."""
    name = f"{LOCAL_IMAGE}:{tag}"
    args = [flag for key, value in (build_args or {}).items() for flag in ("--build-arg", f"{key}={value}")]
    _run([engine, "build", "-f", str(repo_root / DOCKERFILE), "-t", name, *args, str(repo_root)])
    return name


def push(session: boto3.Session, engine: str, local_name: str, settings: LaunchSettings) -> str:
    """Log in to ECR, tag ``local_name`` for the repository and push it; returns the ECR URI."""
    account = session.client("sts").get_caller_identity()["Account"]
    token = session.client("ecr").get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    registry = token["proxyEndpoint"].removeprefix("https://")
    uri = ecr_image_uri(account, settings.region, settings.ecr_repository, local_name.rsplit(":", 1)[1])
    _run([engine, "login", "--username", user, "--password-stdin", registry], stdin=password)
    _run([engine, "tag", local_name, uri])
    _run([engine, "push", uri])
    return uri
