"""Observations recorded while the torch policy drives, for INT8 calibration and parity checks.

They come from the dataset's ``val`` or ``train`` split only: calibrating on the eval split
would tune the INT8 graph to the very episodes it is then scored on. The split is a
:data:`CalibrationSplit`, refused at run time if it is anything else, and the env is opened
on that split, so it cannot run an eval scenario even by id (the dataset refuses ids of
other splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from roadsense.config import EnvConfig
from roadsense.evaluation.matrix import plan_matrix
from roadsense.evaluation.policies import Act
from roadsense.evaluation.runner import play_episode
from roadsense.export.runtime import ObsBatch
from roadsense.scenarios.dataset import Dataset

CalibrationSplit = Literal["val", "train"]
CALIBRATION_SPLITS: tuple[str, ...] = get_args(CalibrationSplit)


@dataclass(frozen=True)
class Recording:
    """Observations of whole episodes, stacked: ``obs`` float32 arrays ego (N, 6K), peers (N, 8, 6),
    peer_mask (N, 8); ``episode`` (N,) int, the index of the episode each row came from."""

    split: str
    scenario_ids: tuple[str, ...]
    seed: int
    episodes: int
    obs: ObsBatch
    episode: np.ndarray

    def rows(self, keep: np.ndarray) -> ObsBatch:
        """The observations where ``keep`` (N,) bool is true."""
        return {name: values[keep] for name, values in self.obs.items()}


def record_observations(act: Act, dataset: Dataset, split: CalibrationSplit, env_config: EnvConfig,
                        episodes_per_bucket: int, seed: int) -> Recording:
    """Run ``act`` on the (peer count, hazard rank) matrix of ``split`` and keep every observation it saw.

    The matrix covers the peer counts present in the split (``train`` may lack some), so the
    recording spans 1..5 peers and every hazard rank, as the car will meet them.
    """
    if split not in CALIBRATION_SPLITS:
        raise ValueError(f"observations for calibration come from the {' or '.join(CALIBRATION_SPLITS)} split, "
                         f"never {split!r}: the eval split is kept for the final evaluation")
    from roadsense.env.convoy_env import ConvoyEnv

    counts = tuple(sorted({dataset.peer_count(split, sid) for sid in dataset.ids(split)}))
    plan = plan_matrix(dataset, episodes_per_bucket, seed, peer_counts=counts, split=split)
    seen: list[dict[str, np.ndarray]] = []
    episode: list[int] = []

    env = ConvoyEnv(dataset.root, split=split, config=env_config)
    try:
        for i, spec in enumerate(plan):
            def recording_act(obs: dict[str, np.ndarray], i: int = i) -> np.ndarray:
                seen.append(obs)
                episode.append(i)
                return act(obs)

            play_episode(env, recording_act, spec.scenario_id, spec.seed, spec.hazard_rank)
    finally:
        env.close()
    stacked = {name: np.stack([o[name] for o in seen]).astype(np.float32) for name in ("ego", "peers", "peer_mask")}
    return Recording(split, tuple(dict.fromkeys(s.scenario_id for s in plan)), seed, len(plan), stacked,
                     np.asarray(episode))
