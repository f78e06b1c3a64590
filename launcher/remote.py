"""Data read back from the bucket is untrusted: it is size-bounded and schema-checked here.

The bucket is shared, and what is in it was written by training containers and by other
people's launchers. So every object the launcher downloads is checked against a byte limit
(HeadObject's ContentLength first, then counted while it streams, in case it was replaced
in between), and every JSON document is validated against a model before any field of it
is used to build a key or a path. A refusal is a :class:`RemoteDataError` (a UserError): one line
naming the object and the field, and the CLI exits with code 2.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

import botocore.exceptions
from pydantic import BaseModel, ValidationError

from roadsense.errors import UserError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
CHUNK = MiB  # read size for streamed downloads and archives

Model = TypeVar("Model", bound=BaseModel)


class RemoteDataError(UserError, ValueError):
    """Something read from the bucket (or a run's local mirror) is refused; one line naming it and the field."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what is read back; each is a launch setting (see :class:`launcher.settings.LaunchSettings`).

    The defaults leave room for roadsense's results (a model package of a few MB, TensorBoard
    logs and a training log of tens of MB) while refusing archive bombs and runaway listings.
    """

    object_bytes: int = 256 * MiB  # max_download_bytes: one S3 object (model.tar.gz, output.tar.gz)
    json_bytes: int = 1 * MiB  # max_json_bytes: launch.json, sweep.json, metrics.json
    extract_bytes: int = 512 * MiB  # max_extract_bytes: the files of one archive, once extracted
    members: int = 10_000  # max_archive_members: entries (files and folders) of one archive
    listed_runs: int = 1000  # max_listed_runs: run prefixes `list` reads


def validation_problem(exc: ValidationError) -> str:
    """The first problem of a pydantic error as ``field: message`` (one line), with how many more there are."""
    errors = exc.errors()
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "(document)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{field}: {first['msg']}{more}"


def parse(model: type[Model], data: bytes, source: str) -> Model:
    """``data`` (JSON) validated as ``model``; ``source`` names the object in the error."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise RemoteDataError(f"{source}: {validation_problem(exc)}") from None


def check_listed_key(bucket: str, key: str, prefix: str) -> str:
    """``key`` if it lies under ``prefix`` with no '.' or '..' segment. Keys from a listing that the
    launcher acts on (deletes) must address exactly that object: AWS rejects dot segments in a
    request path and other clients or proxies may resolve them to another key."""
    if not key.startswith(prefix) or any(part in (".", "..") for part in key[len(prefix) :].split("/")):
        raise RemoteDataError(
            f"s3://{bucket}/{key}: a '.' or '..' segment under {prefix}; refusing to act on it (remove it in the S3 "
            "console, then retry)"
        )
    return key


def _too_big(source: str, limit: int, setting: str) -> RemoteDataError:
    return RemoteDataError(
        f"{source} is larger than {limit} bytes; refused (raise the {setting} setting if it is genuine)"
    )


def _copy(s3: S3Client, bucket: str, key: str, out: IO[bytes], max_bytes: int, setting: str) -> bool:
    """Copy ``s3://bucket/key`` into ``out`` if it is at most ``max_bytes``; False if there is no such object.

    ``setting`` names the launch setting that sets ``max_bytes`` (for the error message).
    """
    source = f"s3://{bucket}/{key}"
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return False
        raise
    if head["ContentLength"] > max_bytes:
        raise _too_big(source, max_bytes, setting)
    try:
        # IfMatch: the object whose size was checked, not one swapped in meanwhile.
        body = s3.get_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])["Body"]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
            raise RemoteDataError(f"{source} was replaced while it was being read; run the command again") from None
        raise
    copied = 0
    for chunk in iter(lambda: body.read(CHUNK), b""):
        copied += len(chunk)
        if copied > max_bytes:  # a server that sends more than it announced
            raise _too_big(source, max_bytes, setting)
        out.write(chunk)
    return True


def download_file(s3: S3Client, bucket: str, key: str, path: Path, max_bytes: int, setting: str) -> bool:
    """Download ``s3://bucket/key`` to ``path`` if it is at most ``max_bytes``; False (and no file) if there is no
    such object."""
    with path.open("wb") as out:
        found = _copy(s3, bucket, key, out, max_bytes, setting)
    if not found:
        path.unlink()
    return found


def read_object(s3: S3Client, bucket: str, key: str, max_bytes: int, setting: str) -> bytes | None:
    """The bytes of a small object (a JSON record), or None if it does not exist."""
    buffer = io.BytesIO()
    return buffer.getvalue() if _copy(s3, bucket, key, buffer, max_bytes, setting) else None


def check_file_size(path: Path, max_bytes: int, setting: str) -> None:
    """Refuse a local file of a run's mirror that is a link (it could point out of the runs folder) or that
    is larger than an S3 object may be."""
    if path.is_symlink():
        raise RemoteDataError(f"{path} is a symbolic link; a run's files must be regular files in its folder")
    if path.stat().st_size > max_bytes:
        raise _too_big(str(path), max_bytes, setting)


def read_file(path: Path, max_bytes: int, setting: str) -> bytes | None:
    """The bytes of a local file of a run's mirror, bounded like an S3 object; None if it does not exist.

    The read itself is bounded too: the file may grow between the size check and the read."""
    if not path.is_file() and not path.is_symlink():
        return None
    check_file_size(path, max_bytes, setting)
    with path.open("rb") as f:
        body = f.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise _too_big(str(path), max_bytes, setting)
    return body
