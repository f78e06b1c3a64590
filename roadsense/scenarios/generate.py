"""Generate a scenario dataset (or the single built-in scenario) from seeds and settings.

Same seeds and settings -> byte-identical scenario files and the same manifest apart from
``created_at``: every random draw comes from a seeded generator, every list is written in
a fixed order, and netconvert's timestamped header is stripped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from roadsense.config import DatasetConfig
from roadsense.errors import UserError
from roadsense.provenance import container_image, git_commit, sha256_file
from roadsense.scenarios.dataset import (
    EMULATOR_PARAMS_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
    ScenarioEntry,
    SplitEntry,
    peer_count_distribution,
    spacing_block,
    verify_dataset,
)
from roadsense.scenarios.invariants import InvariantError, check_routes
from roadsense.scenarios.network import ROAD_LENGTH_M, ROADS, SPEED_LIMIT_MPS, build_network
from roadsense.scenarios.scenario import (
    BASE_PEERS,
    DEPART_SPEED_MPS,
    EGO_DEPART_POS_M,
    NETWORK_FILE,
    ROUTES_FILE,
    SPLITS,
    SUMOCFG_FILE,
    ScenarioSpec,
    VehicleType,
    balanced_specs,
    routes_xml,
    sumocfg_xml,
    train_specs,
)
from roadsense.sim.sumo_home import sumo_version

# Bump whenever the generator writes different bytes for the same inputs: it is part of
# the manifest and of the built-in scenario cache key.
# 2: peers spaced front to front (50 m for one peer, not 55 m), and a val split.
GENERATOR_VERSION = "2"


class OutputNotEmpty(UserError, FileExistsError):
    """The dataset's output folder already holds something; nothing was written."""


def write_scenario(folder: Path, spec: ScenarioSpec, network: bytes, end_s: float) -> None:
    """One self-contained scenario folder; its route file is checked against the invariants."""
    folder.mkdir(parents=True)
    (folder / NETWORK_FILE).write_bytes(network)
    (folder / ROUTES_FILE).write_text(routes_xml(spec), encoding="utf-8")
    (folder / SUMOCFG_FILE).write_text(sumocfg_xml(end_s), encoding="utf-8")
    check_routes(folder / ROUTES_FILE)


def _split_entry(specs: list[ScenarioSpec]) -> SplitEntry:
    scenarios = [
        ScenarioEntry(id=s.scenario_id, peer_count=s.peer_count, road=s.road, vehicle_type=s.vehicle_type.as_dict())
        for s in specs
    ]
    return SplitEntry(scenarios=scenarios, peer_count_distribution=peer_count_distribution(scenarios))


