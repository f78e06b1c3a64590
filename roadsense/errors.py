"""The one error taxonomy of roadsense and roadsense-launch.

Every failure the code expects raises a subclass of :class:`RoadsenseError`, whose
``exit_code`` says how the process ends, so each entry point (``roadsense``, the SageMaker
container, ``roadsense-launch``) catches this one class and prints its message on one line.
Anything else is a bug, and its traceback is its message.

* :class:`UserError` (exit 2): input the user can fix before running again: a setting, a
  dataset, a parameter file, a run id, an object in the bucket, a busy output folder.
  Nothing was run, or the run stopped before writing anything it would have to undo.
* :class:`RunFailed` (exit 1): the input was fine but running it failed: a simulation that
  keeps erroring, an AWS service that refuses, a build that breaks.

Subclasses live with the modules that raise them (``ConfigError`` in roadsense.config,
``DatasetError`` in roadsense.scenarios.dataset...), except :class:`InputNotFound`, which
every command raises for a file it was given; they may also derive from a builtin
(``ValueError``, ``OSError``) where callers already catch that.
"""

from __future__ import annotations

from roadsense.exits import BAD_INPUT, FAILED


class RoadsenseError(Exception):
    """An expected failure, explained in one line; ``exit_code`` is what the process exits with."""

    exit_code: int = FAILED


class UserError(RoadsenseError):
    """Input the user can fix (its message names the field or file and the fix): exit 2."""

    exit_code = BAD_INPUT


class RunFailed(RoadsenseError):
    """Valid input, failed run (the message says which stage or service and why): exit 1."""

    exit_code = FAILED


class InputNotFound(UserError, FileNotFoundError):
    """A file named by a flag or argument does not exist; the message names the flag and what to give instead."""
