"""PPO training of the Deep Sets policy, resumable, readable top to bottom.

The loop is SB3's own (collect a rollout, update), spelled out here so that checkpoints,
the final shorter rollout (to stop at exactly ``total_timesteps``), the stop signal and
the metric lines sit where a reader expects them.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, make_output_format
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecNormalize

from roadsense.config import PipelineConfig
from roadsense.policy import policy_kwargs
from roadsense.training.checkpoints import (
    MODEL_FILE,
    VECNORM_FILE,
    Checkpoint,
    latest_valid_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from roadsense.training.metrics_writer import MetricLineWriter
from roadsense.training.vec import close_vec_env, default_n_envs, make_vec_env

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C arrived; a checkpoint was written and every SUMO stopped."""


class TrainingAborted(RuntimeError):
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

    Args:
        dataset: a verified dataset folder, or None for the built-in scenario.
        output: folder for the final model, normaliser and (by default) ``checkpoints/``.
        resume: continue from the newest valid checkpoint, if any.
        checkpoint_dir: where checkpoints go (SageMaker syncs ``/opt/ml/checkpoints``).
        log_dir: TensorBoard and CSV logs (default ``output/logs``).
        progress: show a progress bar (default: when stderr is a terminal).
    """
    tc = config.train
    output.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = checkpoint_dir or output / "checkpoints"
    log_dir = log_dir or output / "logs"
    torch.set_num_threads(tc.torch_threads)
    # torch re-validates the Gaussian's parameters on every sample and log_prob: a third of
    # the rollout forward pass. Divergence is caught once per update instead (_check_finite).
    torch.distributions.Distribution.set_default_validate_args(False)
    n_envs = tc.n_envs or default_n_envs()
    steps_per_env = max(1, tc.n_steps // n_envs)

    start = latest_valid_checkpoint(checkpoint_dir) if resume else None
    start_steps = start.num_timesteps if start else 0
    if start:
        print(f"resuming from {start.path} at {start_steps} steps", flush=True)
    if start and start_steps >= tc.total_timesteps:
        return _finish(start, output, start_steps, 0, 0.0, n_envs, 0)

    # Resumed envs get fresh seeds, derived from the training seed and the resume point.
    env_seed = int(np.random.SeedSequence([tc.seed, start_steps]).generate_state(1)[0])
    venv = make_vec_env(dataset, config.env, n_envs, env_seed)
    try:
        if start:
            venv = VecNormalize.load(str(start.vecnormalize), venv)
            model = PPO.load(start.model, env=venv, device="cpu")
            model.set_random_seed(env_seed)
        else:
            venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=tc.gamma)
            model = PPO(
                "MultiInputPolicy",
                venv,
                learning_rate=tc.learning_rate,
                n_steps=steps_per_env,
                batch_size=tc.batch_size,
                n_epochs=tc.n_epochs,
                gamma=tc.gamma,
                gae_lambda=tc.gae_lambda,
                clip_range=tc.clip_range,
                ent_coef=tc.ent_coef,
                policy_kwargs=policy_kwargs(tc.peer_hidden, tc.log_std_init),
                seed=tc.seed,
                device="cpu",
            )
        model.set_logger(_make_logger(log_dir, tc.total_timesteps))
        return _train_loop(model, venv, config, output, checkpoint_dir, start_steps, n_envs, progress)
    finally:
        close_vec_env(venv)  # stops every worker, and with it every SUMO


def _train_loop(model: PPO, venv: VecNormalize, config: PipelineConfig, output: Path, checkpoint_dir: Path,
                start_steps: int, n_envs: int, progress: bool | None) -> TrainResult:
    tc = config.train
    total = tc.total_timesteps
    model.num_timesteps = start_steps
    monitor = _RolloutMonitor(total, start_steps, tc.max_consecutive_sim_errors, progress)
    model._setup_learn(total - start_steps, monitor, reset_num_timesteps=False)
    last_checkpoint = start_steps
    started = time.monotonic()

    with _StopSignal() as stop:
        monitor.stop = stop
        try:
            while model.num_timesteps < total:
                _fit_rollout_to(model, total - model.num_timesteps, n_envs)
                before = model.num_timesteps
                if not model.collect_rollouts(model.env, monitor, model.rollout_buffer, model.n_steps):
                    model.num_timesteps = before  # the unfinished rollout is not learned from
                    save_checkpoint(checkpoint_dir, model, venv, before, milestone=False)
                    raise TrainingInterrupted(f"stopped by {stop.signal_name} at {before} steps; checkpoint saved")
                model._update_current_progress_remaining(model.num_timesteps, total)
                model.train()
                _check_finite(model)

                elapsed = time.monotonic() - started
                model.logger.record("time/total_timesteps", model.num_timesteps)
                model.logger.record("time/fps", (model.num_timesteps - start_steps) / max(elapsed, 1e-9))
                model.logger.record("rollout/ep_rew_mean", safe_mean([ep["r"] for ep in model.ep_info_buffer]))
                model.logger.record("rollout/ep_len_mean", safe_mean([ep["l"] for ep in model.ep_info_buffer]))
                model.logger.record("sim/errors", monitor.sim_errors)
                model.logger.dump(model.num_timesteps)

                if model.num_timesteps - last_checkpoint >= tc.checkpoint_every or model.num_timesteps >= total:
                    milestone = tc.milestone_every > 0 and (
                        model.num_timesteps // tc.milestone_every > last_checkpoint // tc.milestone_every
                    )
                    checkpoint = save_checkpoint(checkpoint_dir, model, venv, model.num_timesteps, milestone)
                    prune_checkpoints(checkpoint_dir, tc.keep_checkpoints)
                    last_checkpoint = model.num_timesteps
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            raise TrainingAborted(
                f"an env worker died ({type(exc).__name__}); last scenarios per env: {monitor.last_scenarios}"
            ) from exc
        finally:
            monitor.close()

    wall = time.monotonic() - started
    return _finish(checkpoint, output, model.num_timesteps, model.num_timesteps - start_steps, wall, n_envs,
                   monitor.sim_errors)


def _finish(checkpoint: Checkpoint, output: Path, steps: int, new_steps: int, wall: float, n_envs: int,
            sim_errors: int) -> TrainResult:
    """Publish the final checkpoint as the run's ``model.zip`` and ``vecnormalize.pkl``."""
    model_path, vecnorm_path = output / MODEL_FILE, output / VECNORM_FILE
    shutil.copyfile(checkpoint.model, model_path)
    shutil.copyfile(checkpoint.vecnormalize, vecnorm_path)
    rate = new_steps / wall if wall > 0 else 0.0
    return TrainResult(model_path, vecnorm_path, steps, steps - new_steps, wall, rate, n_envs, sim_errors)


