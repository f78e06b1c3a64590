"""Where runs are kept: the bucket, or ``--runs-dir`` laid out like it (see :mod:`launcher.layout`).

``list``, ``status``, ``fetch`` and ``compare`` (and a launch reading its run's record) read runs
through a :class:`RunStore`, so they behave the same on a local run as on one in S3; only the
primitives differ: :class:`S3RunStore` downloads through :mod:`launcher.remote`, and
:class:`LocalRunStore` reads the files of ``<runs-dir>/<key>``. Both treat what they read as
untrusted: every object is size-bounded (``max_json_bytes`` for a JSON document,
``max_download_bytes`` for anything else), and a document is checked against its schema before
any field of it is used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

import botocore.exceptions

from launcher import aws
from launcher.layout import RESERVED_PREFIXES, RunLayout
from launcher.remote import (
    Limits,
    check_file_size,
    download_file,
    read_file,
    read_object,
)
from launcher.settings import LaunchSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

Document = TypeVar("Document")
# A schema check: (the document's bytes, where it came from, for the error) -> the checked document.
Parse = Callable[[bytes, str], Document]


class RunStore(ABC):
    """The runs' tree of one bucket: records, archives and the run ids at its top level."""

    def __init__(self, bucket: str, limits: Limits) -> None:
        self.bucket = bucket
        self.limits = limits

    def layout(self, run_id: str) -> RunLayout:
        """The keys of ``run_id`` (refused if it is no valid run id)."""
        return RunLayout(self.bucket, run_id)

    @property
    @abstractmethod
    def where(self) -> str:
        """The store as messages name it: ``s3://<bucket>`` or the runs folder."""

    @abstractmethod
    def source(self, key: str) -> str:
        """The object at ``key`` as messages name it."""

    @abstractmethod
    def has(self, key: str) -> bool:
        """Whether there is an object at ``key``."""

    @abstractmethod
    def document(self, key: str, parse: Parse[Document]) -> Document | None:
        """The JSON document at ``key`` (at most ``max_json_bytes``), checked by ``parse``; None if there is none."""

    @abstractmethod
    def put(self, key: str, document: bytes) -> None:
        """Store the JSON ``document`` (a launch or sweep record) at ``key``."""

    @abstractmethod
    def file(self, key: str, download_to: Path) -> Path | None:
        """A local file holding the object at ``key`` (at most ``max_download_bytes``): the store's own
        file, or a download to ``download_to``; None if there is no such object."""

    @abstractmethod
    def top_level(self) -> list[str]:
        """The names at the top of the tree that may be runs (not the bucket's reserved prefixes), in
        order: at most ``max_listed_runs`` + 1, so a caller can tell that there are more."""


class S3RunStore(RunStore):
    """The runs in the bucket."""

    def __init__(self, s3: S3Client, bucket: str, limits: Limits) -> None:
        super().__init__(bucket, limits)
        self.s3 = s3

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}"

    def source(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def has(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return False
            raise
        return True

    def document(self, key: str, parse: Parse[Document]) -> Document | None:
        body = read_object(self.s3, self.bucket, key, self.limits.json_bytes, "max_json_bytes")
        return None if body is None else parse(body, self.source(key))

    def put(self, key: str, document: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=document, ContentType="application/json")

    def file(self, key: str, download_to: Path) -> Path | None:
        download_to.parent.mkdir(parents=True, exist_ok=True)
        found = download_file(self.s3, self.bucket, key, download_to, self.limits.object_bytes, "max_download_bytes")
        return download_to if found else None

    def top_level(self) -> list[str]:
        names: list[str] = []
        # A shared bucket may hold any number of prefixes: the listing stops once there are more than shown.
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Delimiter="/"):
            names += [p["Prefix"].removesuffix("/") for p in page.get("CommonPrefixes", [])]
            names = [name for name in names if name not in RESERVED_PREFIXES]
            if len(names) > self.limits.listed_runs:
                break
        return names[: self.limits.listed_runs + 1]


class LocalRunStore(RunStore):
    """The runs of ``--runs-dir``: local runs, laid out like the bucket."""

    def __init__(self, root: Path, bucket: str, limits: Limits) -> None:
        super().__init__(bucket, limits)
        self.root = root

    @property
    def where(self) -> str:
        return str(self.root)

    def source(self, key: str) -> str:
        return str(self.root / key)

    def has(self, key: str) -> bool:
        return (self.root / key).is_file()

    def document(self, key: str, parse: Parse[Document]) -> Document | None:
        body = read_file(self.root / key, self.limits.json_bytes, "max_json_bytes")
        return None if body is None else parse(body, self.source(key))

    def put(self, key: str, document: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(document)

    def file(self, key: str, download_to: Path) -> Path | None:
        path = self.root / key
        if not path.is_file() and not path.is_symlink():
            return None
        check_file_size(path, self.limits.object_bytes, "max_download_bytes")
        return path

    def top_level(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # Hidden folders are never runs (a fetch stages its files in one beside its destination). In the
        # order S3 lists prefixes (by key, "<name>/"), so both stores show and cut a listing alike.
        names = sorted(
            (p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda name: f"{name}/",
        )
        return [name for name in names if name not in RESERVED_PREFIXES][: self.limits.listed_runs + 1]


def open_store(settings: LaunchSettings, local: bool) -> RunStore:
    """The runs of ``--runs-dir`` for ``--local``, else those of the bucket."""
    if local:
        return LocalRunStore(settings.runs_dir, settings.bucket, settings.limits)
    return S3RunStore(aws.make_session(settings).client("s3"), settings.bucket, settings.limits)
