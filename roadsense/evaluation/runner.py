"""Run the planned episodes in parallel processes, with results that do not depend on how many.

Every task is (policy, episode spec, observer type or None); each worker loads a policy the
first time it meets it, so one pool serves the model and its baselines. :func:`play_episode` is
the one episode loop: evaluation, the report's failure traces and ``roadsense replay`` all use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypedDict

import numpy as np
import numpy.typing as npt

from roadsense.config import EnvConfig
from roadsense.evaluation.matrix import EpisodeSpec
from roadsense.exits import sigterm_raises
from roadsense.parallel import ignore_stop_signals, worker_pool
from roadsense.scenarios.scenario import Split

if TYPE_CHECKING:
    from roadsense.arrays import Observation
    from roadsense.env.convoy_env import ConvoyEnv
    from roadsense.evaluation.policies import Act


class _WorkerState(TypedDict, total=False):
    """What a worker process holds, set by :func:`_init_worker` (so empty in the parent)."""

    env: ConvoyEnv
    policies: dict[str, Act]  # loaded on first use, by name


_worker: _WorkerState = {}


def _init_worker(dataset: str, split: Split, env_config: dict[str, Any]) -> None:
    ignore_stop_signals()  # the parent decides when to stop
    import torch

    torch.set_num_threads(1)
    from roadsense.env.convoy_env import ConvoyEnv

    _worker["env"] = ConvoyEnv(Path(dataset), split=split, config=EnvConfig.model_validate(env_config))
    _worker["policies"] = {}


def _policy(name: str) -> Act:
    from roadsense.evaluation.policies import load_policy

    policies = _worker["policies"]
    if name not in policies:
        policies[name] = load_policy(name)
    return policies[name]


class Observer(Protocol):
    """Watches one episode: called after every env step, then asked for what it gathered."""

    def __call__(self, env: "ConvoyEnv", action: npt.NDArray[np.float32], reward: float, info: dict[str, Any]) -> None: ...

    def result(self) -> Any: ...


def play_episode(env: "ConvoyEnv", act: Callable[[Observation], npt.NDArray[np.float32]], scenario_id: str, seed: int,
                 hazard_rank: int, observer: Observer | None = None) -> dict[str, Any]:
    """Run one episode (scenario, seed, hazard rank) to its end; returns the env's episode summary.

    ``observer`` (if any) sees every step; without one the loop does nothing extra per step.
    """
    obs, _ = env.reset(seed=seed, options={"scenario_id": scenario_id, "hazard_rank": hazard_rank})
    while True:
        action = act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        if observer is not None:
            observer(env, action, reward, info)
        if terminated or truncated:
            return dict(info["episode_summary"])


def _run_episode(task: tuple[str, EpisodeSpec, Callable[[], Observer] | None]) -> dict[str, Any]:
    name, spec, make_observer = task
    observer = make_observer() if make_observer is not None else None
    summary = play_episode(_worker["env"], _policy(name), spec.scenario_id, spec.seed, spec.hazard_rank, observer)
    # The seed is recorded so that anyone can re-run this episode (roadsense replay).
    summary.update(policy=name, episode=spec.episode, bucket_n=spec.n_peers, bucket_k=spec.hazard_rank, seed=spec.seed)
    if observer is not None:
        summary["observed"] = observer.result()
    return summary


def run_episodes(plan: list[EpisodeSpec], policies: list[str], dataset: Path, env_config: EnvConfig,
                 workers: int = 0, split: Split = "eval",
                 observer: Callable[[], Observer] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per policy, one summary per planned episode in plan order; ``workers`` 0 = one per CPU.

    ``split`` is the dataset split the plan was made from (``eval``, or ``val`` for model
    selection). ``observer`` (a picklable factory, e.g. a class) makes one observer per
    episode; its ``result()`` is returned in the summary under ``observed``.
    """
    tasks = [(name, spec, observer) for name in policies for spec in plan]
    workers = min(len(tasks), workers or len(os.sched_getaffinity(0)))
    with sigterm_raises():
        pool = worker_pool(workers, _init_worker, (str(dataset), split, env_config.model_dump(mode="json")))
        try:
            results = pool.map(_run_episode, tasks, chunksize=1)
            pool.close()
        finally:
            pool.terminate()  # kills every worker and its SUMO, also on error, Ctrl-C or SIGTERM
            pool.join()
    return {name: [r for r in results if r["policy"] == name] for name in policies}
