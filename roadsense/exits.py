"""How a run ends: the one map from outcome to exit code, and SIGTERM as an exception.

Exit codes (the CLI and the SageMaker container alike):

* 0 the run finished;
* 1 a stage failed (the message says which, and what failed where);
* 2 bad input: a setting, a dataset, a parameter file or a busy output folder, refused
  before or instead of running;
* 130 stopped by Ctrl-C (SIGINT), 143 stopped by SIGTERM (128 + the signal number, as a
  shell reports a process the signal killed).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

OK = 0
FAILED = 1
BAD_INPUT = 2
CTRL_C = 128 + signal.SIGINT
SIGTERM = 128 + signal.SIGTERM

QUOTE_LIMIT = 80  # characters of a user's value quoted in a message; the message itself comes first


class Stopped(KeyboardInterrupt):
    """A stop signal ended the run. A KeyboardInterrupt, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signal_name: str, message: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name


def signal_name_of(exc: KeyboardInterrupt) -> str:
    """SIGTERM for a :class:`Stopped` by SIGTERM; a plain KeyboardInterrupt is Ctrl-C (SIGINT)."""
    return exc.signal_name if isinstance(exc, Stopped) else "SIGINT"


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    raise Stopped(name, f"stopped by {name}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Stopped` as Ctrl-C raises KeyboardInterrupt.

    Only where SIGTERM still has its default action (which kills the process without any
    clean-up): a handler a caller installed (training's checkpoint-then-stop flag) stays.
    """
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stopped(exc: KeyboardInterrupt) -> tuple[int, str]:
    """(exit code, one-line message) of a run a signal stopped: 143 for SIGTERM, 130 for Ctrl-C."""
    name = signal_name_of(exc)
    return (SIGTERM if name == "SIGTERM" else CTRL_C), f"interrupted: {str(exc) or f'stopped by {name}'}"


def classify(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an outcome a run expects; None for a bug, whose traceback should show."""
    from roadsense.errors import RoadsenseError, UserError  # errors imports this module

    if isinstance(exc, KeyboardInterrupt):
        return stopped(exc)
    if isinstance(exc, RoadsenseError):
        return exc.exit_code, f"{'bad input' if isinstance(exc, UserError) else 'failed'}: {exc}"
    if isinstance(exc, OSError):  # the system failed the run: a full disk, a read-only folder
        return FAILED, f"failed: {exc}"
    return None
