"""Where SUMO lives: always the pinned ``eclipse-sumo`` wheel, never a system install."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def sumo_home() -> Path:
    """SUMO_HOME of the wheel; also points PROJ_LIB at its proj data (read by the wheel's SUMO)."""
    import sumo  # the eclipse-sumo wheel

    home = Path(sumo.SUMO_HOME)
    # The wheel's PROJ reads PROJ_LIB (not PROJ_DATA); without it every start warns about proj.db.
    os.environ["SUMO_HOME"] = str(home)
    os.environ["PROJ_LIB"] = str(home / "data" / "proj")
    return home


def sumo_binary(name: str = "sumo") -> str:
    """Absolute path of a SUMO tool from the wheel (``sumo``, ``sumo-gui``, ``netconvert``, ...)."""
    path = sumo_home() / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not in the eclipse-sumo wheel at {path.parent}; reinstall with `make setup`")
    return str(path)


def sumo_env() -> dict[str, str]:
    """Environment for a SUMO subprocess."""
    sumo_home()
    return dict(os.environ)


def sumo_version() -> str:
    from importlib.metadata import version

    return version("eclipse-sumo")
