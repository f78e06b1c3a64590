"""The SUMO backends against the real SUMO of the wheel: process hygiene, the libsumo singleton, bad configs."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from roadsense.scenarios.scenario import sumocfg_xml
from roadsense.sim.backend import (
    LibsumoBackend,
    SimulationError,
    SumocfgError,
    SumoConfig,
    TraciBackend,
    make_backend,
    parse_sumocfg,
)
from roadsense.sim.sumo_home import sumo_binary, sumo_env


@pytest.mark.slow
def test_no_sumo_process_survives_100_traci_resets(make_env, scenario_factory, sumo_children) -> None:
    assert sumo_children() == []
    env = make_env(scenario_factory(3), backend="traci", episode_steps=50, hazard_step=10, warmup_steps=0)
    env.reset(seed=0)
    for i in range(100):
        if i % 10 == 0:
            for _ in range(3):
                env.step(np.zeros(1, np.float32))
        env.reset()
        assert len(sumo_children()) == 1, f"after reset {i + 1}: {sumo_children()}"
    env.close()
    assert sumo_children() == []
    env.close()  # a second close is harmless
    assert sumo_children() == []


def test_traci_episode_end_and_failed_start_leave_no_process(make_env, scenario_factory, sumo_children, tmp_path) -> None:
    env = make_env(scenario_factory(1), backend="traci", episode_steps=12, hazard_step=5)
    env.reset(seed=1)
    assert len(sumo_children()) == 1
    truncated = False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        assert not terminated
    assert sumo_children() == []  # the episode's end closes SUMO

    broken = tmp_path / "broken.sumocfg"
    broken.write_text("<configuration><input><net-file value='x.net.xml'/></input>")  # unclosed
    with pytest.raises(SimulationError):
        TraciBackend().start(broken, seed=0)
    assert sumo_children() == []


def test_traci_reports_a_net_file_sumo_cannot_load(scenario_factory, sumo_children, tmp_path) -> None:
    """SUMO accepts the TraCI connection before it loads the net: the load error must still surface."""
    src = scenario_factory(1).parent
    for name in ("scenario.sumocfg", "routes.rou.xml"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "network.net.xml").write_text("<net><edge id='road'/></net>")  # XML, but not a usable network
    backend = TraciBackend()
    with pytest.raises(SimulationError, match="could not load.*closed the TraCI connection"):
        backend.start(tmp_path / "scenario.sumocfg", seed=0)
    assert not backend.running
    assert sumo_children() == []


def test_libsumo_refuses_a_second_live_simulation(scenario_factory) -> None:
    sumocfg = scenario_factory(2)
    first, second = LibsumoBackend(), LibsumoBackend()
    try:
        first.start(sumocfg, seed=0)
        first.step()
        with pytest.raises(SimulationError, match="already running.*one per process"):
            second.start(sumocfg, seed=0)
        assert not second.running
        # The refused start must not have touched the live simulation.
        assert "V001" in first.api.vehicle.getIDList()
        first.step()
        first.close()
        second.start(sumocfg, seed=0)  # free again once the first is closed
        second.step()
        assert second.running
    finally:
        second.close()
        first.close()


def test_libsumo_restart_by_the_same_owner_is_allowed(scenario_factory) -> None:
    backend = LibsumoBackend()
    try:
        backend.start(scenario_factory(1), seed=0)
        backend.start(scenario_factory(2), seed=0)  # closes its own first simulation
        backend.step()
        assert sorted(backend.api.vehicle.getIDList()) == ["V001", "V002", "V003"]
    finally:
        backend.close()


def test_make_backend_names() -> None:
    assert make_backend("libsumo").name == "libsumo"
    assert make_backend("traci").name == "traci"
    with pytest.raises(ValueError, match="'ode'"):
        make_backend("ode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sumo-gui"):
        make_backend("libsumo", gui=True)


def _nowhere(src: Path, folder: Path) -> Path:
    return folder / "nowhere.sumocfg"


def _not_xml(src: Path, folder: Path) -> Path:
    cfg = folder / "a.sumocfg"
    cfg.write_text("this is not XML <<<")
    return cfg


def _missing_net(src: Path, folder: Path) -> Path:
    shutil.copy(src.parent / "routes.rou.xml", folder / "routes.rou.xml")
    cfg = folder / "scenario.sumocfg"
    cfg.write_text(src.read_text().replace("network.net.xml", "missing.net.xml"))
    return cfg


@pytest.mark.parametrize("backend", [LibsumoBackend, TraciBackend])
@pytest.mark.parametrize(
    ("make_cfg", "problem"),
    [
        (_nowhere, "does not exist"),
        (_not_xml, "not valid XML"),
        (_missing_net, "missing.net.xml"),
    ],
    ids=["missing", "not-xml", "missing-net"],
)
def test_bad_config_is_a_clear_simulation_error(
    backend: Callable[[], object], make_cfg, problem: str, scenario_factory, tmp_path, sumo_children
) -> None:
    cfg = make_cfg(scenario_factory(1), tmp_path)
    sim = backend()
    with pytest.raises(SimulationError, match=problem) as err:
        sim.start(cfg, seed=0)  # type: ignore[attr-defined]
    assert str(cfg) in str(err.value)
    assert not sim.running  # type: ignore[attr-defined]
    assert sumo_children() == []
    # The failed start leaves nothing behind: the next simulation starts normally.
    good = LibsumoBackend()
    try:
        good.start(scenario_factory(1), seed=0)
        good.step()
    finally:
        good.close()


_OUTPUTS = (
    "    <output>\n"
    '        <tripinfo-output value="tripinfo.xml"/>\n'
    '        <summary-output value="summary.xml"/>\n'
    "    </output>\n"
)


def test_a_scenario_config_cannot_make_sumo_write_files(scenario_factory, tmp_path, sumo_children) -> None:
    """The backend reads the sumocfg through the allow-list and never hands SUMO the file itself."""
    src = scenario_factory(1).parent
    for name in ("network.net.xml", "routes.rou.xml"):
        shutil.copy(src / name, tmp_path / name)
    cfg = tmp_path / "scenario.sumocfg"
    cfg.write_text((src / "scenario.sumocfg").read_text().replace("</configuration>", _OUTPUTS + "</configuration>"))
    for backend in (LibsumoBackend(), TraciBackend()):
        with pytest.raises(SumocfgError, match=r"<output> is not allowed"):
            backend.start(cfg, seed=0)
        assert not backend.running
    assert sumo_children() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["network.net.xml", "routes.rou.xml", "scenario.sumocfg"]
    # What the refusal prevents: SUMO given the file itself writes both outputs.
    subprocess.run([sumo_binary("sumo"), "-c", str(cfg), "--end", "1"], cwd=tmp_path, env=sumo_env(), capture_output=True, check=True)
    assert {"tripinfo.xml", "summary.xml"} <= {p.name for p in tmp_path.iterdir()}


def test_the_written_sumocfg_is_exactly_what_the_allow_list_reads(tmp_path) -> None:
    cfg = tmp_path / "scenario.sumocfg"
    cfg.write_text(sumocfg_xml(65.0))
    assert parse_sumocfg(cfg) == SumoConfig(tmp_path / "network.net.xml", tmp_path / "routes.rou.xml", 0.0, 65.0)


def test_an_oversized_route_file_is_refused_before_sumo_reads_it(scenario_factory, tmp_path) -> None:
    src = scenario_factory(1).parent
    for name in ("network.net.xml", "scenario.sumocfg"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "routes.rou.xml").write_bytes((src / "routes.rou.xml").read_bytes() + b" " * (2 << 20))
    with pytest.raises(SimulationError, match="route-files 'routes.rou.xml' is over the 1048576-byte limit"):
        LibsumoBackend().start(tmp_path / "scenario.sumocfg", seed=0)
