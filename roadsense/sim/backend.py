"""Start, step and stop one SUMO simulation, in-process (libsumo) or as a TraCI subprocess.

Both backends expose the same TraCI API object as ``backend.api`` (``api.vehicle``,
``api.simulation``...), so the env calls SUMO directly with no wrapper in the hot path.

* :class:`LibsumoBackend` (default): SUMO runs inside this process, 40-100x faster than
  TraCI. libsumo holds one simulation per process, so a second live instance is refused.
* :class:`TraciBackend`: SUMO runs as a child process on a loopback port; needed for
  ``sumo-gui`` and debugging. The process is always reaped on close or on a failed start.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from roadsense.errors import RunFailed
from roadsense.sim.sumo_home import sumo_binary, sumo_env

BackendName = Literal["libsumo", "traci"]


class SimulationError(RunFailed, RuntimeError):
    """SUMO failed to start or failed during a step; the message names the scenario."""


# Upper bounds on the scenario files SUMO reads, by role: a few times what the generator
# writes (sumocfg ~0.6 KB, routes ~1.5 KB, the curved net ~30 KB), so a hostile or corrupt
# file is refused before anything parses it.
MAX_FILE_BYTES: dict[str, int] = {"sumocfg": 64 << 10, "route-files": 1 << 20, "net-file": 8 << 20}

# Everything a scenario's .sumocfg may hold: section -> option -> value kind. Exactly what
# roadsense.scenarios.scenario.sumocfg_xml writes; any other element (additional-files,
# *-output, ...) could make SUMO read or write files outside the scenario, so it is refused.
_ALLOWED: dict[str, dict[str, str]] = {
    "input": {"net-file": "file", "route-files": "file"},
    "time": {"begin": "seconds", "end": "seconds", "step-length": "step"},
    "processing": {"time-to-teleport": "teleport", "collision.action": "collision"},
    "report": {"no-step-log": "bool", "duration-log.disable": "bool"},
}
_REQUIRED = ("net-file", "route-files", "begin", "end")
_PLAIN_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
STEP_S = 0.1  # one SUMO step, s (10 Hz); the env acts once per step, so it is the env's step too
MAX_END_S = 3600.0


class SumocfgError(SimulationError):
    """A .sumocfg holds something the scenario format does not allow; the message names it."""


@dataclass(frozen=True)
class SumoConfig:
    """The only values of a .sumocfg that reach SUMO: two input files and the time window (s)."""

    net_file: Path
    route_file: Path
    begin_s: float
    end_s: float


def _check_value(kind: str, value: str) -> str | None:
    """Why ``value`` is not allowed for an option of ``kind``, or None when it is."""
    if kind == "file":
        ok = bool(_PLAIN_FILE.fullmatch(value)) and ".." not in value
        return None if ok else "must be the plain name of a file in the scenario folder"
    if kind == "bool":
        return None if value in ("true", "false") else "must be true or false"
    if kind == "collision":
        return None if value in ("none", "warn", "teleport", "remove") else "must be none, warn, teleport or remove"
    try:
        number = float(value)
    except ValueError:
        return "must be a number"
    if kind == "seconds":
        return None if 0.0 <= number <= MAX_END_S else f"must be 0..{MAX_END_S:.0f} s"
    if kind == "step":
        return None if number == STEP_S else f"must be {STEP_S} s (the env steps at 10 Hz)"
    return None if number == -1 or 0 <= number <= MAX_END_S else f"must be -1 (never) or 0..{MAX_END_S:.0f} s"


def parse_sumocfg(sumocfg: Path) -> SumoConfig:
    """Read a .sumocfg through the allow-list; :class:`SumocfgError` names the first thing refused.

    Only checks the file itself; whether its inputs exist is for the caller.
    """
    sumocfg = Path(sumocfg)
    if not sumocfg.is_file():  # also refuses a FIFO, which would block the read below
        raise SimulationError(f"SUMO config {sumocfg} does not exist as a regular file")
    size = sumocfg.stat().st_size
    if size > MAX_FILE_BYTES["sumocfg"]:
        raise SumocfgError(f"SUMO config {sumocfg}: {size} bytes, over the {MAX_FILE_BYTES['sumocfg']}-byte limit")
    try:
        root = ET.fromstring(sumocfg.read_bytes())
    except ET.ParseError as exc:
        raise SumocfgError(f"SUMO config {sumocfg} is not valid XML ({exc})") from None
    if root.tag != "configuration" or root.attrib:
        raise SumocfgError(f"SUMO config {sumocfg}: the root must be a plain <configuration>, got <{root.tag}> {dict(root.attrib)}")
    values: dict[str, str] = {}
    for section in root:
        if section.tag not in _ALLOWED or section.attrib:
            raise SumocfgError(f"SUMO config {sumocfg}: <{section.tag}> is not allowed; a scenario config holds only {', '.join(_ALLOWED)}")
        for option in section:
            kind = _ALLOWED[section.tag].get(option.tag)
            if kind is None or set(option.attrib) != {"value"} or len(option) or option.tag in values:
                allowed = ", ".join(f"{section.tag}/{name}" for name in _ALLOWED[section.tag])
                raise SumocfgError(
                    f"SUMO config {sumocfg}: <{section.tag}/{option.tag}> is not allowed "
                    f"(only one each of {allowed}, with a single value attribute)"
                )
            problem = _check_value(kind, option.attrib["value"])
            if problem:
                raise SumocfgError(f"SUMO config {sumocfg}: {option.tag} = {option.attrib['value']!r} {problem}")
            values[option.tag] = option.attrib["value"]
    missing = [name for name in _REQUIRED if name not in values]
    if missing:
        raise SumocfgError(f"SUMO config {sumocfg}: missing {', '.join(missing)}")
    begin, end = float(values["begin"]), float(values["end"])
    if begin >= end:
        raise SumocfgError(f"SUMO config {sumocfg}: begin {begin} s must come before end {end} s")
    return SumoConfig(sumocfg.parent / values["net-file"], sumocfg.parent / values["route-files"], begin, end)


def read_sumocfg(sumocfg: Path) -> SumoConfig:
    """:func:`parse_sumocfg`, then check that its inputs are regular files within the size bounds.

    libsumo reports only "Process Error" for a missing net file (SUMO's own message goes to
    stderr), and over TraCI SUMO accepts the connection before it loads the net, so both
    backends check the inputs here first.
    """
    config = parse_sumocfg(sumocfg)
    for role, path in (("net-file", config.net_file), ("route-files", config.route_file)):
        if path.is_symlink() or not path.is_file():
            raise SimulationError(f"SUMO config {sumocfg}: its {role} {path.name!r} does not exist as a regular file (looked for {path})")
        if path.stat().st_size > MAX_FILE_BYTES[role]:
            raise SimulationError(f"SUMO config {sumocfg}: its {role} {path.name!r} is over the {MAX_FILE_BYTES[role]}-byte limit")
    return config


def sumo_args(config: SumoConfig, seed: int) -> list[str]:
    """The whole SUMO command line after the binary, shared by both backends.

    No ``-c``: SUMO gets the allow-listed inputs and nothing else from the scenario, so no
    config can add inputs or outputs. Collisions and teleports are left to the env
    (ground-truth gap), so SUMO must neither remove colliding cars nor teleport a stuck one.
    """
    return [
        "--net-file", str(config.net_file),
        "--route-files", str(config.route_file),
        "--begin", repr(config.begin_s),
        "--end", repr(config.end_s),
        "--seed", str(seed),
        "--step-length", str(STEP_S),
        "--no-step-log", "true",
        "--no-warnings", "true",
        "--time-to-teleport", "-1",
        "--collision.action", "none",
        "--collision.check-junctions", "false",
        "--duration-log.disable", "true",
    ]  # fmt: skip


class SimBackend:
    """One SUMO simulation at a time: ``start`` (closing any previous one), ``step``, ``close``."""

    name: BackendName
    api: Any = None  # the TraCI domain API (``api.vehicle``...) of the running simulation

    def start(self, sumocfg: Path, seed: int) -> None:
        raise NotImplementedError

    def step(self) -> None:
        self.api.simulationStep()

    def close(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.api is not None

    def __enter__(self) -> "SimBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: modules may be gone already
            pass


class LibsumoBackend(SimBackend):
    """SUMO inside this process. Only one may be running per process."""

    name: BackendName = "libsumo"
    _owner: "LibsumoBackend | None" = None  # the instance whose simulation is live

    def start(self, sumocfg: Path, seed: int) -> None:
        self.close()
        owner = LibsumoBackend._owner
        if owner is not None and owner is not self:
            raise SimulationError(
                "a libsumo simulation is already running in this process (libsumo holds one per process); "
                "close it first, run each env in its own process (SubprocVecEnv), or use backend='traci'"
            )
        import libsumo

        config = read_sumocfg(Path(sumocfg))
        sumo_binary()  # sets SUMO_HOME and PROJ_LIB before SUMO reads them
        try:
            libsumo.start([sumo_binary("sumo"), *sumo_args(config, seed)])
        except Exception as exc:  # noqa: BLE001 - libsumo raises its own TraCIException type
            _close_libsumo_quietly()
            raise SimulationError(f"SUMO could not load {sumocfg}: {exc}") from None
        LibsumoBackend._owner = self
        self.api = libsumo

    def close(self) -> None:
        if self.api is not None:
            self.api = None
            LibsumoBackend._owner = None
            _close_libsumo_quietly()


def _close_libsumo_quietly() -> None:
    import libsumo

    try:
        libsumo.close()
    except Exception:  # noqa: BLE001 - "not connected" after a failed start is expected
        pass


class TraciBackend(SimBackend):
    """SUMO (or ``sumo-gui``) as a child process, driven over a loopback TraCI socket."""

    name: BackendName = "traci"
    connect_timeout_s = 10.0

    def __init__(self, binary: str = "sumo") -> None:
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, sumocfg: Path, seed: int) -> None:
        import traci.connection

        self.close()
        config = read_sumocfg(Path(sumocfg))
        last_error: Exception | None = None
        for _ in range(3):  # a free port can be taken by someone else before SUMO binds it
            port = _free_port()
            self.process = subprocess.Popen(
                [sumo_binary(self.binary), *sumo_args(config, seed), "--remote-port", str(port)],
                env=sumo_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            # traci.start sleeps a fixed second before its first try; poll every 10 ms instead.
            deadline = time.monotonic() + self.connect_timeout_s
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    self.api = traci.connection.Connection("localhost", port, self.process, None, False, None)
                except OSError as exc:
                    last_error = exc
                    time.sleep(0.01)
                    continue
                try:  # SUMO accepts the connection before loading; a failed load shows on the first command
                    self.api.getVersion()
                    return
                except Exception:  # noqa: BLE001 - traci's FatalTraCIError: SUMO gave up while loading
                    self.api = None
                    stderr = self._reap().strip()[-500:]
                    raise SimulationError(
                        f"SUMO could not load {sumocfg}: {stderr or 'it closed the TraCI connection while loading'}"
                    ) from None
            stderr = self._reap()
            if stderr:
                raise SimulationError(f"SUMO could not load {sumocfg}: {stderr.strip()[-500:]}")
        raise SimulationError(f"could not connect to SUMO over TraCI for {sumocfg}: {last_error}")

    def close(self) -> None:
        if self.api is not None:
            api, self.api = self.api, None
            try:
                api.close()
            except Exception:  # noqa: BLE001 - the process may have died; it is reaped below
                pass
        self._reap()

    def _reap(self) -> str:
        """Stop the child (if any) and wait for it; returns what it wrote to stderr."""
        proc, self.process = self.process, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return (err or b"").decode(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # getsockname() is typed Any: (host, port) for AF_INET
        return port


def make_backend(name: BackendName = "libsumo", gui: bool = False) -> SimBackend:
    """The backend called ``name``; ``gui`` runs ``sumo-gui`` (TraCI only)."""
    if name == "libsumo":
        if gui:
            raise ValueError("backend='libsumo' cannot show sumo-gui; use backend='traci' with gui=True")
        return LibsumoBackend()
    if name == "traci":
        return TraciBackend("sumo-gui" if gui else "sumo")
    raise ValueError(f"backend: {name!r} is not a SUMO backend; choose 'libsumo' or 'traci'")
