"""`roadsense-container train`: the SageMaker training-image contract mapped onto the pipeline.

Under the root ``$ROADSENSE_SM_ROOT`` (default ``/opt/ml``):

* reads ``input/config/hyperparameters.json`` (string values; keys are the config's own
  names, ``preset`` picks the defaults) and the optional channel ``input/data/dataset/``;
* writes the package to ``model/`` (SageMaker uploads it as ``model.tar.gz``), the
  TensorBoard/CSV logs and the full log to ``output/data/``, checkpoints to
  ``checkpoints/`` (synced to S3 during the run, and restored before a restart, so a
  stopped or spot-interrupted job resumes from them);
* prints the plan, with the expected seconds of each stage, on one line at the start;
* runs one job per root: the pipeline holds an exclusive lock on ``model/`` (a second
  container on the same root exits 2 naming the first one's pid);
* on any failure writes a short reason to ``output/failure`` (the job's FailureReason),
  the reason first, and exits with the code of ``roadsense.exits``: 2 for bad input,
  143 when stopped by SIGTERM, 130 by Ctrl-C, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
from pathlib import Path
from typing import Any

from roadsense.config import ConfigError, PipelineConfig
from roadsense.errors import UserError
from roadsense.exits import BAD_INPUT, FAILED, OK, classify, clip, sigterm_raises, stopped

DEFAULT_ROOT = "/opt/ml"
FAILURE_LIMIT = 1024  # characters SageMaker keeps of the failure reason
LOG_FILE = "training.log"
JOIN_TIMEOUT_S = 5.0  # the copy ends as soon as the pipe is drained; this only bounds a console that blocks


class SageMakerPaths:
    """The folders of the contract, below one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hyperparameters = root / "input" / "config" / "hyperparameters.json"
        self.dataset_channel = root / "input" / "data" / "dataset"
        self.model = root / "model"
        self.output_data = root / "output" / "data"
        self.failure = root / "output" / "failure"
        self.checkpoints = root / "checkpoints"

    @classmethod
    def from_env(cls) -> "SageMakerPaths":
        return cls(Path(os.environ.get("ROADSENSE_SM_ROOT", DEFAULT_ROOT)))


class BadInput(UserError):
    """The job's inputs (hyperparameters, channels) are wrong; nothing was run."""


def read_hyperparameters(path: Path) -> dict[str, str]:
    """The hyperparameters map; SageMaker always writes one (possibly ``{}``)."""
    if not path.exists():
        return {}
    try:
        data: Any = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInput(f"hyperparameters.json is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadInput("hyperparameters.json must hold a JSON object of string values")
    not_strings = sorted(k for k, v in data.items() if not isinstance(v, str))
    if not_strings:
        raise BadInput(f"hyperparameters must be strings (SageMaker passes strings); not strings: {', '.join(not_strings)}")
    return data


def dataset_from_channel(channel: Path) -> Path | None:
    """The dataset folder delivered in the ``dataset`` channel, or None when there is no channel."""
    if not channel.exists():
        return None
    if not any(channel.iterdir()):
        raise BadInput(f"the dataset channel {channel} is empty; upload a dataset (roadsense-launch upload) or drop the channel")
    if not (channel / "manifest.json").is_file():
        raise BadInput(f"the dataset channel {channel} has no manifest.json at its top; upload the dataset folder itself")
    return channel


def train_job(paths: SageMakerPaths) -> None:
    """Run (or resume) the whole pipeline under the SageMaker layout."""
    from roadsense.pipeline import RunPaths, plan_run, run_pipeline

    hyperparameters = read_hyperparameters(paths.hyperparameters)
    try:
        config = PipelineConfig.from_hyperparameters(hyperparameters)
    except ConfigError as exc:
        raise BadInput(f"hyperparameters: {exc}") from None
    dataset = dataset_from_channel(paths.dataset_channel)
    run_paths = RunPaths(paths.model, paths.checkpoints, paths.output_data / "logs")
    # One line, as `roadsense run` prints it: the job's log says from its start how long it should take.
    print(f"plan: {json.dumps(plan_run(run_paths, config, dataset))}", flush=True)
    run_pipeline(run_paths, config, dataset, progress=False)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # SageMaker's service runs `IMAGE train`; the SDK's local mode (ModelTrainer with
    # Mode.LOCAL_CONTAINER) and a plain `docker run IMAGE` pass no argument: both mean train.
    if args == ["serve"]:
        # What SageMaker hosting would run: say so plainly instead of a generic usage.
        print("roadsense-container: serve is not supported, this image only trains (usage: roadsense-container train)", file=sys.stderr)
        return BAD_INPUT
    if args not in ([], ["train"]):
        print("usage: roadsense-container train   (the command SageMaker runs in the image; no argument means train too)", file=sys.stderr)
        return BAD_INPUT
    paths = SageMakerPaths.from_env()
    paths.output_data.mkdir(parents=True, exist_ok=True)
    paths.failure.unlink(missing_ok=True)  # a restarted job starts with a clean slate
    with _Tee(paths.output_data / LOG_FILE), sigterm_raises():
        code, reason = _run(paths)
        if reason:
            reason = clip(reason, FAILURE_LIMIT)
            print(reason, file=sys.stderr, flush=True)  # first: the disk that failed the job may refuse the file too
    if reason:
        paths.failure.parent.mkdir(parents=True, exist_ok=True)
        paths.failure.write_text(reason)
    return code


def _run(paths: SageMakerPaths) -> tuple[int, str | None]:
    """(exit code, failure reason or None), as ``roadsense.exits`` maps them.

    The contract: every failure becomes a FailureReason, a bug's too (named by its exception type).
    """
    try:
        train_job(paths)
        return OK, None
    except KeyboardInterrupt as exc:  # SIGTERM (a stop, a spot interruption) or Ctrl-C
        code, reason = stopped(exc)
        resumes = f"checkpoints are kept in {paths.checkpoints} and the next start of this job resumes from them"
        return code, f"{reason}; {resumes}"
    except Exception as exc:  # noqa: BLE001 - a RoadsenseError or an OSError is expected; anything else is a bug
        return classify(exc) or (FAILED, f"failed: {type(exc).__name__}: {exc}")


class _Tee:
    """Copies everything written to fds 1 and 2 (this process and its workers) into a log file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> "_Tee":
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self._read_fd, write_fd = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        # Python-level writers may have been swapped (test runners, IDEs); point them at the fds.
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        console = self._saved[0]
        with open(self.path, "ab") as log:
            while True:
                ready, _, _ = select.select([self._read_fd, self._stop_r], [], [])
                # Pending output first; then a stop ends the copy. Waiting for end-of-file instead would
                # wait for every helper process that inherited fds 1 and 2 (the forkserver lives until
                # this process exits): the job would hang at every exit.
                if self._read_fd not in ready:
                    return
                chunk = os.read(self._read_fd, 65536)
                if not chunk:
                    return
                os.write(console, chunk)
                log.write(chunk)
                log.flush()

    def __exit__(self, *exc: object) -> None:
        sys.stdout.close()
        sys.stderr.close()
        sys.stdout, sys.stderr = self._streams
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=JOIN_TIMEOUT_S)
        for fd in (*self._saved, self._read_fd, self._stop_r, self._stop_w):
            os.close(fd)
