"""Which scenario the env loads at each reset (docs/design.md, "Invariants").

Training draws scenarios at random, seeded, with replacement. Validation and evaluation
run their fixed, sorted list in order and start over at the end, so every validation (or
evaluation) sees the same scenarios in the same order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from roadsense.errors import InputNotFound
from roadsense.scenarios.dataset import Dataset
from roadsense.scenarios.scenario import SPLITS


class ScenarioManager:
    """Hands out ``(scenario_id, sumocfg_path)`` pairs, one per episode."""

    def __init__(self, dataset: Dataset, split: str, seed: int) -> None:
        if split not in SPLITS:  # narrows split to Split
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self._scenarios = [(i, dataset.sumocfg(split, i)) for i in dataset.ids(split)]
        self._random = split == "train"  # val and eval: the fixed list, in order
        self._rng = np.random.default_rng(seed)
        self._cursor = 0

    @classmethod
    def single(cls, sumocfg: Path) -> "ScenarioManager":
        """Always the one scenario ``sumocfg``; its id is the name of its folder."""
        path = Path(sumocfg).resolve()
        if not path.is_file():
            raise InputNotFound(f"no SUMO configuration at {sumocfg}; give a scenario.sumocfg file")
        manager = cls.__new__(cls)
        manager._scenarios = [(path.parent.name, path)]
        manager._random = False
        manager._rng = np.random.default_rng(0)
        manager._cursor = 0
        return manager

    def __len__(self) -> int:
        return len(self._scenarios)

    def next(self) -> tuple[str, Path]:
        """The scenario of the next episode."""
        if self._random:
            return self._scenarios[int(self._rng.integers(len(self._scenarios)))]
        scenario = self._scenarios[self._cursor]
        self._cursor = (self._cursor + 1) % len(self._scenarios)
        return scenario
