"""Fetches a run's results from its store (the bucket, or a local run's folder) and extracts them safely.

``model.tar.gz`` and ``output.tar.gz`` come from a training container, i.e. from code that
ran elsewhere, through a bucket other people write to. So:

* every object is size-bounded (:mod:`launcher.store`), and the job name that becomes
  the key and the local path comes from a schema-checked launch record;
* an archive must be a gzip-compressed tar holding only regular files and folders whose
  names are relative, without ``..``, made of an allow-list of characters; links, devices
  and FIFOs are refused;
* the decompressed stream, the files' total size and the member count are bounded, so a
  small archive cannot fill the disk or memory;
* everything is written into a temporary folder beside the destination and moved into
  place only once complete: a refused, truncated or corrupt archive leaves nothing behind.

tarfile's ``data`` filter guards each extraction as a second line.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from launcher.remote import CHUNK, Limits, RemoteDataError
from launcher.store import RunStore
from roadsense.errors import UserError

# One path component of an archive member: printable ASCII without '/', '\\' or quotes.
_MEMBER_PART = re.compile(r"[A-Za-z0-9._+=@,~ -]{1,255}")
# Headers, long-name/pax records and padding a member adds to the tar stream beyond its data.
_HEADER_ALLOWANCE = 4096
PARTIAL_SUFFIX = ".partial"  # temporary folders beside a destination while it is written


class ArchiveError(RemoteDataError):
    """The archive is refused (not a tar, truncated, too big, too many members, unsafe member); the message names it."""


class DestinationError(UserError, ValueError):
    """The destination folder cannot take the results (it is a file)."""


class RunNotFoundError(UserError, LookupError):
    """No record or no results for the run id (never launched, or the job has not finished)."""


@contextlib.contextmanager
def staged(dest: Path) -> Iterator[Path]:
    """A temporary folder beside ``dest``; when the block completes, its entries replace those of
    ``dest``. On any failure it is removed and ``dest`` is untouched."""
    if dest.exists() and not dest.is_dir():
        raise DestinationError(f"{dest} exists and is not a folder; give another destination (fetch --to DIR)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent))
    try:
        # Fixed names: whatever an archive holds goes under new/, so it cannot collide with old/.
        (stage / "new").mkdir()
        (stage / "old").mkdir()
        yield stage / "new"
        _move_into(stage / "new", dest, stage / "old")
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # the replaced entries, or a failed attempt; an error propagates


def _move_into(new: Path, dest: Path, old: Path) -> None:
    """Rename each entry of ``new`` into ``dest``; a same-named entry there goes to ``old``. Renames
    within one filesystem, so each entry appears whole; if one fails, the earlier ones are undone."""
    dest.mkdir(parents=True, exist_ok=True)
    undo: list[Callable[[], Path]] = []
    try:
        for entry in sorted(new.iterdir()):
            target = dest / entry.name
            if target.exists() or target.is_symlink():
                target.rename(old / entry.name)
                undo.append(functools.partial((old / entry.name).rename, target))
            entry.rename(target)
            undo.append(functools.partial(target.rename, entry))
    except OSError:
        for step in reversed(undo):
            step()
        raise


class _BoundedReader:
    """A read-only stream that refuses to yield more than ``limit`` bytes: bounds everything tarfile
    decompresses, headers included (a pax or long-name header is read into memory)."""

    def __init__(self, raw: io.BufferedIOBase, limit: int, source: str, setting: str) -> None:
        self._raw, self._limit, self._source, self._setting = raw, limit, source, setting
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.consumed += len(data)
        if self.consumed > self._limit:
            raise ArchiveError(
                f"{self._source}: more than {self._limit} bytes once decompressed; refused (raise {self._setting} if "
                "it is genuine)"
            )
        return data


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be extracted, or None."""
    if not (member.isreg() or member.isdir()):
        kinds = {"symlink": member.issym(), "hard link": member.islnk(), "device or FIFO": member.isdev()}
        kind = next((name for name, found in kinds.items() if found), "special entry")
        return f"{kind}: only regular files and folders are allowed"
    name = member.name
    if name.startswith(("/", "\\")):
        return "absolute path"
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return "'..' in the path"
    if not parts and not member.isdir():
        return "a file without a name"
    bad = next((part for part in parts if not _MEMBER_PART.fullmatch(part)), None)
    if bad is not None:
        return f"name part {bad!r}: use letters, digits, space and ._+=@,~-"
    return None


_TRUNCATED = "truncated: it ends before its last member or its gzip trailer"
_CORRUPT = "corrupt compressed data"


