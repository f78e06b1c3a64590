"""The training image, built and run as SageMaker runs it: container/smoke does the work.

The smoke fails when the image is over its size budget (1,500 MB) or its CMD is not `train`,
when a run with no command (the SDK's local mode) does not produce the model package, when
malformed input is accepted, or when SIGTERM does not stop training with a checkpoint.

It needs podman, or docker with a running daemon; .ci/run installs podman. From a cold
cache (no base image, no wheelhouse) the smoke takes several minutes, a re-run about two.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parent.parent / "container" / "smoke"
SMOKE_TIMEOUT_S = 1800


def engine_missing() -> str | None:
    """Why no container engine can run the smoke here, or None when one can."""
    if os.environ.get("CONTAINER_ENGINE") or shutil.which("podman"):
        return None
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0:
        return None
    return "neither podman nor docker with a running daemon is installed (CONTAINER_ENGINE is not set either)"


@pytest.mark.slow
@pytest.mark.container
@pytest.mark.timeout(SMOKE_TIMEOUT_S + 60)
def test_image_trains_rejects_bad_input_and_stops_on_sigterm() -> None:
    reason = engine_missing()
    if reason:
        pytest.skip(reason)
    result = subprocess.run([str(SMOKE)], capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "container/smoke: passed" in result.stdout
    # The image size and the timings, for `pytest -s` and CI logs.
    print(result.stdout[result.stdout.index("container/smoke: passed") :])
