"""Throughput benchmarks behind `roadsense bench env` and `roadsense bench train`."""

from __future__ import annotations

import csv
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from roadsense.config import PipelineConfig
from roadsense.env.convoy_env import ConvoyEnv
from roadsense.scenarios.generate import builtin_scenario
from roadsense.sim.backend import LibsumoBackend


def bench_env(steps: int = 20_000, seed: int = 0) -> dict[str, float]:
    """env_steps_per_s (random actions, resets included), reset_ms, raw_sumo_steps_per_s and ratio."""
    scenario = builtin_scenario()
    env = ConvoyEnv(scenario)
    actions = np.random.default_rng(seed).random((steps, 1), dtype=np.float32)
    reset_s, episodes, episode_steps = [], 0, []
    t0 = time.perf_counter()
    r0 = time.perf_counter()
    env.reset(seed=seed)
    reset_s.append(time.perf_counter() - r0)
    n = 0
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        n += 1
        if terminated or truncated:
            episodes += 1
            episode_steps.append(n)
            n = 0
            r0 = time.perf_counter()
            env.reset()
            reset_s.append(time.perf_counter() - r0)
    env_rate = steps / (time.perf_counter() - t0)
    env.close()
    raw_rate = _raw_sumo_rate(scenario, steps, int(np.mean(episode_steps)) if episode_steps else 500)
    return {
        "env_steps_per_s": round(env_rate, 1),
        "reset_ms": round(1000 * float(np.mean(reset_s)), 2),
        "raw_sumo_steps_per_s": round(raw_rate, 1),
        "ratio": round(env_rate / raw_rate, 4),
        "episodes": episodes,
    }


def _raw_sumo_rate(scenario: Path, steps: int, episode_len: int) -> float:
    """libsumo alone on the same scenario, episodes of the env's mean length, the env's reads per step."""
    backend = LibsumoBackend()
    done = 0
    t0 = time.perf_counter()
    while done < steps:
        backend.start(scenario, seed=0)
        vehicle = backend.api.vehicle
        for _ in range(min(episode_len, steps - done)):
            backend.step()
            for vid in vehicle.getIDList():
                vehicle.getPosition(vid), vehicle.getSpeed(vid), vehicle.getAcceleration(vid)
                vehicle.getAngle(vid), vehicle.getLanePosition(vid)
            done += 1
        backend.close()
    return steps / (time.perf_counter() - t0)


def bench_train(steps: int = 16_384, n_envs: int = 0, overrides: dict[str, str] | None = None) -> dict[str, float]:
    """PPO env-steps/s with the production settings (built-in scenario, no checkpoints mid-run).

    Also where a rollout's wall time goes (medians over the run's rollouts, from the
    ``time/*`` keys the training loop logs): ``collect_s`` (the workers' env steps and
    actor passes, in parallel), ``evaluate_gae_s`` (the trainer's batch forward pass, reward
    normalisation and GAE), ``update_s`` (the PPO update); and per unit of work,
    ``worker_step_ms`` (one worker's wall ms per env step while collecting) and
    ``minibatch_ms`` (wall ms per PPO minibatch, optimizer step included).
    """
    from roadsense.training.train import train

    values: dict[str, object] = {"total_timesteps": steps, "n_envs": n_envs, "checkpoint_every": steps}
    values.update(overrides or {})
    config = PipelineConfig.from_overrides("production", values)
    with tempfile.TemporaryDirectory(prefix="roadsense-bench-") as tmp:
        result = train(None, Path(tmp), config, progress=False)
        rollouts = _rollout_times(Path(tmp) / "logs" / "progress.csv")
    train_config = config.train
    minibatches = train_config.n_epochs * math.ceil(train_config.rollout_steps / train_config.batch_size)
    full = [r for r in rollouts if r["steps"] == train_config.rollout_steps // result.n_envs * result.n_envs]
    median = {key: float(np.median([r[key] for r in full])) for key in ("collect_s", "evaluate_gae_s", "update_s")}
    return {"train_steps_per_s": round(result.steps_per_s, 1), "n_envs": result.n_envs,
            "total_timesteps": result.num_timesteps, "wall_s": round(result.wall_s, 1),
            **{key: round(value, 3) for key, value in median.items()},
            "worker_step_ms": round(1000 * median["collect_s"] / (train_config.rollout_steps // result.n_envs), 3),
            "minibatch_ms": round(1000 * median["update_s"] / minibatches, 3)}


def _rollout_times(progress_csv: Path) -> list[dict[str, float]]:
    """Per rollout: its env ``steps`` and the ``time/*_s`` seconds the training loop logged."""
    with progress_csv.open() as f:
        rows = list(csv.DictReader(f))
    steps = np.diff([0] + [int(row["time/total_timesteps"]) for row in rows])
    return [{"steps": int(n), **{key.removeprefix("time/"): float(row[key])
                                 for key in ("time/collect_s", "time/evaluate_gae_s", "time/update_s")}}
            for n, row in zip(steps, rows, strict=True)]  # np.diff of [0, *totals]: one step count per row