def _unreadable(source: str, what: str, exc: BaseException) -> ArchiveError:
    """One line saying why the archive cannot be read (``what``), with the reader's own first line."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ArchiveError(f"{source}: {what} ({detail})")


def _walk(
    archive: Path, limits: Limits, visit: Callable[[tarfile.TarFile, tarfile.TarInfo], bool], source: str
) -> None:
    """Call ``visit(tar, member)`` for each member of ``archive`` in order, after checking it (kind,
    name, count, running size), until ``visit`` returns False. Reading the whole archive also
    checks its gzip trailer. Every way of not being a readable archive is an :class:`ArchiveError`
    naming ``source`` (where the archive came from)."""
    count = total = 0
    try:
        with gzip.open(archive, "rb") as raw:
            stream = _BoundedReader(
                raw, limits.extract_bytes + limits.members * _HEADER_ALLOWANCE, source, "max_extract_bytes"
            )
            # Stream mode ("r|"): one pass, members are never revisited, nothing is seeked past unread.
            # The stubs want a seekable, writable file for every mode; stream mode only reads.
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    count += 1
                    if count > limits.members:
                        raise ArchiveError(
                            f"{source}: more than {limits.members} members; refused (raise max_archive_members if it "
                            "is genuine)"
                        )
                    problem = _member_problem(member)
                    if problem:
                        raise ArchiveError(f"{source}: refusing member {member.name!r}: {problem}")
                    total += member.size if member.isreg() else 0
                    if total > limits.extract_bytes:
                        raise ArchiveError(
                            f"{source}: its files hold more than {limits.extract_bytes} bytes; refused (raise "
                            "max_extract_bytes if it is genuine)"
                        )
                    if not visit(tar, member):
                        return
            # tarfile stops at the end-of-archive block; reading on to the gzip trailer checks its
            # CRC and length, so an archive cut short after its last member is not taken as whole.
            while stream.read(CHUNK):
                pass
    # Every way the stream can fail to be an archive, each named by the error that shows it.
    except gzip.BadGzipFile as exc:  # no gzip magic, or a damaged header or trailer
        raise _unreadable(
            source, "not a gzip-compressed tar archive" if "Not a gzipped file" in str(exc) else _CORRUPT, exc
        ) from None
    except EOFError as exc:  # the gzip stream stops before its end-of-stream marker
        raise _unreadable(source, _TRUNCATED, exc) from None
    except zlib.error as exc:
        raise _unreadable(source, _CORRUPT, exc) from None
    except tarfile.TarError as exc:  # no tar in the stream, or a tar cut short
        what = _TRUNCATED if "unexpected end" in str(exc) else "the gzip stream does not hold a valid tar archive"
        raise _unreadable(source, what, exc) from None


def read_member(archive: Path, name: str, limits: Limits) -> bytes | None:
    """The content of the regular file ``name`` in ``archive`` (at most ``limits.json_bytes``), read in memory;
    None if absent."""
    found: list[bytes] = []

    def visit(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bool:
        if not member.isreg() or PurePosixPath(member.name) != PurePosixPath(name):
            return True
        if member.size > limits.json_bytes:
            raise ArchiveError(
                f"{archive}: {name} is larger than {limits.json_bytes} bytes; refused (raise max_json_bytes if it is "
                "genuine)"
            )
        handle = tar.extractfile(member)
        found.append(handle.read() if handle else b"")
        return False

    _walk(archive, limits, visit, str(archive))
    return found[0] if found else None


def safe_extract(archive: Path, dest: Path, limits: Limits, source: str | None = None) -> list[str]:
    """Extract ``archive`` into ``dest`` (its entries replace same-named ones there); returns the member names.

    Raises :class:`ArchiveError` with one line naming ``source`` (default: the archive's path)
    for a non-gzip or non-tar file, a truncated or corrupt archive, one over the limits, or an
    unsafe member; ``dest`` is then unchanged.
    """
    source = source or str(archive)
    # First pass: every member checked and the archive read to its gzip trailer before anything
    # is written (a refused archive costs one decompression, not thousands of files on disk).
    _walk(archive, limits, lambda tar, member: True, source)
    names: list[str] = []
    with staged(dest) as stage:

        def visit(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bool:
            try:
                tar.extract(member, stage, filter="data")
            except gzip.BadGzipFile:
                raise  # the stream is corrupt, not the member: reported by _walk
            except OSError as exc:  # e.g. a file where an earlier member made a folder
                raise ArchiveError(f"{source}: cannot extract member {member.name!r}: {exc}") from None
            names.append(member.name)
            return True

        _walk(archive, limits, visit, source)
    return names


def fetch_job(store: RunStore, run_id: str, job: str, dest: Path) -> Path:
    """Extract the archives of ``job`` (a job whose output is under the run's prefix: its latest
    attempt, or a tuning job's child) from ``store`` into ``dest``; returns ``dest/model``.

    The model package goes to ``dest/model`` and the training outputs (TensorBoard logs, full log)
    to ``dest/output-data`` when the job wrote any: both appear together or not at all. Archives
    downloaded from S3 stay in ``dest``, laid out as in the bucket, like a local run's folder.
    """
    layout = store.layout(run_id)
    with staged(dest) as stage:
        for key, folder, required in (
            (layout.model_key(job), "model", True),
            (layout.output_data_key(job), "output-data", False),
        ):
            archive = store.file(key, stage / PurePosixPath(key).relative_to(layout.run_id))
            if archive is not None:
                safe_extract(archive, stage / folder, store.limits, store.source(key))
            elif required:
                raise RunNotFoundError(
                    f"job {job} has no results at {store.source(key)} (still running, or failed: roadsense-launch "
                    f"status {run_id})"
                )
    return dest / "model"
