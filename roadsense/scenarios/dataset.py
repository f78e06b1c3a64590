"""A scenario dataset on disk, its manifest, and the check that it is exactly what was generated.

Layout (all paths relative, so a dataset can be moved, tarred, uploaded and downloaded)::

    <dataset>/manifest.json
    <dataset>/emulator_params.json          (when generated with --emulator-params)
    <dataset>/train/<id>/scenario.sumocfg, network.net.xml, routes.rou.xml
    <dataset>/eval/<id>/...

``manifest.json`` records how the dataset was made and the sha256 of every other file.
:func:`verify_dataset` treats a dataset as untrusted input: anything that does not match
the manifest, escapes the dataset folder or breaks a scenario invariant is a problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from roadsense.scenarios.invariants import peer_count as routes_peer_count
from roadsense.scenarios.invariants import routes_problems
from roadsense.scenarios.scenario import BASE_PEERS, SPLITS, SUMOCFG_FILE, Split

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DatasetError(ValueError):
    """A dataset does not verify; the message lists every problem."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_safe_relative(path: str) -> bool:
    """A relative POSIX path made of plain names only: no '..', no absolute, no backslash."""
    parts = PurePosixPath(path).parts
    return bool(parts) and "\\" not in path and all(_SAFE_NAME.fullmatch(p) and ".." not in p for p in parts)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenarioEntry(_Model):
    id: str
    peer_count: int = Field(ge=1, le=BASE_PEERS)
    road: str
    vehicle_type: dict[str, float]

    @field_validator("id")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _SAFE_NAME.fullmatch(value) or ".." in value:
            raise ValueError(f"scenario id {value!r} is not a plain folder name (letters, digits, '-', '_')")
        return value


class SplitEntry(_Model):
    scenarios: list[ScenarioEntry]
    peer_count_distribution: dict[str, int]

    @model_validator(mode="after")
    def _consistent(self) -> "SplitEntry":
        ids = [s.id for s in self.scenarios]
        if not ids:
            raise ValueError("the split has no scenarios")
        if ids != sorted(set(ids)):
            raise ValueError("scenario ids must be unique and sorted")
        if self.peer_count_distribution != peer_count_distribution(self.scenarios):
            raise ValueError("peer_count_distribution does not match the scenarios' peer counts")
        return self


class Splits(_Model):
    train: SplitEntry
    eval: SplitEntry


class Manifest(_Model):
    """The schema of ``manifest.json``; the generator writes it and the verifier reads it."""

    format_version: Literal[1]
    dataset_id: str = Field(pattern=r"^rs-[0-9a-f]{12}$")
    created_at: str
    generator_version: str
    seeds: dict[str, int]
    config: dict[str, Any]
    augmentation: dict[str, Any]
    base_scenarios: dict[str, dict[str, Any]]
    splits: Splits
    sumo_version: str
    emulator_params_hash: str
    emulator_params_file: str | None
    git_commit: str
    container_image: str
    files: dict[str, str]

    @field_validator("files")
    @classmethod
    def _safe_files(cls, files: dict[str, str]) -> dict[str, str]:
        unsafe = [p for p in sorted(files) if not _is_safe_relative(p) or p == MANIFEST_FILE]
        if unsafe:
            raise ValueError(f"file paths must be plain relative paths inside the dataset, got {unsafe}")
        bad_hashes = [p for p in sorted(files) if not _SHA256.fullmatch(files[p])]
        if bad_hashes:
            raise ValueError(f"not a lowercase hex sha256 for {bad_hashes}")
        return files

    @model_validator(mode="after")
    def _no_shared_ids(self) -> "Manifest":
        shared = {s.id for s in self.splits.train.scenarios} & {s.id for s in self.splits.eval.scenarios}
        if shared:
            raise ValueError(f"ids in both train and eval: {sorted(shared)}")
        return self

    def split(self, name: Split) -> SplitEntry:
        return getattr(self.splits, name)


def peer_count_distribution(scenarios: list[ScenarioEntry]) -> dict[str, int]:
    """``{"1": k1, ..., "5": k5}``: scenarios per peer count (string keys, as in JSON)."""
    counts = {str(n): 0 for n in range(1, BASE_PEERS + 1)}
    for scenario in scenarios:
        counts[str(scenario.peer_count)] += 1
    return counts


def _load_manifest(root: Path) -> tuple[Manifest | None, list[str]]:
    path = root / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{MANIFEST_FILE}: missing"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"{MANIFEST_FILE}: not valid JSON ({exc})"]
    try:
        return Manifest.model_validate(data), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "top level"
            problems.append(f"{MANIFEST_FILE}: {where}: {err['msg'].removeprefix('Value error, ')}")
        return None, problems


