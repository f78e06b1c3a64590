"""status.json: where a run is, rewritten atomically at every stage change.

A reader (a person, the launcher, a dashboard) sees the current stage, its state
(``running`` / ``succeeded`` / ``failed``), the error if any, and every stage's state and
wall time, so a failed evaluation never hides a finished training.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` so that a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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
        self.error = error
        self.stages[stage] = {"state": "failed", "wall_s": self._elapsed(stage), "error": error}
        self._write("failed")

    def wall_times(self) -> dict[str, float]:
        return {name: s["wall_s"] for name, s in self.stages.items() if "wall_s" in s}

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
