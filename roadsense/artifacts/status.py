"""status.json: where a run is, rewritten atomically at every stage change.

A reader (a person, the launcher, a dashboard) sees the current stage, its state
(``running`` / ``succeeded`` / ``failed`` / ``stopped``), the error if any, and every
stage's state and wall time, so a failed evaluation never hides a finished training.

Every artifact written in two steps (a temporary name, then a rename) uses
:func:`temp_path`, so what a killed process leaves behind is recognisable and
:func:`remove_stale_temps` can clear it at the next start.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from roadsense.errors import RunFailed
from roadsense.exits import clip

STATUS_FILE = "status.json"
TEMP_MARK = ".tmp-"  # in the name of every temporary file or folder an atomic write makes
ERROR_LIMIT = 1024  # characters of an error kept in status.json (SageMaker keeps as many of its FailureReason)


class WriteError(RunFailed, OSError):
    """Writing an artifact failed (disk full, file too large, read-only): says which file and why (exit 1).

    An OSError too, carrying the cause's errno and strerror, with the file as ``filename``.
    """

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror, str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror or 'error'} (errno {self.errno}); free space there or choose another folder"


def temp_path(final: Path) -> Path:
    """The temporary name ``final`` is written under before being renamed into place."""
    return final.with_name(f".{final.name}{TEMP_MARK}{os.getpid()}")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files and folders a killed run left in ``folder``; returns what went.

    Call it only while holding the folder's lock (``roadsense.artifacts.lock``): then no
    other process is writing there and every temporary name is a leftover.
    """
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if TEMP_MARK in p.name]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return stale


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` so that a reader sees the old file or the new one, never half of one."""
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, exc) from exc


class RunStatus:
    """The stages of one run and their states; every change is written to ``<folder>/status.json``."""

    def __init__(self, folder: Path, stages: list[str]) -> None:
        self.path = folder / STATUS_FILE
        self.stages: dict[str, dict[str, Any]] = {name: {"state": "pending"} for name in stages}
        self.current: str | None = None
        self.error: str | None = None
        self._started: dict[str, float] = {}

    def start(self, stage: str) -> None:
        self.current = stage
        self._started[stage] = time.monotonic()
        self.stages[stage] = {"state": "running"}
        self._write("running")

    def succeed(self, stage: str, **details: Any) -> None:
        self.stages[stage] = {"state": "succeeded", "wall_s": self._elapsed(stage), **details}
        self._write("succeeded" if stage == list(self.stages)[-1] else "running")

    def fail(self, stage: str, error: str) -> None:
        self._end(stage, "failed", error)

    def stop(self, stage: str, signal_name: str, reason: str) -> None:
        """The stage was stopped by ``signal_name`` (SIGTERM, SIGINT); the run can be resumed."""
        self._end(stage, "stopped", reason, signal=signal_name)

    def wall_times(self) -> dict[str, float]:
        return {name: s["wall_s"] for name, s in self.stages.items() if "wall_s" in s}

    def _end(self, stage: str, state: str, error: str, **details: Any) -> None:
        """Record how ``stage`` ended. If even status.json cannot be written, say so on stderr:
        the caller is already raising the error that matters, which this must not replace."""
        self.error = clip(error, ERROR_LIMIT)
        self.stages[stage] = {"state": state, "wall_s": self._elapsed(stage), "error": self.error, **details}
        try:
            self._write(state)
        except WriteError as exc:
            print(f"{stage} {state} ({self.error}), and recording it failed too: {exc}", file=sys.stderr, flush=True)

    def _elapsed(self, stage: str) -> float:
        return round(time.monotonic() - self._started.get(stage, time.monotonic()), 3)

    def _write(self, state: str) -> None:
        write_json_atomic(self.path, {
            "stage": self.current,
            "state": state,
            "error": self.error,
            "stages": self.stages,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
