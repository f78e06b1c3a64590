"""Start, step and stop one SUMO simulation, in-process (libsumo) or as a TraCI subprocess.

Both backends expose the same TraCI API object as ``backend.api`` (``api.vehicle``,
``api.simulation``...), so the env calls SUMO directly with no wrapper in the hot path.

* :class:`LibsumoBackend` (default): SUMO runs inside this process, 40-100x faster than
  TraCI. libsumo holds one simulation per process, so a second live instance is refused.
* :class:`TraciBackend`: SUMO runs as a child process on a loopback port; needed for
  ``sumo-gui`` and debugging. The process is always reaped on close or on a failed start.
"""

from __future__ import annotations

import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

from roadsense.sim.sumo_home import sumo_binary, sumo_env

BackendName = Literal["libsumo", "traci"]


class SimulationError(RuntimeError):
    """SUMO failed to start or failed during a step; the message names the scenario."""


def sumo_args(sumocfg: Path, seed: int) -> list[str]:
    """Command-line options shared by both backends.

    Collisions and teleports are left to the env (ground-truth gap), so SUMO must neither
    remove colliding cars nor teleport a stuck one; no output files are written.
    """
    return [
        "-c", str(sumocfg),
        "--seed", str(seed),
        "--step-length", "0.1",
        "--no-step-log", "true",
        "--no-warnings", "true",
        "--time-to-teleport", "-1",
        "--collision.action", "none",
        "--collision.check-junctions", "false",
        "--duration-log.disable", "true",
    ]


_INPUT_KEYS = ("net-file", "route-files", "additional-files")


def check_sumocfg(sumocfg: Path) -> None:
    """Fail clearly, naming the problem, on a missing or unreadable config or a missing input file.

    libsumo reports only "Process Error" for a missing net file (SUMO's own message goes to
    stderr), and over TraCI SUMO accepts the connection before it loads the net, so both
    backends check the inputs here first.
    """
    sumocfg = Path(sumocfg)
    if not sumocfg.is_file():
        raise SimulationError(f"SUMO config {sumocfg} does not exist")
    try:
        root = ET.parse(sumocfg).getroot()
    except ET.ParseError as exc:
        raise SimulationError(f"SUMO config {sumocfg} is not valid XML ({exc})") from None
    for element in root.iter():
        if element.tag in _INPUT_KEYS:
            for name in (element.get("value") or "").split(","):
                if name.strip() and not (sumocfg.parent / name.strip()).is_file():
                    raise SimulationError(
                        f"SUMO config {sumocfg}: its {element.tag} {name.strip()!r} does not exist "
                        f"(looked for {sumocfg.parent / name.strip()})"
                    )


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

        check_sumocfg(sumocfg)
        sumo_binary()  # sets SUMO_HOME and PROJ_LIB before SUMO reads them
        try:
            libsumo.start([sumo_binary("sumo"), *sumo_args(Path(sumocfg), seed)])
        except Exception as exc:  # libsumo raises its own TraCIException type
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
        check_sumocfg(sumocfg)
        last_error: Exception | None = None
        for _ in range(3):  # a free port can be taken by someone else before SUMO binds it
            port = _free_port()
            self.process = subprocess.Popen(
                [sumo_binary(self.binary), *sumo_args(Path(sumocfg), seed), "--remote-port", str(port)],
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
        return sock.getsockname()[1]


def make_backend(name: BackendName = "libsumo", gui: bool = False) -> SimBackend:
    """The backend called ``name``; ``gui`` runs ``sumo-gui`` (TraCI only)."""
    if name == "libsumo":
        if gui:
            raise ValueError("backend='libsumo' cannot show sumo-gui; use backend='traci' with gui=True")
        return LibsumoBackend()
    if name == "traci":
        return TraciBackend("sumo-gui" if gui else "sumo")
    raise ValueError(f"backend: {name!r} is not a SUMO backend; choose 'libsumo' or 'traci'")
