"""PPO training of the Deep Sets policy, resumable, readable top to bottom.

One iteration: every env worker collects its share of the rollout with the current weights
(``rollout.py``), the trainer turns the segments into one batch (normalised rewards, values,
GAE) and runs the PPO update (``ppo.py``), then logs and checkpoints, and every ``val_every``
steps scores the checkpoint on the val split (``validation.py``). The published ``model.zip``
is the best checkpoint by validation; the last one is ``model_last.zip``. The model is an SB3
``PPO`` and the reward normaliser SB3's ``VecNormalize``, so ``model.zip`` and
``vecnormalize.pkl`` load with SB3 as usual.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger, make_output_format
from stable_baselines3.common.vec_env import VecNormalize

from roadsense.config import KEY_SECTION, PipelineConfig, check_resumable
from roadsense.errors import RunFailed
from roadsense.exits import Stopped
from roadsense.parallel import STOP_SIGNALS
from roadsense.policy import policy_kwargs
from roadsense.scenarios.dataset import Dataset
from roadsense.training.checkpoints import (
    MODEL_FILE,
    VECNORM_FILE,
    Checkpoint,
    latest_valid_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from roadsense.training.metrics_writer import MetricLineWriter
from roadsense.training.ppo import UpdateStats, learning_rate_at, ppo_update
from roadsense.training.rollout import EpisodeEnd, Segment, build_batch
from roadsense.training.sb3_internals import count_update, n_updates
from roadsense.training.validation import SELECTION_FILE, ValidationScore, Validator, selection_record
from roadsense.training.vec import close_vec_env, default_n_envs, make_vec_env

log = logging.getLogger(__name__)

LAST_MODEL_FILE = "model_last.zip"
LAST_VECNORM_FILE = "vecnormalize_last.pkl"


class TrainingInterrupted(Stopped):
    """SIGTERM or Ctrl-C arrived; a checkpoint was written and every SUMO stopped."""


class TrainingAborted(RunFailed, RuntimeError):
    """Training cannot go on (an env worker died, or simulation errors kept coming)."""


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    vecnormalize_path: Path
    num_timesteps: int
    resumed_from: int  # 0 for a fresh run
    wall_s: float
    steps_per_s: float  # env steps of this process (resumed steps excluded) per wall second
    n_envs: int
    sim_errors: int
    model_selection: dict[str, Any]  # what model.zip is and why (validation.selection_record)


def train(
    dataset: Path | None,
    output: Path,
    config: PipelineConfig,
    resume: bool = False,
    checkpoint_dir: Path | None = None,
    log_dir: Path | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train to ``config.train.total_timesteps`` env steps; write ``model.zip`` and ``vecnormalize.pkl``.

    With a dataset that has a val split and ``val_every`` > 0, ``model.zip`` is the checkpoint that
    scored best on the val matrix and ``model_last.zip`` the last one; ``model_selection.json``
    says which and why.

    Args:
        dataset: a verified dataset folder, or None for the built-in scenario.
        output: folder for the final model, normaliser and (by default) ``checkpoints/``.
        resume: continue from the newest valid checkpoint, if any.
        checkpoint_dir: where checkpoints go (SageMaker syncs ``/opt/ml/checkpoints``).
        log_dir: TensorBoard and CSV logs (default ``output/logs``).
        progress: show a progress bar (default: when stderr is a terminal).
    """
    train_config = config.train
    output.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = checkpoint_dir or output / "checkpoints"
    log_dir = log_dir or output / "logs"
    torch.set_num_threads(train_config.torch_threads)
    n_envs = train_config.n_envs or default_n_envs()
    steps_per_env = max(1, train_config.rollout_steps // n_envs)

    settings = _learning_settings(config, dataset)
    start = latest_valid_checkpoint(checkpoint_dir) if resume else None
    start_steps = start.num_timesteps if start else 0
    if start:
        print(f"resuming from {start.path} at {start_steps} steps", flush=True)
        if start.settings is None:
            log.warning("%s predates recorded settings: cannot check that it was trained with these", start.path)
        else:
            check_resumable(start.settings, settings, f"checkpoint {start.path}")
    validator = Validator.for_run(dataset, config, checkpoint_dir, resumed_at=start_steps)
    if start and start_steps >= train_config.total_timesteps:
        if validator is not None and start_steps not in {s.num_timesteps for s in validator.history}:
            validator.validate(start)  # stopped during the final validation: finish it
        return _finish(start, validator, output, start_steps, 0, 0.0, n_envs, 0)

    # Resumed runs get fresh env seeds and minibatch shuffles, derived from the training seed
    # and the resume point.
    seeds = np.random.SeedSequence([train_config.seed, start_steps])
    env_seed = int(seeds.generate_state(1)[0])
    shuffle_rng = np.random.default_rng(seeds.spawn(1)[0])
    kwargs = policy_kwargs(train_config.peer_hidden, train_config.log_std_init)
    with tempfile.TemporaryDirectory(prefix="roadsense-envs-") as scenario_dir:
        scenario_files = [Path(scenario_dir) / f"env-{i}.scenario" for i in range(n_envs)]
        venv = make_vec_env(dataset, config.env, env_seed, kwargs, scenario_files)
        try:
            if start:
                venv = VecNormalize.load(str(start.vecnormalize), venv)
                model = PPO.load(start.model, env=venv, device="cpu")
                model.n_steps = steps_per_env  # rollout_steps is the same, n_envs may have changed
            else:
                venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=train_config.gamma)
                model = PPO(
                    "MultiInputPolicy",
                    venv,
                    learning_rate=train_config.learning_rate,
                    n_steps=steps_per_env,
                    batch_size=train_config.batch_size,
                    n_epochs=train_config.n_epochs,
                    gamma=train_config.gamma,
                    gae_lambda=train_config.gae_lambda,
                    clip_range=train_config.clip_range,
                    ent_coef=train_config.ent_coef,
                    policy_kwargs=kwargs,
                    seed=train_config.seed,
                    device="cpu",
                )
            model.set_logger(_make_logger(log_dir, train_config.total_timesteps))
            monitor = _RolloutMonitor(train_config.total_timesteps, start_steps,
                                      train_config.max_consecutive_sim_errors, scenario_files, progress)
            return _train_loop(model, venv, config, settings, output, checkpoint_dir, start_steps, n_envs, monitor,
                               shuffle_rng, validator)
        finally:
            close_vec_env(venv)  # stops every worker, and with it every SUMO


