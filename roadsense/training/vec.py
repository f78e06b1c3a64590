"""Parallel convoy envs: one subprocess and one (libsumo) SUMO per env."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

import gymnasium as gym
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecMonitor

from roadsense.config import EnvConfig
from roadsense.parallel import START_METHOD, worker_context


def default_n_envs() -> int:
    """One env per CPU this process may use."""
    return max(1, len(os.sched_getaffinity(0)))


def _env_factory(scenario: Path | None, split: str, config: EnvConfig) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        # Runs inside the worker. Ctrl-C reaches the whole process group; only the trainer may
        # react to it (it checkpoints, then closes the workers), so the workers ignore it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        import torch

        torch.set_num_threads(1)
        from roadsense.env.convoy_env import ConvoyEnv

        return ConvoyEnv(scenario, split=split, config=config)

    return make


def make_vec_env(scenario: Path | None, config: EnvConfig, n_envs: int, seed: int, split: str = "train") -> VecEnv:
    """``n_envs`` ConvoyEnvs in worker processes, seeded ``seed, seed+1, ...``, with episode stats."""
    worker_context()  # the preloading forkserver; SubprocVecEnv then starts its workers from it
    venv = SubprocVecEnv([_env_factory(scenario, split, config) for _ in range(n_envs)], start_method=START_METHOD)
    venv.seed(seed)
    return VecMonitor(venv)


def close_vec_env(venv: VecEnv) -> None:
    """Close the envs and make sure every worker (and so every SUMO) is gone, even if one died.

    SB3's close talks to each worker; a dead one breaks that conversation, and its error
    must not hide the reason training stopped.
    """
    try:
        venv.close()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass
    for process in getattr(venv.unwrapped, "processes", []):
        if process.is_alive():
            process.terminate()
        process.join(timeout=5)
