"""The one-button pipeline: dataset -> train -> export -> evaluate -> package, resumable.

Everything lands in one output folder::

    config.json  status.json  provenance.json  manifest.json
    dataset/                    the scenarios trained and evaluated on (with manifest.json)
    model.zip  vecnormalize.pkl the policy (the best checkpoint on the val split) and the reward normaliser
    model_last.zip  vecnormalize_last.pkl  model_selection.json   the last checkpoint, and which one model.zip is
    export/                     model.zip as ONNX (float, INT8), roadsense_policy.h and deploy.json (roadsense.export)
    metrics.json  report.md  *.png  episodes.jsonl
    checkpoints/  logs/         unless placed elsewhere (SageMaker syncs them separately)

Running the same command on the same folder again continues where it stopped: the
dataset is reused (it verifies, and config.json proves the settings are the same) and
training resumes from the newest valid checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from roadsense import provenance
from roadsense.artifacts.lock import output_lock
from roadsense.artifacts.status import RunStatus, remove_stale_temps, write_json_atomic
from roadsense.config import ConfigError, PipelineConfig, check_resumable
from roadsense.estimate import stage_seconds
from roadsense.evaluation.evaluate import evaluate
from roadsense.evaluation.matrix import BUCKET_COUNT, PEER_COUNTS, plan_matrix
from roadsense.exits import signal_name_of
from roadsense.export.exporter import EVALUATED, calibration_plan, export_policy
from roadsense.scenarios.dataset import Dataset
from roadsense.scenarios.generate import generate_dataset
from roadsense.sim.sumo_home import sumo_version
from roadsense.training.train import TrainResult, train
from roadsense.v2v import load_params, params_hash

STAGES = ["dataset", "train", "export", "evaluate", "package"]
EXPORT_DIR = "export"  # the ONNX graphs, roadsense_policy.h and deploy.json (roadsense.export)
CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"
MIN_FREE_BYTES = 1 << 30  # checkpoints, logs and the dataset of a production run fit well within 1 GiB


@dataclass(frozen=True)
class RunPaths:
    output: Path
    checkpoints: Path
    logs: Path

    @property
    def dataset(self) -> Path:
        return self.output / "dataset"

    @classmethod
    def under(cls, output: Path, checkpoints: Path | None = None, logs: Path | None = None) -> "RunPaths":
        return cls(output, checkpoints or output / "checkpoints", logs or output / "logs")


def check_output_config(output: Path, config: PipelineConfig) -> None:
    """Refuse to continue the run in ``output`` with settings that change what is learned.

    The others (a longer ``total_timesteps``, more envs, evaluation settings...) apply to the
    resumed run; the run's config.json is then rewritten with them.
    """
    saved_path = output / CONFIG_FILE
    if saved_path.exists():
        check_resumable(PipelineConfig.load(saved_path).learning_settings(), config.learning_settings(),
                        f"the run in {output}")


def plan_run(paths: RunPaths, config: PipelineConfig, dataset: Path | None) -> dict[str, Any]:
    """Check everything a run needs before it starts; returns the plan with expected seconds per stage.

    Raises ConfigError, DatasetError or CoverageError naming the problem.
    """
    check_output_config(paths.output, config)
    load_params(config.env.emulator_params)
    if dataset is not None:
        opened = Dataset.open(dataset)
        episodes = len(plan_matrix(opened, config.evaluation.episodes_per_bucket, config.evaluation.eval_seed))
    else:
        # A generated eval split cycles through the peer counts, so it covers them all from this size on.
        if config.dataset.eval_count < len(PEER_COUNTS):
            raise ConfigError(f"eval_count = {config.dataset.eval_count}: the evaluation matrix needs all peer counts "
                              f"{PEER_COUNTS[0]}..{PEER_COUNTS[-1]}, so at least {len(PEER_COUNTS)} eval scenarios")
        episodes = BUCKET_COUNT * config.evaluation.episodes_per_bucket
    probe = paths.output if paths.output.exists() else paths.output.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        raise OSError(f"only {free / 2**20:.0f} MiB free under {probe}; a run needs at least {MIN_FREE_BYTES / 2**20:.0f} MiB")
    cpus = len(os.sched_getaffinity(0))
    seconds = stage_seconds(config, cpus)
    return {
        "output": str(paths.output),
        "dataset": str(dataset) if dataset else "generated",
        "preset": config.preset,
        "total_timesteps": config.train.total_timesteps,
        "evaluation_episodes": episodes * (1 + len(config.evaluation.baselines)
                                           + (len(EVALUATED) if config.evaluation.export_onnx else 0)),
        "cpus": cpus,
        "free_disk_gib": round(free / 2**30, 1),
        "expected_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "expected_total_seconds": round(sum(seconds.values()), 1),
    }


def run_pipeline(paths: RunPaths, config: PipelineConfig, dataset: Path | None = None,
                 progress: bool | None = None) -> dict[str, Any]:
    """Run (or resume) every stage; returns the provenance.

    Holds ``paths.output`` exclusively (a second run on it raises OutputLocked at once) and
    records in status.json how every stage ended: succeeded, failed (with the error) or
    stopped (with the signal).
    """
    with exclusive_output(paths):
        return _run_stages(paths, config, dataset, progress)


@contextlib.contextmanager
def exclusive_output(paths: RunPaths) -> Iterator[None]:
    """Hold the run's output folder for the block (OutputLocked at once if another process has
    it), after removing the temporary files a killed run left in it and in its checkpoints."""
    with output_lock(paths.output):
        # Under the lock no other process writes here: every temporary name is a killed run's leftover.
        for folder in (paths.output, paths.checkpoints):
            for stale in remove_stale_temps(folder):
                print(f"removed {stale}, left by an interrupted run", file=sys.stderr, flush=True)
        yield


def _run_stages(paths: RunPaths, config: PipelineConfig, dataset: Path | None, progress: bool | None) -> dict[str, Any]:
    started_at = datetime.now(timezone.utc)
    t0 = time.monotonic()
    check_output_config(paths.output, config)
    config.save(paths.output / CONFIG_FILE)
    status = RunStatus(paths.output, STAGES)

    stage = "dataset"
    try:
        status.start(stage)
        opened = _prepare_dataset(paths, config, dataset)
        plan_matrix(opened, config.evaluation.episodes_per_bucket, config.evaluation.eval_seed)  # fail before training
        status.succeed(stage, dataset_id=opened.dataset_id)

        stage = "train"
        status.start(stage)
        trained = train(opened.root, paths.output, config, resume=True, checkpoint_dir=paths.checkpoints,
                        log_dir=paths.logs, progress=progress)
        status.succeed(stage, num_timesteps=trained.num_timesteps, steps_per_s=round(trained.steps_per_s, 1))

        stage = "export"
        status.start(stage)
        variants: tuple[str, ...] = ()
        if config.evaluation.export_onnx:  # calibrated on the val split; the eval split stays unseen until evaluate
            exported = paths.output / EXPORT_DIR
            export_policy(trained.model_path, exported, trained.vecnormalize_path, calibration_plan(config, opened.root))
            variants = tuple(str(exported / name) for name in EVALUATED)
        status.succeed(stage, onnx=config.evaluation.export_onnx)

        stage = "evaluate"
        status.start(stage)
        metrics = evaluate(str(trained.model_path), opened.root, paths.output, config,
                           progress_csv=paths.logs / "progress.csv", model_selection=trained.model_selection,
                           variants=variants)
        status.succeed(stage, behavioral_success_rate=metrics["overall"]["behavioral_success_rate"])

        stage = "package"
        status.start(stage)
        shutil.copyfile(opened.root / "manifest.json", paths.output / "manifest.json")
        record = _provenance(config, opened, trained, status, started_at, time.monotonic() - t0)
        write_json_atomic(paths.output / PROVENANCE_FILE, record)
        status.succeed(stage)
        return record
    except KeyboardInterrupt as exc:
        name = signal_name_of(exc)
        status.stop(stage, name, str(exc) or f"stopped by {name}")
        raise
    except BaseException as exc:
        status.fail(stage, f"{type(exc).__name__}: {exc}")
        raise


def _prepare_dataset(paths: RunPaths, config: PipelineConfig, dataset: Path | None) -> Dataset:
    """The run's own copy of its dataset: the given one (verified first) or a generated one."""
    if paths.dataset.exists():  # a resumed run: same settings (config.json), so the same dataset
        return Dataset.open(paths.dataset)
    if dataset is not None:
        Dataset.open(dataset)  # verify before copying: refuses symlinks, so the copy below has none to follow
        staging = paths.dataset.with_name(f".dataset.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)  # left by a crashed run with the same pid
        try:
            # symlinks=True copies a link as a link (never what it points to), and the copy is
            # verified again: the source may have changed between the check and the copy.
            shutil.copytree(dataset, staging, symlinks=True)
            Dataset.open(staging)
            os.replace(staging, paths.dataset)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Dataset.open(paths.dataset)
    params_file = config.env.emulator_params
    generate_dataset(paths.dataset, config.dataset, params_hash(load_params(params_file)), progress=False,
                     emulator_params_file=Path(params_file) if params_file else None)
    return Dataset.open(paths.dataset)


def _provenance(config: PipelineConfig, dataset: Dataset, trained: TrainResult, status: RunStatus, started_at: datetime,
                wall_s: float) -> dict[str, Any]:
    hours = wall_s / 3600
    return {
        "git_commit": provenance.git_commit(),
        "container_image": provenance.container_image(),
        "packages": provenance.package_versions(),
        "sumo_version": sumo_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "preset": config.preset,
        "seeds": {
            "dataset_seed": config.dataset.dataset_seed,
            "eval_dataset_seed": config.dataset.eval_dataset_seed,
            "val_dataset_seed": config.dataset.val_dataset_seed,
            "seed": config.train.seed,
            "eval_seed": config.evaluation.eval_seed,
            "val_seed": config.evaluation.val_seed,
        },
        "dataset_id": dataset.dataset_id,
        "training": {
            "num_timesteps": trained.num_timesteps,
            "resumed_from": trained.resumed_from,
            "steps_per_s": round(trained.steps_per_s, 1),
            "n_envs": trained.n_envs,
            "sim_errors": trained.sim_errors,
        },
        "model_selection": {k: v for k, v in trained.model_selection.items() if k != "history"},
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 1),
        "stage_wall_s": status.wall_times(),
        "cost": {
            "instance_type": config.cost.instance_type,
            "instance_price_per_hour": config.cost.instance_price_per_hour,
            "estimated_usd": round(hours * config.cost.instance_price_per_hour, 4),
            "note": "wall time of this process at the configured on-demand price; excludes instance start-up",
        },
    }