def _train_loop(model: PPO, venv: VecNormalize, config: PipelineConfig, settings: dict[str, Any], output: Path,
                checkpoint_dir: Path,
                start_steps: int, n_envs: int, monitor: "_RolloutMonitor",
                shuffle_rng: np.random.Generator, validator: Validator | None) -> TrainResult:
    train_config = config.train
    total = train_config.total_timesteps
    model.num_timesteps = start_steps
    last_checkpoint = start_steps
    started = time.monotonic()

    with _StopSignal() as stop:
        try:
            while model.num_timesteps < total:
                # The last rollout is shortened so that training ends at exactly `total` (to a multiple of n_envs).
                steps_per_env = min(model.n_steps, math.ceil((total - model.num_timesteps) / n_envs))
                rollout_started = time.monotonic()
                weights = {name: value.numpy() for name, value in model.policy.state_dict().items()}
                segments: list[Segment] = venv.env_method("collect", weights, steps_per_env)
                collected = time.monotonic()
                if stop.signal_name is not None:  # the rollout in hand is not learned from: the checkpoint is the last update
                    save_checkpoint(checkpoint_dir, model, venv, model.num_timesteps, milestone=False,
                                    settings=settings)
                    raise TrainingInterrupted(
                        stop.signal_name, f"stopped by {stop.signal_name} at {model.num_timesteps} steps; checkpoint saved")
                monitor.record(segments)
                batch = build_batch(segments, model.policy, venv, train_config.gamma, train_config.gae_lambda)
                evaluated = time.monotonic()
                previous_steps = model.num_timesteps
                model.num_timesteps += steps_per_env * n_envs
                learning_rate = learning_rate_at(train_config.learning_rate, train_config.lr_schedule, previous_steps,
                                                 total)
                stats = ppo_update(model.policy, batch, train_config.n_epochs, train_config.batch_size,
                                   train_config.clip_range, train_config.ent_coef, learning_rate, shuffle_rng)
                model.logger.record("train/learning_rate", learning_rate)
                # Where each rollout's wall time goes, so the next bottleneck shows in the logs (and `bench train`).
                model.logger.record("time/collect_s", collected - rollout_started)
                model.logger.record("time/evaluate_gae_s", evaluated - collected)
                model.logger.record("time/update_s", time.monotonic() - evaluated)
                count_update(model, train_config.n_epochs)
                _check_finite(model)
                _log_update(model, stats, monitor, (model.num_timesteps - start_steps) / (time.monotonic() - started))

                validate = validator is not None and validator.due(model.num_timesteps, previous_steps, total)
                checkpoint_due = model.num_timesteps - last_checkpoint >= train_config.checkpoint_every
                if validate or checkpoint_due or model.num_timesteps >= total:
                    every = train_config.milestone_every
                    milestone = every > 0 and model.num_timesteps // every > last_checkpoint // every
                    checkpoint = save_checkpoint(checkpoint_dir, model, venv, model.num_timesteps, milestone,
                                                 settings=settings)
                    prune_checkpoints(checkpoint_dir, train_config.keep_checkpoints)
                    last_checkpoint = model.num_timesteps
                if validate:  # a stop signal meanwhile only sets `stop`: the run ends after the next rollout
                    assert validator is not None  # validate is only ever true with a validator
                    _log_validation(model, validator.validate(checkpoint))
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            raise TrainingAborted(
                f"an env worker died ({type(exc).__name__}); scenario per env: {monitor.current_scenarios()}"
            ) from exc
        finally:
            monitor.close()

    wall = time.monotonic() - started
    return _finish(checkpoint, validator, output, model.num_timesteps, model.num_timesteps - start_steps, wall,
                   n_envs, monitor.sim_errors)


