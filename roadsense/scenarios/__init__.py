"""SUMO convoy scenarios: generation, augmentation, datasets with manifests, and scenario selection.

Public API::

    generate_dataset(output, config, emulator_params_hash) -> Path   # a verified dataset folder
    builtin_scenario(n_peers=5, road="straight") -> Path           # one cached .sumocfg
    Dataset.open(path) / verify_dataset(path) / DatasetError
    ScenarioManager(dataset, split, seed).next() -> (scenario_id, sumocfg)   # split: train | val | eval
"""

from roadsense.scenarios.dataset import Dataset, DatasetError, verify_dataset
from roadsense.scenarios.generate import builtin_scenario, generate_dataset
from roadsense.scenarios.invariants import InvariantError
from roadsense.scenarios.manager import ScenarioManager

__all__ = [
    "Dataset",
    "DatasetError",
    "InvariantError",
    "ScenarioManager",
    "builtin_scenario",
    "generate_dataset",
    "verify_dataset",
]
