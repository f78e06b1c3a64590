"""Where the env's scenarios come from: one ``.sumocfg``, a verified dataset, or the built-in scenario."""

from __future__ import annotations

from pathlib import Path

from roadsense.errors import InputNotFound
from roadsense.scenarios.dataset import Dataset
from roadsense.scenarios.generate import builtin_scenario
from roadsense.scenarios.manager import ScenarioManager
from roadsense.scenarios.scenario import Split


class ScenarioSource:
    """Picks the next scenario for the env; a dataset is verified once, when it is opened."""

    def __init__(self, scenario: str | Path | None, split: Split = "train") -> None:
        self.split = split
        self.dataset: Dataset | None = None
        self.emulator_params_file: Path | None = None
        self._single: Path | None  # the one .sumocfg when there is no dataset
        if scenario is None:
            self._single = builtin_scenario()
        else:
            path = Path(scenario)
            if path.is_dir():
                self.dataset = Dataset.open(path)
                self._single = None
                self.emulator_params_file = self.dataset.emulator_params
            elif path.suffix == ".sumocfg" and path.is_file():
                self._single = path
            else:
                raise InputNotFound(
                    f"scenario: {path} is neither a .sumocfg file nor a dataset folder with manifest.json"
                )
        self._manager: ScenarioManager | None = None

    @property
    def seeded(self) -> bool:
        return self._manager is not None

    def seed(self, seed: int) -> None:
        """(Re)start the scenario sequence; in train mode the seed fixes the random draws."""
        if self.dataset is None:
            assert self._single is not None  # set whenever there is no dataset
            self._manager = ScenarioManager.single(self._single)
        else:
            self._manager = ScenarioManager(self.dataset, self.split, seed)

    def pick(self, scenario_id: str | None = None) -> tuple[str, Path]:
        """The next (scenario id, sumocfg), or the named scenario of the dataset."""
        assert self._manager is not None, "seed() first"
        if scenario_id is None:
            return self._manager.next()
        if self.dataset is None:
            raise ValueError(f"scenario_id={scenario_id!r} needs a dataset; this env runs a single scenario")
        return scenario_id, self.dataset.sumocfg(self.split, scenario_id)