def _dataset_id(content: dict[str, object]) -> str:
    """Content address: the same files from the same settings get the same id, on any machine."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "rs-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _write_dataset(root: Path, config: DatasetConfig, emulator_params_hash: str, emulator_params_file: Path | None, progress: bool) -> None:
    specs = {"train": train_specs(config), "val": balanced_specs(config, "val"), "eval": balanced_specs(config, "eval")}
    all_specs = [spec for split in SPLITS for spec in specs[split]]
    # Each road is built once and its bytes copied, so every scenario folder is self-contained.
    networks = {road: build_network(road) for road in sorted(ROADS)}
    for spec in tqdm(all_specs, desc="scenarios", unit="scenario", disable=not progress):
        write_scenario(root / spec.split / spec.scenario_id, spec, networks[spec.road], config.scenario_end_s)
    if emulator_params_file is not None:
        shutil.copyfile(emulator_params_file, root / EMULATOR_PARAMS_FILE)

    files = {
        path.relative_to(root).as_posix(): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()
    }
    content = {
        "format_version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "seeds": {
            "dataset_seed": config.dataset_seed,
            "val_dataset_seed": config.val_dataset_seed,
            "eval_dataset_seed": config.eval_dataset_seed,
        },
        "config": config.model_dump(mode="json"),
        "augmentation": {
            "base_peers": BASE_PEERS,
            "val_eval_peer_drop_prob": 0.0,
            "val_eval_peer_counts": "cycle 1..5, balanced",
            "ego_depart_pos_m": EGO_DEPART_POS_M,
            "depart_speed_mps": DEPART_SPEED_MPS,
            "spawn_jitter_m": 0.0,
        },
        "base_scenarios": {
            road: {
                "description": variant.description,
                "length_m": ROAD_LENGTH_M,
                "speed_limit_mps": SPEED_LIMIT_MPS,
                "lanes": 1,
                "network_sha256": hashlib.sha256(networks[road]).hexdigest(),
            }
            for road, variant in sorted(ROADS.items())
        },
        "spacing": spacing_block(),
        "splits": {split: _split_entry(specs[split]).model_dump() for split in SPLITS},
        "sumo_version": sumo_version(),
        "emulator_params_hash": emulator_params_hash,
        "emulator_params_file": EMULATOR_PARAMS_FILE if emulator_params_file is not None else None,
        "files": files,
    }
    # Validated from plain data: content is the JSON that the dataset id hashes.
    manifest = Manifest.model_validate({
        "dataset_id": _dataset_id(content),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "container_image": container_image(),
        **content,
    })
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    (root / MANIFEST_FILE).write_text(text, encoding="utf-8")


def generate_dataset(
    output: Path,
    config: DatasetConfig,
    emulator_params_hash: str,
    progress: bool = False,
    emulator_params_file: Path | None = None,
) -> Path:
    """Write a complete, verified dataset to ``output`` and return it.

    The dataset is built in ``<output>.tmp-<pid>`` and renamed into place at the end, so
    ``output`` either holds a whole dataset or nothing. An existing non-empty ``output``
    is refused. ``emulator_params_file``, if given, is copied in as ``emulator_params.json``.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OutputNotEmpty(f"--output {output}: already exists and is not empty; choose a new folder or delete it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left by a crashed run with the same pid
    staging.mkdir()
    try:
        _write_dataset(staging, config, emulator_params_hash, emulator_params_file, progress)
        problems = verify_dataset(staging)
        if problems:
            raise InvariantError("the generated dataset does not verify (a generator bug): " + "; ".join(problems))
        if output.exists():
            output.rmdir()  # empty, checked above; rename cannot replace it on every platform
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


# The car every built-in scenario uses: the middle of the default augmentation ranges.
_BUILTIN_VEHICLE = VehicleType(speed_factor=1.0, sigma=0.25, decel=4.5, tau=1.0)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/roadsense``, else ``~/.cache/roadsense``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "roadsense"


def builtin_scenario(n_peers: int = 5, road: str = "straight") -> Path:
    """The ``.sumocfg`` of a default scenario, so the env runs without a dataset.

    Generated once and cached, keyed by the generator version and the inputs. Parallel
    processes each build in their own temporary folder; the first rename wins.
    """
    if not 1 <= n_peers <= BASE_PEERS:
        raise ValueError(f"n_peers must be 1..{BASE_PEERS}, got {n_peers}")
    if road not in ROADS:
        raise ValueError(f"road must be one of {', '.join(sorted(ROADS))}, got {road!r}")
    end_s = DatasetConfig().scenario_end_s
    key_inputs = [GENERATOR_VERSION, sumo_version(), n_peers, road, _BUILTIN_VEHICLE.as_dict(), end_s]
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode()).hexdigest()[:10]
    name = f"builtin-{road}-n{n_peers}-{key}"
    final = cache_dir() / "scenarios" / name
    if not (final / SUMOCFG_FILE).is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
        try:
            spec = ScenarioSpec(name, "eval", n_peers, road, _BUILTIN_VEHICLE)
            write_scenario(staging / "scenario", spec, build_network(road), end_s)
            (staging / "scenario").rename(final)
        except OSError:
            if not (final / SUMOCFG_FILE).is_file():  # not a lost race: a real failure
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final / SUMOCFG_FILE
