"""Re-run one planned evaluation episode over TraCI (optionally in sumo-gui) and write its trace.

An episode is addressed either through an evaluation folder (``replay.json`` says which
policy, dataset and env settings it used; ``episodes.jsonl`` gives each episode's scenario
and seed) or explicitly by policy, dataset, scenario, seed and hazard rank. The plan is
deterministic, so the replay over TraCI is the evaluated (libsumo) episode, step for step.

``replay.json`` (written by the evaluation): ``{"policy": model.zip path or baseline name,
"dataset": dataset folder, "env": the EnvConfig}``; paths inside the evaluation folder are
stored relative to it, so the folder can be moved.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from roadsense.config import EnvConfig
from roadsense.env.convoy_env import ConvoyEnv
from roadsense.errors import UserError
from roadsense.evaluation.policies import BASELINES, load_policy
from roadsense.evaluation.runner import play_episode
from roadsense.evaluation.traces import REPRODUCED_KEYS, TracedEpisode, TraceRecorder, write_trace
from roadsense.scenarios.dataset import Dataset
from roadsense.scenarios.scenario import EGO_ID
from roadsense.sim.backend import STEP_S, make_backend

REPLAY_FILE = "replay.json"
EPISODES_FILE = "episodes.jsonl"


class ReplayError(UserError):
    """The replay cannot run as asked (no such episode, no display...); the message names the flag."""


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """One episode to re-run and how: the policy, its dataset and env settings, and the evaluated summary."""

    episode: TracedEpisode
    dataset: Path
    env: EnvConfig
    evaluated: dict[str, Any] | None = None  # the evaluation's summary, when addressed through a run folder


@dataclass(frozen=True, slots=True)
class ReplayResult:
    trace: Path  # the trace JSON; its plot is the same path with .png
    summary: dict[str, Any]
    differences: list[str]  # REPRODUCED_KEYS whose replayed value differs from the evaluated one


def write_replay_record(output: Path, policy: str, dataset_root: Path, env: EnvConfig) -> Path:
    """Write ``output/replay.json``: what ``roadsense replay --run output`` needs besides episodes.jsonl."""
    record = {"policy": policy if policy in BASELINES else _portable(Path(policy), output),
              "dataset": _portable(dataset_root, output), "env": env.model_dump(mode="json")}
    path = output / REPLAY_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def _portable(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it (the folder stays valid when moved), else absolute."""
    path, base = path.resolve(), base.resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def target_from_run(run: Path, bucket: str, episode: int) -> ReplayTarget:
    """The episode ``episode`` of bucket ``bucket`` (``n2_k1``) of the evaluation in folder ``run``."""
    record_path, episodes_path = run / REPLAY_FILE, run / EPISODES_FILE
    for path in (record_path, episodes_path):
        if not path.is_file():
            raise ReplayError(f"--run {run}: no {path.name} (not an evaluation folder, or one written before "
                                     "replay existed); address the episode with --dataset, --scenario, --seed, --hazard-rank")
    record = json.loads(record_path.read_text())
    episodes = [json.loads(line) for line in episodes_path.read_text().splitlines() if line.strip()]
    in_bucket = {e["episode"]: e for e in episodes if f"n{e['bucket_n']}_k{e['bucket_k']}" == bucket}
    if not in_bucket:
        buckets = sorted({f"n{e['bucket_n']}_k{e['bucket_k']}" for e in episodes})
        raise ReplayError(f"--bucket {bucket!r}: not a bucket of {episodes_path}; choose one of {', '.join(buckets)}")
    if episode not in in_bucket:
        raise ReplayError(f"--episode {episode}: bucket {bucket} of {episodes_path} has episodes "
                                 f"{min(in_bucket)}..{max(in_bucket)}")
    evaluated = in_bucket[episode]
    policy = record["policy"] if record["policy"] in BASELINES else str(run / record["policy"])
    if policy not in BASELINES and not Path(policy).is_file():
        raise ReplayError(f"--run {run}: the evaluated model {policy} is gone; replay with --model PATH and "
                          f"--dataset, --scenario {evaluated['scenario_id']}, --seed {evaluated['seed']}, "
                          f"--hazard-rank {evaluated['bucket_k']}")
    dataset = run / record["dataset"]  # an absolute stored path stays absolute
    opened = Dataset.open(dataset)
    traced = TracedEpisode(policy, opened.dataset_id, evaluated["scenario_id"], evaluated["seed"],
                           evaluated["bucket_n"], evaluated["bucket_k"], episode)
    return ReplayTarget(traced, opened.root, EnvConfig.model_validate(record["env"]), evaluated)


