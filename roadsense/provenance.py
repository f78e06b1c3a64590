"""Where a run or a dataset came from: the code version, the container it ran in, the bytes of its files.

These values are recorded in manifests, checkpoints and deploy cards so a result can be
traced back to the exact code and the exact files.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def git_commit() -> str:
    """The commit of the roadsense checkout, else ``$ROADSENSE_GIT_COMMIT``, else ``"unknown"``.

    A container image holds no ``.git``; its build passes the commit in the environment.
    """
    try:
        result = subprocess.run(
            ["git", "-C", str(_PACKAGE_DIR), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        result = None
    if result is not None and result.returncode == 0 and result.stdout.strip():
        return result.stdout.strip()
    return os.environ.get("ROADSENSE_GIT_COMMIT") or "unknown"


def sha256_file(path: Path) -> str:
    """The sha256 of the file at ``path`` as 64 lowercase hex digits, read in 1 MiB blocks (any size fits in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def container_image() -> str:
    """The image this process runs in, from ``$ROADSENSE_IMAGE``; ``"none"`` outside a container."""
    return os.environ.get("ROADSENSE_IMAGE") or "none"


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a result."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("roadsense", "torch", "stable-baselines3", "gymnasium", "numpy", "eclipse-sumo", "libsumo"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
