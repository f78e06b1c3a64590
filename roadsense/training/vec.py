"""Parallel convoy envs: one subprocess and one (libsumo) SUMO per env, each collecting its own rollouts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv

from roadsense.config import EnvConfig
from roadsense.parallel import START_METHOD, ignore_stop_signals, stop_processes, worker_context
from roadsense.scenarios.scenario import Split
from roadsense.training.sb3_internals import worker_processes

CLOSE_GRACE_S = 5.0  # a worker told to close stops its SUMO and exits in well under a second


def default_n_envs() -> int:
    """One env per CPU this process may use."""
    return max(1, len(os.sched_getaffinity(0)))


def _env_factory(scenario: Path | None, split: Split, config: EnvConfig, policy_kwargs: dict[str, Any], seed: int,
                 scenario_file: Path) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        ignore_stop_signals()  # runs inside the worker: the trainer checkpoints, then closes it
        import torch

        torch.set_num_threads(1)
        from roadsense.env.convoy_env import ConvoyEnv
        from roadsense.training.rollout import RolloutCollector

        return RolloutCollector(ConvoyEnv(scenario, split=split, config=config), policy_kwargs, seed, scenario_file)

    return make


def make_vec_env(scenario: Path | None, config: EnvConfig, seed: int, policy_kwargs: dict[str, Any],
                 scenario_files: list[Path], split: Split = "train") -> VecEnv:
    """One ConvoyEnv per scenario file, in worker processes, seeded ``seed, seed+1, ...``, that collect rollouts.

    Each worker builds a policy from ``policy_kwargs`` (see :class:`RolloutCollector`) and
    keeps the id of its current scenario in its scenario file.
    """
    worker_context()  # the preloading forkserver; SubprocVecEnv then starts its workers from it
    factories = [_env_factory(scenario, split, config, policy_kwargs, seed + i, file)
                 for i, file in enumerate(scenario_files)]
    return SubprocVecEnv(factories, start_method=START_METHOD)


def close_vec_env(venv: VecEnv) -> None:
    """Close the envs and make sure every worker (and so every SUMO) is gone, even if one died.

    SB3's close talks to each worker; a dead one breaks that conversation, and its error
    must not hide the reason training stopped.
    """
    try:
        venv.close()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass
    stop_processes(worker_processes(venv), CLOSE_GRACE_S)