def _log_update(model: PPO, stats: UpdateStats, monitor: "_RolloutMonitor", fps: float) -> None:
    """SB3's own logger keys, so the CSV, TensorBoard and the [train] lines read as for SB3's PPO."""
    record = model.logger.record
    record("time/total_timesteps", model.num_timesteps)
    record("time/fps", fps)
    record("rollout/ep_rew_mean", monitor.mean_episode("reward"))
    record("rollout/ep_len_mean", monitor.mean_episode("length"))
    record("sim/errors", monitor.sim_errors)
    record("train/policy_gradient_loss", stats.policy_loss)
    record("train/value_loss", stats.value_loss)
    record("train/entropy_loss", stats.entropy_loss)
    record("train/loss", stats.loss)
    record("train/approx_kl", stats.approx_kl)
    record("train/clip_fraction", stats.clip_fraction)
    record("train/explained_variance", stats.explained_variance)
    record("train/std", stats.std)
    record("train/n_updates", n_updates(model), exclude="tensorboard")
    model.logger.dump(model.num_timesteps)


def _learning_settings(config: PipelineConfig, dataset: Path | None) -> dict[str, Any]:
    """What a checkpoint records of how it was trained: the data by its id (the settings that
    generated it say nothing about a dataset given with --dataset), then env, PPO and validation."""
    settings = {key: value for key, value in config.learning_settings().items() if KEY_SECTION[key] != "dataset"}
    return {"dataset_id": Dataset.open(dataset).dataset_id if dataset else "built-in", **settings}


def _log_validation(model: PPO, score: ValidationScore) -> None:
    """Validation scores in the CSV and TensorBoard logs and on a ``[val]`` metric line."""
    model.logger.record("val/timesteps", score.num_timesteps)
    model.logger.record("val/behavioral_success_rate", score.behavioral_success_rate)
    model.logger.record("val/collision_rate", score.collision_rate)
    model.logger.record("val/wall_s", score.wall_s)
    model.logger.dump(score.num_timesteps)