def target_explicit(policy: str, dataset: Path, scenario_id: str, seed: int, hazard_rank: int,
                    env: EnvConfig) -> ReplayTarget:
    """An episode of the eval split addressed by scenario, seed and hazard rank."""
    opened = Dataset.open(dataset)
    ids = opened.ids("eval")
    if scenario_id not in ids:
        raise ReplayError(f"--scenario {scenario_id!r}: not in the eval split of {dataset} "
                                 f"({ids[0]}..{ids[-1]}, {len(ids)} scenarios)")
    n_peers = opened.peer_count("eval", scenario_id)
    if not 1 <= hazard_rank <= n_peers:
        raise ReplayError(f"--hazard-rank {hazard_rank}: {scenario_id} has {n_peers} peer(s) ahead; choose 1..{n_peers}")
    return ReplayTarget(TracedEpisode(policy, opened.dataset_id, scenario_id, seed, n_peers, hazard_rank),
                        opened.root, env)


def check_display() -> None:
    """sumo-gui needs an X display; without one it would fail deep inside SUMO's start."""
    if not os.environ.get("DISPLAY"):
        raise ReplayError("--gui: no display (DISPLAY is not set); replay without --gui, "
                                 "or run where a display exists (X forwarding, a desktop session)")


def replay(target: ReplayTarget, output: Path, gui: bool = False) -> ReplayResult:
    """Re-run ``target`` over TraCI (in sumo-gui if ``gui``); write ``<stem>.json`` and ``.png`` into ``output``."""
    if gui:
        check_display()
    if target.episode.policy not in BASELINES:
        import torch

        torch.set_num_threads(1)  # as in the evaluation's workers: the same arithmetic, the same actions
    act = load_policy(target.episode.policy)
    env = ConvoyEnv(target.dataset, split="eval", config=target.env.model_copy(update={"backend": "traci"}))
    tracer = TraceRecorder()
    recorder: TraceRecorder | _GuiView = tracer
    if gui:
        env.backend = make_backend("traci", gui=True)  # the backend starts at reset, so swapping it here is safe
        recorder = _GuiView(tracer)
    try:
        episode = target.episode
        summary = play_episode(env, act, episode.scenario_id, episode.seed, episode.hazard_rank, recorder)
    finally:
        env.close()
    trace = write_trace(output, target.episode, summary, recorder.result())
    evaluated = target.evaluated
    differences = [] if evaluated is None else [
        f"{k} {evaluated[k]} -> {summary[k]}" for k in REPRODUCED_KEYS if evaluated[k] != summary[k]]
    return ReplayResult(trace, summary, differences)


class _GuiView:
    """Wraps the trace recorder for sumo-gui: follow the ego, and pace the steps to real time.

    The pacing is done here because this TraCI client has no delay setting, and the backend's
    SUMO options are shared with the evaluation.
    """

    def __init__(self, recorder: TraceRecorder) -> None:
        self.recorder = recorder
        self.started = 0.0

    def __call__(self, env: ConvoyEnv, action: npt.NDArray[np.float32], reward: float, info: dict[str, Any]) -> None:
        if not self.recorder.rows:
            gui = env.backend.api.gui
            gui.trackVehicle(gui.DEFAULT_VIEW, EGO_ID)
            self.started = time.monotonic()
        self.recorder(env, action, reward, info)
        time.sleep(max(0.0, self.started + len(self.recorder.rows) * STEP_S - time.monotonic()))

    def result(self) -> dict[str, Any]:
        return self.recorder.result()
