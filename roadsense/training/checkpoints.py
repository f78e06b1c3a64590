"""Checkpoints that survive being killed at any moment.

A checkpoint is a folder ``step_<000000123456>/`` holding ``model.zip`` (policy and
optimizer state), ``vecnormalize.pkl`` (the reward normaliser) and ``state.json`` (step
count, the sha256 of both files and the settings that shaped what was learned, so a resume
can refuse other ones). It is written into a temporary folder and renamed
into place, so a folder with that name is either complete or absent; a file damaged later
fails its hash and is skipped with a warning, never loaded. A write that fails (disk full)
removes its temporary folder and raises :class:`WriteError` naming the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roadsense.artifacts.status import WriteError, temp_path
from roadsense.provenance import sha256_file

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecNormalize

log = logging.getLogger(__name__)

MODEL_FILE = "model.zip"
VECNORM_FILE = "vecnormalize.pkl"
STATE_FILE = "state.json"
_PREFIX = "step_"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    num_timesteps: int
    milestone: bool
    settings: dict[str, Any] | None = None  # PipelineConfig.learning_settings(); None in checkpoints older than it

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def vecnormalize(self) -> Path:
        return self.path / VECNORM_FILE


def save_checkpoint(directory: Path, model: BaseAlgorithm, vecnormalize: VecNormalize, num_timesteps: int,
                    milestone: bool, *, settings: dict[str, Any]) -> Checkpoint:
    """Write one checkpoint atomically; ``model`` is an SB3 algorithm, ``vecnormalize`` its VecNormalize."""
    final = directory / f"{_PREFIX}{num_timesteps:012d}"
    tmp = temp_path(final)  # what a killed run leaves is removed at the next start (remove_stale_temps)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run that had the same pid
        tmp.mkdir()
        model.save(tmp / MODEL_FILE)
        vecnormalize.save(str(tmp / VECNORM_FILE))
        state = {
            "num_timesteps": num_timesteps,
            "milestone": milestone,
            "sha256": {name: sha256_file(tmp / name) for name in (MODEL_FILE, VECNORM_FILE)},
            "settings": settings,
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
        _fsync_dir_contents(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as exc:  # disk full, file too large: name the checkpoint, leave no half-written folder
        if tmp.exists():
            shutil.rmtree(tmp)
        raise WriteError(final, exc) from exc
    return Checkpoint(final, num_timesteps, milestone, settings)


def _fsync_dir_contents(folder: Path) -> None:
    # The rename publishes the checkpoint; its bytes must be on disk before that.
    for item in folder.iterdir():
        with open(item, "rb") as fh:
            os.fsync(fh.fileno())


def read_valid_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path`` if its state parses and every hash matches; else None (with a warning)."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        for name, expected in state["sha256"].items():
            if sha256_file(path / name) != expected:
                raise ValueError(f"{name} does not match its sha256")
        if set(state["sha256"]) != {MODEL_FILE, VECNORM_FILE}:
            raise ValueError("state.json does not list model.zip and vecnormalize.pkl")
        settings = state.get("settings")
        if settings is not None and not isinstance(settings, dict):
            raise ValueError("state.json: settings is not an object")
        return Checkpoint(path, int(state["num_timesteps"]), bool(state.get("milestone", False)), settings)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("skipping checkpoint %s: %s", path, exc)
        return None


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders, newest (highest step) first; temporary folders are ignored."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_valid_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; damaged ones are skipped with a warning."""
    for path in list_checkpoints(directory):
        checkpoint = read_valid_checkpoint(path)
        if checkpoint is not None:
            return checkpoint
    return None


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints and every milestone; delete the rest."""
    for path in list_checkpoints(directory)[keep:]:
        try:
            milestone = json.loads((path / STATE_FILE).read_text()).get("milestone", False)
        except (OSError, ValueError):
            milestone = False
        if not milestone:
            shutil.rmtree(path, ignore_errors=True)
