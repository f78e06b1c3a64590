"""Throughput benchmarks behind `roadsense bench env` and `roadsense bench train`."""

from __future__ import annotations

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
    """PPO env-steps/s with the production settings (built-in scenario, no checkpoints mid-run)."""
    from roadsense.training.train import train

    values: dict[str, object] = {"total_timesteps": steps, "n_envs": n_envs, "checkpoint_every": steps}
    values.update(overrides or {})
    config = PipelineConfig.from_overrides("production", values)
    with tempfile.TemporaryDirectory(prefix="roadsense-bench-") as tmp:
        result = train(None, Path(tmp), config, progress=False)
    return {"train_steps_per_s": round(result.steps_per_s, 1), "n_envs": result.n_envs,
            "total_timesteps": result.num_timesteps, "wall_s": round(result.wall_s, 1)}