def _finish(last: Checkpoint, validator: Validator | None, output: Path, steps: int, new_steps: int, wall: float,
            n_envs: int, sim_errors: int) -> TrainResult:
    """Publish the selected checkpoint as ``model.zip`` / ``vecnormalize.pkl`` (and the last as ``*_last``)."""
    best = validator.best_checkpoint() if validator is not None else None
    selected = best or last
    model_path, vecnorm_path = output / MODEL_FILE, output / VECNORM_FILE
    shutil.copyfile(selected.model, model_path)
    shutil.copyfile(selected.vecnormalize, vecnorm_path)
    if validator is not None:
        shutil.copyfile(last.model, output / LAST_MODEL_FILE)
        shutil.copyfile(last.vecnormalize, output / LAST_VECNORM_FILE)
    selection = selection_record(validator, selected, last)
    (output / SELECTION_FILE).write_text(json.dumps(selection, indent=2, sort_keys=True) + "\n")
    rate = new_steps / wall if wall > 0 else 0.0
    return TrainResult(model_path, vecnorm_path, steps, steps - new_steps, wall, rate, n_envs, sim_errors, selection)


def _check_finite(model: PPO) -> None:
    """Stop at the first update that leaves a NaN or infinite weight: nothing after it can be trusted."""
    for name, parameter in model.policy.named_parameters():
        if not torch.isfinite(parameter).all():
            raise TrainingAborted(f"the policy diverged at {model.num_timesteps} steps ({name} is not finite); "
                                  "lower learning_rate or check the reward")


def _make_logger(log_dir: Path, total: int) -> Logger:
    log_dir.mkdir(parents=True, exist_ok=True)
    formats = [make_output_format("csv", str(log_dir)), make_output_format("tensorboard", str(log_dir)),
               MetricLineWriter(total)]
    return Logger(str(log_dir), formats)


class _StopSignal:
    """Turns SIGTERM (SageMaker stop, spot interruption) and Ctrl-C into a flag the loop checks.

    The env workers ignore both (``roadsense.parallel``), so a signal sent to the whole process
    group leaves them collecting: the loop finishes the rollout, checkpoints, then closes them.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "_StopSignal":
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class _RolloutMonitor:
    """Per-rollout bookkeeping: finished episodes, simulation errors, the progress bar."""

    def __init__(self, total: int, start: int, max_consecutive_errors: int, scenario_files: list[Path],
                 progress: bool | None) -> None:
        self.sim_errors = 0
        self.max_consecutive = max_consecutive_errors
        self.consecutive = [0] * len(scenario_files)
        self.scenario_files = scenario_files
        self.episodes: deque[EpisodeEnd] = deque(maxlen=100)  # the newest EpisodeEnds, for ep_rew_mean as SB3 reports it
        show = sys.stderr.isatty() if progress is None else progress
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", unit_scale=True, dynamic_ncols=True)

    def record(self, segments: list[Segment]) -> None:
        """Count each env's simulation errors in order; too many in a row abort the run."""
        for env, segment in enumerate(segments):
            for episode in segment.episodes:
                self.episodes.append(episode)
                if episode.sim_error is None:
                    self.consecutive[env] = 0
                    continue
                self.sim_errors += 1
                self.consecutive[env] += 1
                log.warning("%s", episode.sim_error)
                if self.consecutive[env] >= self.max_consecutive:
                    raise TrainingAborted(f"env {env}: {self.consecutive[env]} simulation errors in a row, "
                                          f"the last: {episode.sim_error}")
        if self.bar is not None:
            self.bar.update(sum(len(segment.rewards) for segment in segments))

    def mean_episode(self, field: str) -> float:
        """Mean ``reward`` or ``length`` of the last 100 episodes (NaN before the first ends)."""
        return float(np.mean([getattr(e, field) for e in self.episodes])) if self.episodes else float("nan")

    def current_scenarios(self) -> list[str | None]:
        """The scenario each env is running (the workers write it at every reset), even after a crash."""
        return [f.read_text() if f.exists() else None for f in self.scenario_files]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
