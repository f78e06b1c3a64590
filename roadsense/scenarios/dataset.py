"""A scenario dataset on disk, its manifest, and the check that it is exactly what was generated.

Layout (all paths relative, so a dataset can be moved, tarred, uploaded and downloaded)::

    <dataset>/manifest.json
    <dataset>/emulator_params.json          (when generated with --emulator-params)
    <dataset>/train/<id>/scenario.sumocfg, network.net.xml, routes.rou.xml
    <dataset>/val/<id>/...                  (model selection during training)
    <dataset>/eval/<id>/...                 (the reported evaluation)

``manifest.json`` records how the dataset was made and the sha256 of every other file.
:func:`verify_dataset` treats a dataset as untrusted input: anything that does not match
the manifest, is not a plain file or folder (symlinks, FIFOs), is larger than the format
allows, escapes the dataset folder, or breaks a scenario invariant is a problem.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from roadsense.errors import UserError
from roadsense.provenance import sha256_file
from roadsense.scenarios.invariants import formation, routes_problems
from roadsense.scenarios.scenario import (
    BASE_PEERS,
    NETWORK_FILE,
    PEER_SPACING_M,
    ROUTES_FILE,
    SPACING_RULE,
    SPLITS,
    SUMOCFG_FILE,
    VEHICLE_LENGTH_M,
    Split,
    depart_positions,
)
from roadsense.sim.backend import MAX_FILE_BYTES, SimulationError, parse_sumocfg
from roadsense.v2v import ParamsError, load_params

MANIFEST_FILE = "manifest.json"
EMULATOR_PARAMS_FILE = "emulator_params.json"
# 2: peers spaced front to front (50 m for one peer) and a val split. Format 1 spaced them
# bumper to bumper, 55 m front to front for one peer: beyond the 50 m radio range.
FORMAT_VERSION = 2
_OLD_SPACING = (
    f"{MANIFEST_FILE}: format 1, made with the old spacing rule (peers spaced bumper to bumper, 55 m front to front "
    "for one peer, beyond the 50 m radio range) and without a val split; regenerate it with `roadsense generate`"
)
# A production manifest is ~60 KB; anything far larger is not one, so it is never parsed.
MAX_MANIFEST_BYTES = 4 << 20
# Byte limit of each file a dataset may hold, by name; any other name is not part of the format.
MAX_BYTES_BY_NAME: dict[str, int] = {
    SUMOCFG_FILE: MAX_FILE_BYTES["sumocfg"],
    ROUTES_FILE: MAX_FILE_BYTES["route-files"],
    NETWORK_FILE: MAX_FILE_BYTES["net-file"],
    EMULATOR_PARAMS_FILE: 64 << 10,
}
SHOWN_PROBLEMS = 20  # a report lists at most this many problems, then how many more
_PROBLEM_CHARS = 300  # and cuts each problem at this length: a value can be megabytes long
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DatasetError(UserError, ValueError):
    """A dataset does not verify; the message lists the problems (at most :data:`SHOWN_PROBLEMS`)."""


def _is_safe_relative(path: str) -> bool:
    """A relative POSIX path made of plain names only: no '..', no absolute, no backslash."""
    parts = PurePosixPath(path).parts
    return bool(parts) and "\\" not in path and all(_SAFE_NAME.fullmatch(p) and ".." not in p for p in parts)


def spacing_block() -> dict[str, Any]:
    """The ``spacing`` entry of the manifest: the rule every route file of the dataset follows."""
    return {
        "rule": SPACING_RULE,
        "definition": "peer i departs (departPos = front bumper) at ego + i * spacing; bumper gap = spacing - vehicle_length_m",
        "metres_by_peer_count": {str(n): m for n, m in PEER_SPACING_M.items()},
        "vehicle_length_m": VEHICLE_LENGTH_M,
    }


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Spacing(_Model):
    rule: Literal["front-to-front"]
    definition: str
    metres_by_peer_count: dict[str, float]
    vehicle_length_m: float

    @model_validator(mode="after")
    def _current_rule(self) -> "Spacing":
        if self.model_dump() != spacing_block():
            raise ValueError(
                f"not the spacing of this roadsense ({spacing_block()['metres_by_peer_count']} m front to front); "
                "regenerate the dataset with `roadsense generate`"
            )
        return self


class Seeds(_Model):
    dataset_seed: int
    val_dataset_seed: int
    eval_dataset_seed: int

    @model_validator(mode="after")
    def _distinct(self) -> "Seeds":
        if len({self.dataset_seed, self.val_dataset_seed, self.eval_dataset_seed}) != 3:
            raise ValueError("dataset_seed, val_dataset_seed and eval_dataset_seed must all differ")
        return self


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
    val: SplitEntry
    eval: SplitEntry


class Manifest(_Model):
    """The schema of ``manifest.json``; the generator writes it and the verifier reads it."""

    format_version: Literal[2]
    dataset_id: str = Field(pattern=r"^rs-[0-9a-f]{12}$")
    created_at: str
    generator_version: str
    seeds: Seeds
    config: dict[str, Any]
    augmentation: dict[str, Any]
    spacing: Spacing
    base_scenarios: dict[str, dict[str, Any]]
    splits: Splits
    sumo_version: str
    emulator_params_hash: str
    emulator_params_file: Literal["emulator_params.json"] | None
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
    def _ids_in_their_split(self) -> "Manifest":
        # The split prefix keeps the ids of train, val and eval disjoint by construction.
        misplaced = [s.id for split in SPLITS for s in self.split(split).scenarios if not s.id.startswith(f"{split}-")]
        if misplaced:
            raise ValueError(f"ids must start with their split's name and '-' (train-, val-, eval-), got {misplaced}")
        return self

    def split(self, name: Split) -> SplitEntry:
        entry: SplitEntry = getattr(self.splits, name)  # every Split is a field of Splits
        return entry


def peer_count_distribution(scenarios: list[ScenarioEntry]) -> dict[str, int]:
    """``{"1": k1, ..., "5": k5}``: scenarios per peer count (string keys, as in JSON)."""
    counts = {str(n): 0 for n in range(1, BASE_PEERS + 1)}
    for scenario in scenarios:
        counts[str(scenario.peer_count)] += 1
    return counts


def summarize(problems: list[str]) -> list[str]:
    """The first :data:`SHOWN_PROBLEMS` problems, then one line saying how many more there are."""
    shown = problems[:SHOWN_PROBLEMS]
    if len(problems) > SHOWN_PROBLEMS:
        shown.append(f"... and {len(problems) - SHOWN_PROBLEMS} more")
    return shown


def _clip(text: str, limit: int = _PROBLEM_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def _load_manifest(root: Path) -> tuple[Manifest | None, list[str]]:
    path = root / MANIFEST_FILE
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return None, [f"{MANIFEST_FILE}: not a regular file (symlinks are not allowed in a dataset)"]
    if not path.exists():
        return None, [f"{MANIFEST_FILE}: missing"]
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)  # never more, however large the file grows
        if len(raw) > MAX_MANIFEST_BYTES:
            return None, [f"{MANIFEST_FILE}: over the {MAX_MANIFEST_BYTES}-byte limit; not a roadsense manifest"]
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"{MANIFEST_FILE}: not valid JSON ({exc})"]
    except RecursionError:
        return None, [f"{MANIFEST_FILE}: nested too deeply to be a roadsense manifest"]
    if not isinstance(data, dict):
        return None, [f"{MANIFEST_FILE}: must be a JSON object, got {type(data).__name__}"]
    version = data.get("format_version")
    if type(version) is int and version == 1:  # not True, which equals 1 in Python
        return None, [_OLD_SPACING]
    if version != FORMAT_VERSION:
        shown = _clip(repr(version), 40)
        return None, [f"{MANIFEST_FILE}: format_version {shown} is not {FORMAT_VERSION}, the format this roadsense reads; "
                      "regenerate the dataset with `roadsense generate`"]
    try:
        return Manifest.model_validate(data), []
    except RecursionError:
        return None, [f"{MANIFEST_FILE}: nested too deeply to be a roadsense manifest"]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "top level"
            problems.append(f"{MANIFEST_FILE}: {where}: {err['msg'].removeprefix('Value error, ')}")
        return None, problems


def _tree(root: Path) -> tuple[set[str], list[str]]:
    """The regular files under ``root`` (relative POSIX paths), and a problem for anything else.

    os.walk does not enter linked folders, so a link is reported, never followed: it could
    point outside the dataset or at itself.
    """
    regular: set[str] = set()
    problems: list[str] = []

    def unreadable(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot be read ({exc.strerror})")

    for directory, subdirs, names in os.walk(root, onerror=unreadable):
        subdirs.sort()
        for name in sorted(subdirs + names):
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                problems.append(f"{relative}: a symlink; a dataset holds only plain files and folders (regenerate it)")
            elif name in names and not path.is_file():
                problems.append(f"{relative}: not a regular file (a FIFO, socket or device); regenerate the dataset")
            elif name in names:
                regular.add(relative)
    return regular, problems


def _layout_problem(relative: str, ids: dict[str, set[str]]) -> str | None:
    """Why ``relative`` is not a file of the dataset format (``ids``: scenario ids by split), or None when it is."""
    if relative == EMULATOR_PARAMS_FILE:
        return None
    parts = relative.split("/")
    if len(parts) == 3 and parts[1] in ids.get(parts[0], ()) and parts[2] in (SUMOCFG_FILE, NETWORK_FILE, ROUTES_FILE):
        return None
    return (f"{relative}: not a file of the dataset format "
            f"(<split>/<scenario id>/{SUMOCFG_FILE}|{NETWORK_FILE}|{ROUTES_FILE}, {EMULATOR_PARAMS_FILE})")


def _file_problems(root: Path, manifest: Manifest, regular: set[str]) -> tuple[list[str], set[str]]:
    """Problems with the listed files, and the listed files that are sound (safe to parse)."""
    problems = []
    sound = set()
    ids: dict[str, set[str]] = {split: {s.id for s in manifest.split(split).scenarios} for split in SPLITS}
    for relative in sorted(manifest.files):
        layout = _layout_problem(relative, ids)
        if layout:
            problems.append(layout)
            continue
        if relative not in regular:
            problems.append(f"{relative}: missing")
            continue
        path = root / relative
        size, limit = path.stat().st_size, MAX_BYTES_BY_NAME[path.name]
        if size > limit:
            problems.append(f"{relative}: {size} bytes, over the {limit}-byte limit of a {path.name}; regenerate the dataset")
        elif sha256_file(path) != manifest.files[relative]:
            problems.append(f"{relative}: sha256 does not match the manifest (modified or corrupted)")
        else:
            sound.add(relative)
    for relative in sorted(regular - set(manifest.files) - {MANIFEST_FILE}):
        problems.append(f"{relative}: not listed in the manifest")
    return problems, sound


def _emulator_params_problems(root: Path, manifest: Manifest, sound: set[str]) -> list[str]:
    """The shipped parameter file must validate now, not in a worker hours into a run."""
    name = manifest.emulator_params_file
    if name is None:
        return []
    if name not in manifest.files:
        return [f"{name}: emulator parameters not listed in the manifest"]
    if name not in sound:
        return []  # already reported
    try:
        load_params(root / name)
    except ParamsError as exc:
        reason = str(exc).removeprefix(f"{root / name}: ")
        return [f"{name}: invalid emulator parameters: {reason}; regenerate the dataset with valid --emulator-params"]
    return []


def _scenario_problems(root: Path, manifest: Manifest, split: Split, entry: ScenarioEntry, sound: set[str]) -> list[str]:
    """The sumocfg must pass the backend's allow-list and name this folder's listed files; the routes keep the invariants."""
    folder = f"{split}/{entry.id}"
    sumocfg = f"{folder}/{SUMOCFG_FILE}"
    if sumocfg not in manifest.files:
        return [f"{sumocfg}: missing from the manifest"]
    if sumocfg not in sound:
        return []  # already reported
    try:
        config = parse_sumocfg(root / sumocfg)
    except SimulationError as exc:
        return [str(exc).replace(f"SUMO config {root / sumocfg}", sumocfg)]
    problems = []
    for role, path, expected in (("net-file", config.net_file, NETWORK_FILE), ("route-files", config.route_file, ROUTES_FILE)):
        if path.name != expected or f"{folder}/{expected}" not in manifest.files:
            problems.append(f"{sumocfg}: {role} {path.name!r} must be {expected!r}, a file of this scenario listed in the manifest")
    routes = f"{folder}/{ROUTES_FILE}"
    if problems or routes not in sound:
        return problems
    route_problems = [f"{folder}/{p}" for p in routes_problems(root / routes)]
    if route_problems:
        return route_problems
    positions = formation(root / routes)
    if len(positions) - 1 != entry.peer_count:
        return [f"{folder}: {len(positions) - 1} peers in the routes, manifest says {entry.peer_count}"]
    expected_positions = depart_positions(entry.peer_count)
    if any(abs(a - b) > 0.005 for a, b in zip(positions, expected_positions, strict=True)):  # both ego + peer_count
        return [f"{routes}: departPos {positions} do not follow the {SPACING_RULE} spacing {expected_positions}; "
                "regenerate the dataset with `roadsense generate`"]
    return []


def verify_dataset(path: str | Path) -> list[str]:
    """Every problem with the dataset at ``path`` (each at most a few hundred characters). Empty = OK."""
    root = Path(path)
    if not root.is_dir():
        return [f"{root}: not a directory"]
    manifest, problems = _load_manifest(root)
    if manifest is None:
        return [_clip(p) for p in problems]
    regular, problems = _tree(root)
    file_problems, sound = _file_problems(root, manifest, regular)
    problems += file_problems
    problems += _emulator_params_problems(root, manifest, sound)
    for split in SPLITS:
        for entry in manifest.split(split).scenarios:
            problems += _scenario_problems(root, manifest, split, entry, sound)
    return [_clip(p) for p in problems]


def verify_or_raise(path: str | Path) -> None:
    """:func:`verify_dataset`, raising :class:`DatasetError` with a bounded message (one line for one problem)."""
    problems = verify_dataset(path)
    if len(problems) == 1:
        raise DatasetError(f"dataset {path} does not verify: {problems[0]}")
    if problems:
        listing = "\n".join(f"  - {p}" for p in summarize(problems))
        raise DatasetError(f"dataset {path} does not verify ({len(problems)} problems):\n{listing}")


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
        verify_or_raise(path)
        root = Path(path).resolve()
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

    def _entry_key(self, split: Split, scenario_id: str) -> tuple[Split, str]:
        key = (self._check_split(split), scenario_id)
        if key not in self._peer_counts:
            raise KeyError(f"no scenario {scenario_id!r} in the {split} split of dataset {self.dataset_id}")
        return key

    @staticmethod
    def _check_split(split: str) -> Split:
        if split not in SPLITS:  # narrows split to Split
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return split