def _check_finite(model: PPO) -> None:
    """Stop at the first update that leaves a NaN or infinite weight: nothing after it can be trusted."""
    for name, parameter in model.policy.named_parameters():
        if not torch.isfinite(parameter).all():
            raise TrainingAborted(f"the policy diverged at {model.num_timesteps} steps ({name} is not finite); "
                                  "lower learning_rate or check the reward")


def _fit_rollout_to(model: PPO, remaining: int, n_envs: int) -> None:
    """Shorten the last rollout so training ends at the requested total (to a multiple of n_envs)."""
    needed = math.ceil(remaining / n_envs)
    if needed >= model.n_steps:
        return
    model.n_steps = needed
    model.rollout_buffer = DictRolloutBuffer(
        needed, model.observation_space, model.action_space, device=model.device,
        gamma=model.gamma, gae_lambda=model.gae_lambda, n_envs=n_envs,
    )


def _make_logger(log_dir: Path, total: int) -> Logger:
    log_dir.mkdir(parents=True, exist_ok=True)
    formats = [make_output_format("csv", str(log_dir)), make_output_format("tensorboard", str(log_dir)),
               MetricLineWriter(total)]
    return Logger(str(log_dir), formats)


class _StopSignal:
    """Turns SIGTERM (SageMaker stop, spot interruption) and Ctrl-C into a flag the loop checks."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, _frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "_StopSignal":
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class _RolloutMonitor(BaseCallback):
    """Per-step bookkeeping: stop requests, simulation errors, the progress bar."""

    def __init__(self, total: int, start: int, max_consecutive_errors: int, progress: bool | None) -> None:
        super().__init__()
        self.stop: _StopSignal | None = None
        self.sim_errors = 0
        self.max_consecutive = max_consecutive_errors
        self.consecutive: np.ndarray | None = None
        self.last_scenarios: list[str | None] = []
        show = sys.stderr.isatty() if progress is None else progress
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", unit_scale=True, dynamic_ncols=True)

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        if self.consecutive is None:
            self.consecutive = np.zeros(len(infos), dtype=int)
            self.last_scenarios = [None] * len(infos)
        for i, info in enumerate(infos):
            self.last_scenarios[i] = info.get("scenario_id", self.last_scenarios[i])
            if "sim_error" in info:
                self.sim_errors += 1
                self.consecutive[i] += 1
                log.warning("%s", info["sim_error"])
                if self.consecutive[i] >= self.max_consecutive:
                    raise TrainingAborted(
                        f"env {i}: {self.consecutive[i]} simulation errors in a row, the last: {info['sim_error']}"
                    )
            elif "episode_summary" in info:
                self.consecutive[i] = 0
        if self.bar is not None:
            self.bar.update(len(infos))
        return not self.stop

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
