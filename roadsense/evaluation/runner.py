"""Run the planned episodes in parallel processes, with results that do not depend on how many.

Every task is (policy, episode spec); each worker loads a policy the first time it meets it,
so one pool serves the model and its baselines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from roadsense.config import EnvConfig
from roadsense.evaluation.matrix import EpisodeSpec
from roadsense.exits import sigterm_raises
from roadsense.parallel import ignore_stop_signals, worker_pool

_worker: dict[str, Any] = {}


def _init_worker(dataset: str, env_config: dict[str, Any]) -> None:
    ignore_stop_signals()  # the parent decides when to stop
    import torch

    torch.set_num_threads(1)
    from roadsense.env.convoy_env import ConvoyEnv

    _worker["env"] = ConvoyEnv(Path(dataset), split="eval", config=EnvConfig.model_validate(env_config))
    _worker["policies"] = {}


def _policy(name: str) -> Callable:
    from roadsense.evaluation.policies import load_policy

    policies = _worker["policies"]
    if name not in policies:
        policies[name] = load_policy(name)
    return policies[name]


def _run_episode(task: tuple[str, EpisodeSpec]) -> dict[str, Any]:
    name, spec = task
    env, act = _worker["env"], _policy(name)
    obs, _ = env.reset(seed=spec.seed, options={"scenario_id": spec.scenario_id, "hazard_rank": spec.hazard_rank})
    while True:
        obs, _, terminated, truncated, info = env.step(act(obs))
        if terminated or truncated:
            summary = dict(info["episode_summary"])
            summary.update(policy=name, episode=spec.episode, bucket_n=spec.n_peers, bucket_k=spec.hazard_rank)
            return summary


def run_episodes(plan: list[EpisodeSpec], policies: list[str], dataset: Path, env_config: EnvConfig,
                 workers: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Per policy, one summary per planned episode in plan order; ``workers`` 0 = one per CPU."""
    tasks = [(name, spec) for name in policies for spec in plan]
    workers = min(len(tasks), workers or len(os.sched_getaffinity(0)))
    with sigterm_raises():
        pool = worker_pool(workers, _init_worker, (str(dataset), env_config.model_dump(mode="json")))
        try:
            results = pool.map(_run_episode, tasks, chunksize=1)
            pool.close()
        finally:
            pool.terminate()  # kills every worker and its SUMO, also on error, Ctrl-C or SIGTERM
            pool.join()
    return {name: [r for r in results if r["policy"] == name] for name in policies}
