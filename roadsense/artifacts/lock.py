"""One run per output folder: an exclusive ``flock`` that dies with the process holding it.

The lock is on ``<folder>/.roadsense.lock``, which holds the holder's pid so a refused run
can name it. The kernel drops a flock when its process ends, however it ends (SIGKILL
included), so there is never a stale lock to clear by hand. The file is removed on
release, so a finished run leaves nothing behind (SageMaker packs the whole model folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from roadsense.errors import UserError

LOCK_FILE = ".roadsense.lock"


class OutputLocked(UserError, RuntimeError):
    """Another live process holds the output folder."""


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[Path]:
    """Hold ``folder`` exclusively for the block; raise OutputLocked at once if another process has it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = _acquire(path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        # Unlink before unlocking: a process that opened the file meanwhile finds it unlinked in _acquire and retries.
        path.unlink(missing_ok=True)
        os.close(fd)


def _acquire(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(f"{path.parent} is in use by another run (pid {holder}); wait for it to end, "
                               "stop it, or choose another --output") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file its last holder had already removed; lock the current one
