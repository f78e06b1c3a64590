"""The one way this project starts worker processes (training envs, evaluation episodes).

forkserver, not fork: a worker must not inherit the parent's torch threads or a live
libsumo simulation. The server imports the heavy modules once, so each worker it forks
starts in milliseconds instead of re-importing torch and SB3 for seconds.

Stopping is the parent's decision. SIGTERM and Ctrl-C often reach the whole process group
(``timeout``, systemd, supervisors, a terminal), and a worker that died of one would take
the rollout in flight and the chance of a clean checkpoint with it. So the workers, and the
forkserver they are forked from, never act on either; the parent checkpoints, then ends
them with :func:`stop_processes`.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable, Iterable
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext, ForkServerProcess
from multiprocessing.pool import Pool
from multiprocessing.process import BaseProcess
from typing import Any

START_METHOD = "forkserver"
_PRELOAD = ["roadsense.env.convoy_env", "roadsense.evaluation.policies", "roadsense.training.rollout"]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def worker_context() -> ForkServerContext:
    """The forkserver context, with the preload set and the server running, deaf to stop signals."""
    mp.set_forkserver_preload(_PRELOAD)
    # The server inherits the signal mask it is started with (through fork and exec) and keeps it:
    # blocked there, a group SIGTERM can no longer kill it under the workers. Blocked rather than
    # ignored in this process, so a signal arriving meanwhile is delivered right after, not lost.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return mp.get_context(START_METHOD)


def ignore_stop_signals() -> None:
    """In a worker: leave SIGTERM and Ctrl-C to the parent (see the module docstring)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def stop_processes(processes: Iterable[BaseProcess], grace_s: float) -> None:
    """Wait up to ``grace_s`` for each worker to end by itself, then kill it (they ignore SIGTERM) and reap it."""
    for process in processes:
        process.join(timeout=grace_s)
        if process.is_alive():
            process.kill()
            process.join()


class _KilledOnTerminate(ForkServerProcess):
    def terminate(self) -> None:
        self.kill()  # SIGTERM would be ignored (see the module docstring)


class _WorkerPool(Pool):
    """A Pool whose ``terminate()`` kills the workers: with SIGTERM ignored, Pool's own would wait on them forever."""

    @staticmethod
    def Process(ctx: Any, *args: Any, **kwargs: Any) -> BaseProcess:  # noqa: N802 - Pool's hook for its worker class
        return _KilledOnTerminate(*args, **kwargs)


def worker_pool(workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> Pool:
    """A process pool of forkserver workers; ``initializer`` should call :func:`ignore_stop_signals`."""
    return _WorkerPool(workers, initializer, initargs, context=worker_context())