def _file_problems(root: Path, files: dict[str, str]) -> list[str]:
    problems = []
    real_root = root.resolve()
    for relative in sorted(files):
        path = root / relative
        if not path.resolve().is_relative_to(real_root):
            problems.append(f"{relative}: points outside the dataset")
        elif not path.is_file():
            problems.append(f"{relative}: missing")
        elif sha256_file(path) != files[relative]:
            problems.append(f"{relative}: sha256 does not match the manifest (modified or corrupted)")
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            relative = (Path(directory) / name).relative_to(root).as_posix()
            if relative != MANIFEST_FILE and relative not in files:
                problems.append(f"{relative}: not listed in the manifest")
    return problems


def _scenario_problems(root: Path, manifest: Manifest, split: Split, entry: ScenarioEntry) -> list[str]:
    """The sumocfg must reference listed files inside the dataset; the routes must keep the invariants."""
    folder = f"{split}/{entry.id}"
    sumocfg = f"{folder}/{SUMOCFG_FILE}"
    if sumocfg not in manifest.files:
        return [f"{sumocfg}: missing from the manifest"]
    if not (root / sumocfg).is_file():
        return []  # already reported as a missing file
    try:
        inputs = ET.parse(root / sumocfg).getroot().find("input")
    except ET.ParseError as exc:
        return [f"{sumocfg}: not valid XML ({exc})"]
    problems = []
    referenced = {}
    for key in ("net-file", "route-files"):
        element = inputs.find(key) if inputs is not None else None
        value = element.get("value", "") if element is not None else ""
        target = posixpath.normpath(posixpath.join(folder, value))
        if not value or value.startswith("/") or target not in manifest.files:
            problems.append(f"{sumocfg}: {key} {value!r} is not a relative path to a file of this dataset")
        else:
            referenced[key] = root / target
    routes = referenced.get("route-files")
    if routes is not None and routes.is_file():
        route_problems = [f"{folder}/{p}" for p in routes_problems(routes)]
        problems += route_problems
        if not route_problems and routes_peer_count(routes) != entry.peer_count:
            problems.append(f"{folder}: {routes_peer_count(routes)} peers in the routes, manifest says {entry.peer_count}")
    return problems


def verify_dataset(path: str | Path) -> list[str]:
    """Every problem with the dataset at ``path``: hashes, layout, paths and invariants. Empty = OK."""
    root = Path(path)
    if not root.is_dir():
        return [f"{root}: not a directory"]
    manifest, problems = _load_manifest(root)
    if manifest is None:
        return problems
    problems += _file_problems(root, manifest.files)
    if manifest.emulator_params_file is not None and manifest.emulator_params_file not in manifest.files:
        problems.append(f"{manifest.emulator_params_file}: emulator parameters not listed in the manifest")
    for split in SPLITS:
        for entry in manifest.split(split).scenarios:
            problems += _scenario_problems(root, manifest, split, entry)
    return problems


class Dataset:
    """A verified dataset. Open it with :meth:`Dataset.open`; the constructor trusts its inputs."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self._parsed = Manifest.model_validate(manifest)
        self._peer_counts = {
            (split, entry.id): entry.peer_count for split in SPLITS for entry in self._parsed.split(split).scenarios
        }

    @classmethod
    def open(cls, path: str | Path) -> "Dataset":
        """Verify the dataset at ``path`` and open it; :class:`DatasetError` lists every problem."""
        root = Path(path).resolve()
        problems = verify_dataset(root)
        if problems:
            listing = "\n".join(f"  - {p}" for p in problems)
            raise DatasetError(f"dataset {path} does not verify ({len(problems)} problems):\n{listing}")
        return cls(root, json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8")))

    @property
    def dataset_id(self) -> str:
        return self._parsed.dataset_id

    @property
    def emulator_params(self) -> Path | None:
        """The emulator parameter file shipped with the dataset, if it was generated with one."""
        name = self._parsed.emulator_params_file
        return self.root / name if name is not None else None

    def ids(self, split: Split) -> list[str]:
        """Scenario ids of a split, sorted (the evaluation order)."""
        return [entry.id for entry in self._parsed.split(self._check_split(split)).scenarios]

    def sumocfg(self, split: Split, scenario_id: str) -> Path:
        self._entry_key(split, scenario_id)
        return self.root / split / scenario_id / SUMOCFG_FILE

    def peer_count(self, split: Split, scenario_id: str) -> int:
        return self._peer_counts[self._entry_key(split, scenario_id)]

    def _entry_key(self, split: Split, scenario_id: str) -> tuple[str, str]:
        key = (self._check_split(split), scenario_id)
        if key not in self._peer_counts:
            raise KeyError(f"no scenario {scenario_id!r} in the {split} split of dataset {self.dataset_id}")
        return key

    @staticmethod
    def _check_split(split: str) -> Split:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return split  # type: ignore[return-value]
