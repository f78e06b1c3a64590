"""Uploads a folder to S3: the dataset channel, or a local run's results.

Each object carries its SHA-256 in its metadata, so a second upload skips what is already
there (S3's own ETag is not a content hash for multipart uploads). Large files go up in
parts, which boto3's transfer manager does above ``multipart_threshold``. A dataset is
verified by the pipeline's own check (:func:`roadsense.scenarios.dataset.verify_or_raise`)
before any of it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from launcher.layout import RunLayout
from roadsense.provenance import sha256_file
from roadsense.scenarios.dataset import verify_or_raise

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256
MULTIPART_THRESHOLD = 64 * 1024 * 1024


@dataclass
class UploadResult:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _remote_sha256(s3: S3Client, bucket: str, key: str) -> str | None:
    try:
        return s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get(SHA256_METADATA)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise


def upload_tree(
    s3: S3Client,
    folder: Path,
    bucket: str,
    prefix: str,
    show_progress: bool = True,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    exclude: tuple[str, ...] = (),
) -> UploadResult:
    """Upload every file under ``folder`` to ``s3://bucket/prefix<relative path>``, skipping unchanged ones.

    ``exclude`` names top-level entries of ``folder`` to leave out.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] not in exclude)
    transfer = TransferConfig(
        multipart_threshold=multipart_threshold, multipart_chunksize=max(multipart_threshold, 5 * 1024 * 1024)
    )
    result = UploadResult()
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"upload to s3://{bucket}/{prefix}", total=sum(p.stat().st_size for p in files))
        for path in files:
            key = prefix + path.relative_to(folder).as_posix()
            digest = sha256_file(path)
            if _remote_sha256(s3, bucket, key) == digest:
                result.skipped.append(key)
                progress.advance(task, path.stat().st_size)
                continue
            s3.upload_file(
                str(path),
                bucket,
                key,
                ExtraArgs={"Metadata": {SHA256_METADATA: digest}},
                Config=transfer,
                Callback=lambda sent: progress.advance(task, sent),
            )
            result.uploaded.append(key)
    return result


def upload_dataset(s3: S3Client, dataset: Path, layout: RunLayout) -> UploadResult:
    """Verify the dataset folder (:class:`roadsense.scenarios.dataset.DatasetError` if it does not), then
    upload it to the run's dataset channel."""
    verify_or_raise(dataset)
    return upload_tree(s3, dataset, layout.bucket, layout.dataset_key)
