"""The error taxonomy (roadsense.errors) and the one map from an outcome to an exit code (roadsense.exits)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import roadsense
from roadsense.artifacts.status import WriteError
from roadsense.config import ConfigError
from roadsense.errors import InputNotFound, RoadsenseError
from roadsense.exits import BAD_INPUT, CTRL_C, FAILED, SIGTERM, Stopped, classify
from roadsense.scenarios.generate import OutputNotEmpty
from roadsense.sim.backend import SimulationError


def _exception_classes_of_roadsense() -> list[type[BaseException]]:
    found = []
    for module in pkgutil.walk_packages(roadsense.__path__, "roadsense."):
        for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.name:
                found.append(cls)
    return found


def test_every_error_roadsense_defines_is_in_the_taxonomy() -> None:
    """Catches a new error class on a builtin base alone: at an entry point it would be a traceback
    (ValueError) or exit 1 as a disk error (OSError) instead of its one line and its own exit code."""
    classes = _exception_classes_of_roadsense()
    assert {"ConfigError", "DatasetError", "ExportError", "ParityError", "InputNotFound"} <= {c.__name__ for c in classes}
    outside = [c.__qualname__ for c in classes if not issubclass(c, (RoadsenseError, KeyboardInterrupt))]
    assert not outside, f"error classes outside roadsense.errors' taxonomy: {outside}"


@pytest.mark.parametrize(
    ("exc", "code", "prefix"),
    [
        (ConfigError("total_timesteps: bad"), BAD_INPUT, "bad input: "),
        (InputNotFound("--model m.zip: no such file"), BAD_INPUT, "bad input: "),  # a FileNotFoundError, an OSError
        (OutputNotEmpty("--output ds: not empty"), BAD_INPUT, "bad input: "),  # a FileExistsError
        (SimulationError("SUMO died"), FAILED, "failed: "),
        (WriteError(Path("ckpt"), OSError(28, "No space left on device")), FAILED, "failed: "),
        (OSError(30, "Read-only file system"), FAILED, "failed: "),
        (Stopped("SIGTERM", "stopped by SIGTERM"), SIGTERM, "interrupted: "),
        (KeyboardInterrupt(), CTRL_C, "interrupted: "),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_each_outcome_exits_with_its_code_and_one_line(exc: BaseException, code: int, prefix: str) -> None:
    """Catches a user error that is also an OSError being read as a disk failure (exit 1), and the reverse."""
    outcome = classify(exc)
    assert outcome is not None and outcome[0] == code and outcome[1].startswith(prefix)
    assert "\n" not in outcome[1]


def test_a_bug_is_not_classified_so_its_traceback_shows() -> None:
    assert classify(ValueError("a bug")) is None
