"""``--local``: the same training job on this machine, laid out as SageMaker would in S3.

The container adapter runs with ``ROADSENSE_SM_ROOT=<runs-dir>/<run-id>/sagemaker`` (or the
built image with that folder mounted at /opt/ml): the folder is what SageMaker's /opt/ml would be.
Around it the launcher plays SageMaker's part:

* before: writes ``input/config/*.json``, copies the dataset channel in, and copies the run's
  ``checkpoints/`` in (SageMaker copies the S3 checkpoints to /opt/ml/checkpoints);
* after (even on failure or Ctrl-C): copies ``sagemaker/checkpoints`` back to ``checkpoints/``,
  packs ``sagemaker/output/data`` into ``output.tar.gz`` and, on success, ``sagemaker/model`` into
  ``model.tar.gz`` under ``output/<job>/output/``.

So ``<runs-dir>/<run-id>/`` holds the same tree as ``s3://<bucket>/<run-id>/`` (see layout.py),
and ``sagemaker/`` is the job's working folder, never uploaded.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from launcher.request import CHANNEL

if TYPE_CHECKING:
    from mypy_boto3_sagemaker.type_defs import CreateTrainingJobRequestTypeDef

SAGEMAKER_ROOT = "sagemaker"  # the run folder's stand-in for /opt/ml, where the job works
LOCAL_CHECKPOINTS = "checkpoints"  # the mirror's checkpoints folder (in S3: checkpoints/<run-id>/)


@dataclass(frozen=True)
class LocalResult:
    job_name: str
    status: str  # Completed, Failed or Stopped, as SageMaker reports them
    failure_reason: str = ""


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def prepare(run_dir: Path, request: CreateTrainingJobRequestTypeDef, dataset: Path | None) -> Path:
    """A fresh SageMaker-style root (/opt/ml) for one attempt; returns it."""
    root = run_dir / SAGEMAKER_ROOT
    shutil.rmtree(root, ignore_errors=True)
    config = root / "input" / "config"
    _write_json(config / "hyperparameters.json", request["HyperParameters"])
    _write_json(
        config / "resourceconfig.json",
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"},
    )
    channels = {CHANNEL: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}} if dataset else {}
    _write_json(config / "inputdataconfig.json", channels)
    if dataset:
        # The mirror keeps the uploaded copy (as S3 would); the channel is SageMaker's download of it.
        shutil.copytree(dataset, run_dir / "dataset", dirs_exist_ok=True)
        shutil.copytree(run_dir / "dataset", root / "input" / "data" / CHANNEL)
    if (run_dir / LOCAL_CHECKPOINTS).is_dir():
        shutil.copytree(run_dir / LOCAL_CHECKPOINTS, root / "checkpoints")
    for folder in ("model", "output/data", "checkpoints"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def container_command(
    command: str, root: Path, environment: dict[str, str], engine: str | None = None, image: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run the training on the SageMaker-style ``root``: the adapter,
    or ``engine run IMAGE train`` with ``root`` mounted at /opt/ml."""
    if engine:
        env_flags = [flag for key, value in environment.items() for flag in ("-e", f"{key}={value}")]
        argv = [engine, "run", "--rm", "-v", f"{root.resolve()}:/opt/ml", *env_flags, str(image), "train"]
        return argv, dict(os.environ)
    program, *args = shlex.split(command)
    return [_find_program(program), *args, "train"], {
        **os.environ,
        **environment,
        "ROADSENSE_SM_ROOT": str(root.resolve()),
    }


def _find_program(program: str) -> str:
    """``program`` from PATH, else from this interpreter's scripts folder.

    roadsense-container is installed beside roadsense-launch; a virtualenv that is not
    activated (``.venv/bin/roadsense-launch ...``, ``.venv/bin/python -m pytest``) has that
    folder outside PATH.
    """
    if shutil.which(program):
        return program
    beside = Path(sysconfig.get_path("scripts")) / program
    return str(beside) if beside.is_file() else program


def _pack(folder: Path, archive: Path) -> None:
    """``folder``'s contents at the archive root, as SageMaker packs /opt/ml/model."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)


def run_local(
    run_dir: Path,
    request: CreateTrainingJobRequestTypeDef,
    command: str,
    dataset: Path | None = None,
    engine: str | None = None,
    image: str | None = None,
    on_line: Callable[[str], None] = print,
) -> LocalResult:
    """Run the training job of ``request`` here and lay its results out under ``run_dir``."""
    job = request["TrainingJobName"]
    root = prepare(run_dir, request, dataset)
    environment = {**request.get("Environment", {}), "TRAINING_JOB_NAME": job}
    argv, env = container_command(command, root, environment, engine, image)
    status, reason = "Failed", ""
    try:
        process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert process.stdout is not None
        for line in process.stdout:
            on_line(line.rstrip("\n"))
        code = process.wait()
        status = "Completed" if code == 0 else "Failed"
        if code != 0:
            failure = root / "output" / "failure"
            reason = failure.read_text()[:1024].strip() if failure.is_file() else f"exit code {code}"
    except FileNotFoundError:
        reason = f"cannot run {argv[0]!r}: install the package (pip install -e .) or pass --engine with a built image"
    except KeyboardInterrupt:
        process.terminate()  # the container checkpoints on SIGTERM, as on a SageMaker stop
        process.wait()
        status, reason = "Stopped", "stopped by the user"
    finally:
        shutil.rmtree(run_dir / LOCAL_CHECKPOINTS, ignore_errors=True)
        shutil.copytree(root / "checkpoints", run_dir / LOCAL_CHECKPOINTS)
        output = run_dir / "output" / job / "output"
        _pack(root / "output" / "data", output / "output.tar.gz")
        if status == "Completed":
            _pack(root / "model", output / "model.tar.gz")
    return LocalResult(job, status, reason)
