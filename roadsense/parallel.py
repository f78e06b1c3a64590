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
from typing import Any, Final

START_METHOD: Final = "forkserver"
_PRELOAD = ["roadsense.env.convoy_env", "roadsense.evaluation.policies", "roadsense.training.rollout"]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def worker_context() -> ForkServerContext:
    """The forkserver context, with the preload set and the server running, deaf to stop signals."""
    mp.set_forkserver_preload(_PRELOAD)
    # An ignored signal stays ignored through fork and exec (a blocked one does not survive
    # multiprocessing's exec of the server), so the server starts with both ignored and a group
    # SIGTERM cannot kill it under its workers. For the milliseconds of the start, once per
    # process, they are also blocked in this thread: Linux keeps a blocked signal pending even
    # while it is ignored and delivers it once the handler is back (one that another thread
    # takes meanwhile is lost).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        forkserver.ensure_running()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
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

    # The override is ignored for mypy: typeshed declares Pool.Process to return multiprocessing.context.Process,
    # but CPython's returns ctx.Process(...), which under forkserver is a ForkServerProcess, as this one is.
    @staticmethod
    def Process(ctx: Any, *args: Any, **kwargs: Any) -> BaseProcess:  # type: ignore[override]  # noqa: N802 - Pool's hook for its worker class
        return _KilledOnTerminate(*args, **kwargs)


def worker_pool(workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> Pool:
    """A process pool of forkserver workers; ``initializer`` should call :func:`ignore_stop_signals`."""
    return _WorkerPool(workers, initializer, initargs, context=worker_context())
