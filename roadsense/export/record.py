"""Observations recorded while a policy drives (the exporter uses the float graph), for INT8 calibration and parity checks.

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
import numpy.typing as npt

from roadsense.arrays import Observation
from roadsense.config import EnvConfig
from roadsense.evaluation.matrix import plan_matrix
from roadsense.evaluation.policies import Act
from roadsense.evaluation.runner import play_episode
from roadsense.export.runtime import ObsBatch
from roadsense.scenarios.dataset import Dataset

CalibrationSplit = Literal["val", "train"]
CALIBRATION_SPLITS: tuple[CalibrationSplit, ...] = get_args(CalibrationSplit)


@dataclass(frozen=True)
class Recording:
    """Observations of whole episodes, stacked: ``obs`` float32 arrays ego (N, 6K), peers (N, 8, 6),
    peer_mask (N, 8); ``episode`` (N,) int, the index of the episode each row came from."""

    split: str
    scenario_ids: tuple[str, ...]
    seed: int
    episodes: int
    obs: ObsBatch
    episode: npt.NDArray[np.int64]

    def rows(self, keep: npt.NDArray[np.bool_]) -> ObsBatch:
        """The observations where ``keep`` (N,) bool is true."""
        return {name: values[keep] for name, values in self.obs.items()}


@dataclass(frozen=True)
class CalibrationPlan:
    """Where calibration observations come from: ``episodes_per_bucket`` episodes per (peer count,
    hazard rank) bucket of ``split`` of ``dataset``, seeded with ``seed``, under ``env_config``."""

    dataset: Dataset
    split: CalibrationSplit
    env_config: EnvConfig
    episodes_per_bucket: int
    seed: int

    def __post_init__(self) -> None:
        if self.split not in CALIBRATION_SPLITS:
            raise ValueError(f"observations for calibration come from the {' or '.join(CALIBRATION_SPLITS)} split, "
                             f"never {self.split!r}: the eval split is kept for the final evaluation")

    def record(self, act: Act) -> Recording:
        """Let ``act`` drive the plan's episodes and keep every observation it saw.

        The matrix covers the peer counts present in the split (``train`` may lack some), so
        the recording spans every peer count and hazard rank the split holds, as the car meets them.
        """
        from roadsense.env.convoy_env import ConvoyEnv

        counts = tuple(sorted({self.dataset.peer_count(self.split, sid) for sid in self.dataset.ids(self.split)}))
        plan = plan_matrix(self.dataset, self.episodes_per_bucket, self.seed, peer_counts=counts, split=self.split)
        seen: list[Observation] = []
        episode: list[int] = []

        env = ConvoyEnv(self.dataset.root, split=self.split, config=self.env_config)
        try:
            for i, spec in enumerate(plan):
                def recording_act(obs: Observation, i: int = i) -> npt.NDArray[np.float32]:
                    seen.append(obs)
                    episode.append(i)
                    return act(obs)

                play_episode(env, recording_act, spec.scenario_id, spec.seed, spec.hazard_rank)
        finally:
            env.close()
        stacked = {name: np.stack([o[name] for o in seen]).astype(np.float32) for name in ("ego", "peers", "peer_mask")}
        return Recording(self.split, tuple(dict.fromkeys(s.scenario_id for s in plan)), self.seed, len(plan), stacked,
                         np.asarray(episode))
