"""Fetches a run's results and extracts them safely.

``model.tar.gz`` comes from a training container, i.e. from code that ran elsewhere: a
member that would land outside the target folder (absolute path, ``..``, a link pointing
out) or a device file is refused with its name, before anything is written. tarfile's
``data`` filter then guards the extraction itself as a second line.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from launcher.layout import RunLayout
from launcher.record import latest_job, read_record


class UnsafeArchiveError(ValueError):
    """The archive holds a member that must not be extracted; the message names it."""


class RunNotFoundError(LookupError):
    """No results for the run id (never launched, or the job has not finished)."""


def _inside(root: Path, target: Path) -> bool:
    return target.resolve().is_relative_to(root.resolve())


def check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """Raise :class:`UnsafeArchiveError` if extracting ``member`` into ``dest`` is unsafe."""
    name = PurePosixPath(member.name)
    reason = None
    if name.is_absolute() or member.name.startswith("\\"):
        reason = "absolute path"
    elif ".." in name.parts:
        reason = "'..' in the path"
    elif not _inside(dest, dest / name):
        reason = "resolves outside the folder"
    elif member.isdev():
        reason = "device or FIFO file"
    elif member.issym():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or not _inside(dest, dest / name.parent / link):
            reason = f"symlink to {member.linkname!r} outside the folder"
    elif member.islnk():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or ".." in link.parts or not _inside(dest, dest / link):
            reason = f"hard link to {member.linkname!r} outside the folder"
    if reason:
        raise UnsafeArchiveError(f"refusing to extract {member.name!r}: {reason}")


def safe_extract(archive: Path, dest: Path) -> list[str]:
    """Extract ``archive`` into ``dest`` after checking every member; returns the member names."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member, dest)
        tar.extractall(dest, filter="data")
    return [m.name for m in members]


def extract_results(mirror: Path, job: str, dest: Path) -> Path:
    """Extract ``job``'s archives from a run's mirror folder (laid out like its S3 prefix) into ``dest``.

    Returns the folder with the model package (``dest/model``); the training outputs
    (TensorBoard logs, full log) go to ``dest/output-data`` when the job wrote any.
    """
    model = mirror / "output" / job / "output" / "model.tar.gz"
    if not model.is_file():
        raise RunNotFoundError(f"job {job} has no model.tar.gz ({model})")
    safe_extract(model, dest / "model")
    output = model.with_name("output.tar.gz")
    if output.is_file():
        safe_extract(output, dest / "output-data")
    return dest / "model"


def fetch_run(s3: Any, layout: RunLayout, dest: Path) -> Path:
    """Download the latest attempt's archives from S3 into ``dest`` (same layout) and extract them there."""
    record = read_record(s3, layout)
    if record is None:
        raise RunNotFoundError(f"run {layout.run_id!r} has no launch record in s3://{layout.bucket}")
    job = latest_job(record)
    model_key, output_key = layout.model_key(job), layout.output_data_key(job)
    if not _exists(s3, layout.bucket, model_key):
        raise RunNotFoundError(
            f"job {job} has no results at s3://{layout.bucket}/{model_key} (still running, or failed: roadsense-launch status {layout.run_id})"
        )
    for key in [model_key] + ([output_key] if _exists(s3, layout.bucket, output_key) else []):
        local = dest / PurePosixPath(key).relative_to(layout.run_id)
        local.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(layout.bucket, key, str(local))
    return extract_results(dest, job, dest)


def _exists(s3: Any, bucket: str, key: str) -> bool:
    return bool(s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount"))
