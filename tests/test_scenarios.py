"""Scenario generation, datasets and selection, against the real SUMO of the wheel."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

import roadsense.v2v
from roadsense.cli import app
from roadsense.config import DatasetConfig
from roadsense.evaluation.matrix import plan_matrix
from roadsense.scenarios import (
    Dataset,
    DatasetError,
    InvariantError,
    ScenarioManager,
    builtin_scenario,
    generate_dataset,
    verify_dataset,
)
from roadsense.scenarios import scenario as scenario_module
from roadsense.scenarios.generate import write_scenario
from roadsense.scenarios.invariants import check_routes
from roadsense.scenarios.network import EDGE_ID, build_network
from roadsense.scenarios.scenario import PEER_SPACING_M, SPLITS, ScenarioSpec, VehicleType, depart_positions, train_specs
from roadsense.sim.sumo_home import sumo_binary

SHIPPED_PARAMS = Path(roadsense.v2v.__file__).parent / "espnow_params.json"
SMALL = DatasetConfig(train_count=10, val_count=5, eval_count=10, dataset_seed=3, val_dataset_seed=5, eval_dataset_seed=4)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-in scenarios go to a throwaway cache, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = tmp_path_factory.mktemp("params") / "params.json"
    params.write_text(json.dumps({**json.loads(SHIPPED_PARAMS.read_text()), "gps_noise_m": 1.5}))
    return generate_dataset(tmp_path_factory.mktemp("ds") / "small", SMALL, "params-hash", emulator_params_file=params)


@pytest.fixture
def dataset_copy(small_dataset: Path, tmp_path: Path) -> Path:
    """A private copy to tamper with."""
    return Path(shutil.copytree(small_dataset, tmp_path / "copy"))


def _first_step(sumocfg: Path) -> dict[str, tuple[str, float]]:
    """Start SUMO on ``sumocfg``, run one step, return ``{vehicle: (edge, position m)}``."""
    import libsumo  # one libsumo simulation per process: always closed before the next

    libsumo.start([sumo_binary("sumo"), "-c", str(sumocfg)])
    try:
        libsumo.simulationStep()
        return {v: (libsumo.vehicle.getRoadID(v), libsumo.vehicle.getLanePosition(v)) for v in libsumo.vehicle.getIDList()}
    finally:
        libsumo.close()


def test_every_scenario_loads_with_the_convoy_in_formation(small_dataset: Path) -> None:
    """Every car is on the road after one step, peers ahead at the front-to-front spacing (50 m for one peer)."""
    dataset = Dataset.open(small_dataset)
    configs = [(dataset.sumocfg(s, i), dataset.peer_count(s, i)) for s in SPLITS for i in dataset.ids(s)]
    configs.append((builtin_scenario(n_peers=3, road="curved"), 3))
    for sumocfg, peers in configs:
        vehicles = _first_step(sumocfg)
        assert sorted(vehicles) == [f"V{i:03d}" for i in range(1, peers + 2)], sumocfg
        assert {edge for edge, _ in vehicles.values()} == {EDGE_ID}
        positions = [vehicles[f"V{i:03d}"][1] for i in range(1, peers + 2)]
        # getLanePosition is the front bumper, as departPos: neighbours sit one spacing apart.
        spacings = [b - a for a, b in itertools.pairwise(positions)]
        assert spacings == pytest.approx([PEER_SPACING_M[peers]] * peers, abs=0.5), sumocfg


def test_spacing_is_front_to_front() -> None:
    assert depart_positions(1) == [10.0, 60.0]  # 50 m front to front: inside the 50 m radio range
    assert depart_positions(5) == [10.0 + 25.0 * i for i in range(6)]


def test_the_tightest_draw_still_departs_every_car_at_zero(tmp_path: Path) -> None:
    """Longest headway, weakest brakes, closest spacing: SUMO must still insert every car at t = 0."""
    cfg = DatasetConfig()
    slowest = VehicleType(speed_factor=cfg.speed_factor_range[0], sigma=0.0, decel=cfg.decel_range[0], tau=cfg.tau_range[1])
    for peers in range(1, 6):
        spec = ScenarioSpec(f"tight-{peers}", "eval", peers, "straight", slowest)
        write_scenario(tmp_path / spec.scenario_id, spec, build_network("straight"), cfg.scenario_end_s)
        assert len(_first_step(tmp_path / spec.scenario_id / "scenario.sumocfg")) == peers + 1


def test_generation_is_deterministic_and_fast(tmp_path: Path) -> None:
    """Production size (25 train + 20 val + 40 eval), twice: identical bytes, same manifest but created_at."""
    manifests = []
    for name in ("a", "b"):
        start = time.perf_counter()
        root = generate_dataset(tmp_path / name, DatasetConfig(), "params-hash")
        assert time.perf_counter() - start < 20.0
        manifest = json.loads((root / "manifest.json").read_text())
        manifest.pop("created_at")
        manifests.append(manifest)
    assert manifests[0] == manifests[1]
    assert len(manifests[0]["files"]) == 3 * 85
    for relative, digest in manifests[0]["files"].items():
        assert _sha256(tmp_path / "a" / relative) == _sha256(tmp_path / "b" / relative) == digest, relative


def test_different_seeds_give_different_scenarios() -> None:
    draws = {seed: train_specs(DatasetConfig(dataset_seed=seed, train_count=5)) for seed in (1, 2)}
    assert draws[1] != draws[2]
    assert train_specs(DatasetConfig(dataset_seed=1, train_count=5)) == draws[1]


def test_eval_peer_counts_are_balanced(small_dataset: Path) -> None:
    dataset = Dataset.open(small_dataset)
    counts = Counter(dataset.peer_count("eval", i) for i in dataset.ids("eval"))
    assert counts == {1: 2, 2: 2, 3: 2, 4: 2, 5: 2}
    assert dataset.manifest["splits"]["eval"]["peer_count_distribution"] == {str(n): 2 for n in range(1, 6)}


def test_val_split_is_balanced_seeded_on_its_own_and_disjoint_from_eval(small_dataset: Path) -> None:
    dataset = Dataset.open(small_dataset)
    val, evaluation = dataset.ids("val"), dataset.ids("eval")
    assert val == [f"val-{i:04d}" for i in range(5)] and not set(val) & set(evaluation)
    assert [dataset.peer_count("val", i) for i in val] == [1, 2, 3, 4, 5]
    manifest = dataset.manifest
    assert manifest["seeds"] == {"dataset_seed": 3, "val_dataset_seed": 5, "eval_dataset_seed": 4}
    assert manifest["splits"]["val"]["peer_count_distribution"] == {str(n): 1 for n in range(1, 6)}
    cars = {s: [e["vehicle_type"] for e in manifest["splits"][s]["scenarios"][:5]] for s in ("val", "eval")}
    assert cars["val"] != cars["eval"]  # own seed: not the eval scenarios again
    assert all(f"val/{i}/routes.rou.xml" in manifest["files"] for i in val)
    # Served exactly like eval: in order, cycling, and as a matrix.
    manager = ScenarioManager(dataset, "val", seed=9)
    assert [manager.next()[0] for _ in range(10)] == val + val
    plan = plan_matrix(dataset, 2, 7, split="val")
    assert len(plan) == 2 * 15 and {spec.scenario_id for spec in plan} == set(val)


@pytest.mark.parametrize(
    ("seeds", "named"),
    [
        ({"val_dataset_seed": 1042}, "val_dataset_seed and eval_dataset_seed are both 1042"),
        ({"dataset_seed": 2042}, "dataset_seed and val_dataset_seed are both 2042"),
        ({"dataset_seed": 1042}, "dataset_seed and eval_dataset_seed are both 1042"),
    ],
)
def test_config_refuses_a_split_seed_shared_with_another(seeds: dict[str, int], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        DatasetConfig(**seeds)


@pytest.mark.parametrize(("drop_prob", "expected_mean"), [(0.0, 5.0), (0.4, 3.0), (0.9, 1.0)])
def test_train_dropout_keeps_at_least_one_peer(drop_prob: float, expected_mean: float) -> None:
    specs = train_specs(DatasetConfig(train_count=2000, peer_drop_prob=drop_prob))
    counts = [s.peer_count for s in specs]
    assert min(counts) >= 1 and max(counts) <= 5
    assert sum(counts) / len(counts) == pytest.approx(expected_mean, abs=0.15)


def test_a_sound_dataset_verifies_and_ships_its_emulator_params(small_dataset: Path) -> None:
    assert verify_dataset(small_dataset) == []
    dataset = Dataset.open(small_dataset)
    assert dataset.dataset_id == dataset.manifest["dataset_id"]
    assert dataset.emulator_params is not None
    assert json.loads(dataset.emulator_params.read_text())["gps_noise_m"] == 1.5
    assert "emulator_params.json" in dataset.manifest["files"]


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _rename_first_train_id(manifest: dict, new_id: str) -> None:
    manifest["splits"]["train"]["scenarios"][0]["id"] = new_id


def _tamper(root: Path, how: str) -> str:
    """Damage the dataset copy at ``root``; return a phrase the problem report must contain."""
    routes = root / "train" / "train-0000" / "routes.rou.xml"
    if how == "modified file":
        routes.write_text(routes.read_text().replace('departPos="10.00"', 'departPos="11.00"'))
        return "train/train-0000/routes.rou.xml: sha256 does not match"
    if how == "missing file":
        (root / "eval" / "eval-0003" / "network.net.xml").unlink()
        return "eval/eval-0003/network.net.xml: missing"
    if how == "unlisted file":
        (root / "train" / "extra.xml").write_text("<x/>")
        return "train/extra.xml: not listed"
    if how == "parent id":
        _edit_manifest(root, lambda m: _rename_first_train_id(m, "../../etc"))
        return "'../../etc' is not a plain folder name"
    if how == "absolute path":
        _edit_manifest(root, lambda m: m["files"].update({"/etc/passwd": "0" * 64}))
        return "'/etc/passwd'"
    if how == "empty split":
        _edit_manifest(root, lambda m: m["splits"]["eval"].update(scenarios=[]))
        return "splits.eval: the split has no scenarios"
    if how == "non-JSON manifest":
        (root / "manifest.json").write_text("this is not json {")
        return "manifest.json: not valid JSON"
    if how == "peer behind the ego":
        # Consistent hashes, broken invariant: only the scenario check can catch it.
        routes.write_text(re.sub(r'(id="V002".*?departPos=")[^"]*', r"\g<1>5.00", routes.read_text()))
        _rehash(root, "train/train-0000/routes.rou.xml")
        return "V002 departs behind or inside the ego"
    if how == "old spacing":
        # A format-2 manifest over format-1 routes (55 m front to front for one peer).
        old = routes.read_text()
        positions = [float(x) for x in re.findall(r'departPos="([^"]*)"', old)]
        step = positions[1] - positions[0] + 5.0
        routes.write_text(re.sub(r'(id="V(\d+)".*?departPos=")[^"]*', lambda m: f"{m[1]}{10 + (int(m[2]) - 1) * step:.2f}", old))
        _rehash(root, "train/train-0000/routes.rou.xml")
        return "do not follow the front-to-front spacing"
    if how == "old spacing in the manifest":
        _edit_manifest(root, lambda m: m["spacing"]["metres_by_peer_count"].update({"1": 55.0}))
        return "spacing: not the spacing of this roadsense"
    if how in _SUMOCFG_EDITS:
        old_text, new_text, expected = _SUMOCFG_EDITS[how]
        sumocfg = root / "val" / "val-0001" / "scenario.sumocfg"
        assert old_text in sumocfg.read_text()
        sumocfg.write_text(sumocfg.read_text().replace(old_text, new_text))
        _rehash(root, "val/val-0001/scenario.sumocfg")
        return expected
    if how == "route element":
        routes.write_text(routes.read_text().replace("</routes>", '<additional><e1Detector id="d" file="/tmp/x"/></additional></routes>'))
        _rehash(root, "train/train-0000/routes.rou.xml")
        return "found routes: ['additional']"
    if how == "listed foreign file":
        (root / "eval" / "notes.txt").write_text("hi")
        _rehash(root, "eval/notes.txt")
        return "eval/notes.txt: not a file of the dataset format"
    if how == "huge net file":
        net = root / "eval" / "eval-0002" / "network.net.xml"
        net.write_bytes(net.read_bytes() + b" " * (9 << 20))
        _rehash(root, "eval/eval-0002/network.net.xml")
        return "over the 8388608-byte limit of a network.net.xml"
    if how == "invalid emulator params":
        params = root / "emulator_params.json"
        params.write_text(json.dumps({**json.loads(params.read_text()), "loss_prob": [0.1, 1.7]}))
        _rehash(root, "emulator_params.json")
        return "emulator_params.json: invalid emulator parameters: loss_prob"
    if how == "val id in eval":
        _edit_manifest(root, lambda m: m["splits"]["eval"]["scenarios"][-1].update(id="val-0000"))
        return "ids must start with their split's name"
    raise AssertionError(how)


def _rehash(root: Path, relative: str) -> None:
    """Record the current sha256 of a tampered file, so only the deeper checks can catch it."""
    _edit_manifest(root, lambda m: m["files"].update({relative: _sha256(root / relative)}))


# sumocfg edits: (text replaced, replacement, phrase the problem must contain).
_SUMOCFG_EDITS = {
    "sumocfg output": (
        "    </input>",
        '    </input>\n    <output>\n        <tripinfo-output value="tripinfo.xml"/>\n    </output>',
        "<output> is not allowed",
    ),
    "sumocfg additional": (
        "    </input>",
        '        <additional-files value="extra.add.xml"/>\n    </input>',
        "<input/additional-files> is not allowed",
    ),
    "sumocfg summary in report": (
        "    </report>",
        '        <summary-output value="summary.xml"/>\n    </report>',
        "<report/summary-output> is not allowed",
    ),
    "sumocfg path out": ('value="routes.rou.xml"', 'value="../../train/train-0000/routes.rou.xml"', "must be the plain name of a file"),
    "sumocfg end nan": ('<end value="65.0"/>', '<end value="nan"/>', "end = 'nan' must be 0..3600 s"),
    "sumocfg extra attribute": ('<begin value="0"/>', '<begin value="0" file="x"/>', "<time/begin> is not allowed"),
}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "how",
    [
        "modified file", "missing file", "unlisted file", "parent id", "absolute path", "empty split", "non-JSON manifest",
        "peer behind the ego", "old spacing", "old spacing in the manifest", *_SUMOCFG_EDITS, "route element",
        "listed foreign file", "huge net file", "invalid emulator params", "val id in eval",
    ],
)
def test_verify_refuses_a_damaged_dataset(dataset_copy: Path, how: str) -> None:
    expected = _tamper(dataset_copy, how)
    problems = verify_dataset(dataset_copy)
    assert any(expected in p for p in problems), problems
    with pytest.raises(DatasetError, match="does not verify"):
        Dataset.open(dataset_copy)


def test_train_selection_is_random_but_seeded(small_dataset: Path) -> None:
    dataset = Dataset.open(small_dataset)

    def draws(seed: int) -> list[str]:
        manager = ScenarioManager(dataset, "train", seed)
        return [manager.next()[0] for _ in range(50)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    assert len(set(draws(0))) < 50 and draws(0) != sorted(draws(0))  # with replacement, not in order
    assert set(draws(0)) <= set(dataset.ids("train"))


def test_eval_selection_is_sequential_and_cycles(small_dataset: Path) -> None:
    dataset = Dataset.open(small_dataset)
    manager = ScenarioManager(dataset, "eval", seed=123)
    ids = dataset.ids("eval")
    picks = [manager.next() for _ in range(2 * len(ids))]
    assert [scenario_id for scenario_id, _ in picks] == ids + ids
    assert picks[0][1] == dataset.sumocfg("eval", ids[0]) and picks[0][1].is_file()


def test_single_scenario_manager_uses_the_folder_name() -> None:
    sumocfg = builtin_scenario()
    manager = ScenarioManager.single(sumocfg)
    assert manager.next() == manager.next() == (sumocfg.parent.name, sumocfg.resolve())
    assert builtin_scenario() == sumocfg  # cached


def test_a_broken_invariant_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.rou.xml"
    bad.write_text('<routes><vehicle id="V002" depart="0"/><vehicle id="V001" depart="1"/></routes>')
    with pytest.raises(InvariantError, match="V001 must be the first vehicle"):
        check_routes(bad)
    # A generator bug (peers spaced backwards) stops generation and leaves nothing behind.
    monkeypatch.setattr(scenario_module, "PEER_SPACING_M", {n: -40.0 for n in range(1, 6)})
    with pytest.raises(InvariantError, match="behind or inside the ego"):
        generate_dataset(tmp_path / "out", SMALL, "params-hash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.rou.xml"]


def test_generate_refuses_a_non_empty_output(small_dataset: Path) -> None:
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(small_dataset, SMALL, "params-hash")
    result = CliRunner().invoke(app, ["generate", "--output", str(small_dataset), "--preset", "smoke"])
    assert result.exit_code == 2 and "--output" in result.output and "not empty" in result.output


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--train-count", "-1"], "train_count"),
        (["--eval-count", "0"], "eval_count"),
        (["--peer-drop-prob", "1.5"], "peer_drop_prob"),
        (["--seed", "-3"], "dataset_seed"),
        (["--set", "dataset_seed=-3"], "dataset_seed"),
    ],
)
def test_generate_cli_names_the_setting_of_a_bad_value(tmp_path: Path, args: list[str], key: str) -> None:
    result = CliRunner().invoke(app, ["generate", "--output", str(tmp_path / "ds"), *args])
    assert result.exit_code == 2
    assert f"{key}: " in result.output
    assert not (tmp_path / "ds").exists()


def test_generate_flags_set_the_dataset_seeds_not_the_episode_seeds(tmp_path: Path) -> None:
    """--seed, --val-seed and --eval-seed are aliases of dataset_seed, val_dataset_seed and eval_dataset_seed:
    the same dataset either way. Catches an alias mapped to the PPO or episode seed of the same short name."""
    runner = CliRunner()
    sizes = ["--preset", "smoke", "--set", "train_count=2"]
    aliases = ["--seed", "7", "--val-seed", "8", "--eval-seed", "9", "--peer-drop-prob", "0.2"]
    settings = ["--set", "dataset_seed=7", "--set", "val_dataset_seed=8", "--set", "eval_dataset_seed=9",
                "--set", "peer_drop_prob=0.2"]
    for name, args in (("aliases", aliases), ("settings", settings)):
        result = runner.invoke(app, ["generate", "--output", str(tmp_path / name), *sizes, *args])
        assert result.exit_code == 0, result.output
    by_alias, by_setting = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("aliases", "settings"))
    assert by_alias["seeds"] == {"dataset_seed": 7, "val_dataset_seed": 8, "eval_dataset_seed": 9}
    assert by_alias["config"]["peer_drop_prob"] == 0.2
    assert by_alias["dataset_id"] == by_setting["dataset_id"]


def test_generate_refuses_a_setting_it_does_not_read(tmp_path: Path) -> None:
    # `seed` is PPO's: a dataset would silently ignore it, so it is refused, naming the keys generate reads.
    result = CliRunner().invoke(app, ["generate", "--output", str(tmp_path / "ds"), "--set", "seed=3"])
    assert result.exit_code == 2 and "--set seed: not read" in result.output and "dataset_seed" in result.output
    assert not (tmp_path / "ds").exists()


def test_generate_cli_refuses_invalid_emulator_params(tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({**json.loads(SHIPPED_PARAMS.read_text()), "loss_prob": [0.1, 1.7]}))
    result = CliRunner().invoke(app, ["generate", "--output", str(tmp_path / "ds"), "--emulator-params", str(params)])
    assert result.exit_code == 2 and str(params) in result.output and "loss_prob" in result.output
    assert not (tmp_path / "ds").exists()


def test_cli_generates_and_verifies(tmp_path: Path, dataset_copy: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ds"
    args = ["generate", "--output", str(out), "--train-count", "2", "--val-count", "5", "--val-seed", "77", "--eval-count", "5",
            "--emulator-params", str(SHIPPED_PARAMS)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["dataset", "verify", str(out)]).exit_code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["eval", "train", "val"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"]["val_dataset_seed"] == 77
    assert manifest["emulator_params_hash"] == roadsense.v2v.params_hash(roadsense.v2v.load_params(None))
    expected = _tamper(dataset_copy, "modified file")
    result = runner.invoke(app, ["dataset", "verify", str(dataset_copy)])
    assert result.exit_code == 1 and expected in result.output


def _one_line_refusal(root: Path) -> str:
    """The DatasetError of ``root``, checked to be a single line; returns it."""
    with pytest.raises(DatasetError) as err:
        Dataset.open(root)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_format_1_dataset_is_refused_in_one_line_naming_the_old_spacing(dataset_copy: Path) -> None:
    _edit_manifest(dataset_copy, lambda m: m.update(format_version=1))
    message = _one_line_refusal(dataset_copy)
    assert "old spacing rule" in message and "regenerate it with `roadsense generate`" in message
    result = CliRunner().invoke(app, ["dataset", "verify", str(dataset_copy)])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "old spacing rule" in result.output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (lambda: '{"format_version": 2, "pad": "' + "x" * (5 << 20) + '"}', "over the 4194304-byte limit"),
        (lambda: '{"format_version": 2, "config": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        (lambda: '{"format_version": "' + "9" * 100_000 + '"}', "is not 2, the format this roadsense reads"),
    ],
    ids=["huge", "deep", "long value"],
)
def test_a_hostile_manifest_is_one_short_line(dataset_copy: Path, content, expected: str) -> None:
    (dataset_copy / "manifest.json").write_text(content())
    problems = verify_dataset(dataset_copy)
    assert len(problems) == 1 and expected in problems[0] and len(problems[0]) < 400, problems
    assert len(_one_line_refusal(dataset_copy)) < 600


def test_a_long_problem_list_is_cut_short(dataset_copy: Path) -> None:
    for i in range(30):
        (dataset_copy / "train" / f"extra-{i:02d}.xml").write_text("<x/>")
    with pytest.raises(DatasetError) as err:
        Dataset.open(dataset_copy)
    lines = str(err.value).splitlines()
    assert "(30 problems)" in lines[0] and len(lines) == 1 + 20 + 1 and lines[-1] == "  - ... and 10 more"


def _link(root: Path, how: str) -> str:
    """Plant a symlink of kind ``how`` in the dataset at ``root``; return its relative path."""
    if how == "file inside":
        target = root / "train" / "train-0000" / "routes.rou.xml"
        (root / "train" / "train-0000" / "real.xml").write_bytes(target.read_bytes())
        target.unlink()
        target.symlink_to("real.xml")
        return "train/train-0000/routes.rou.xml"
    if how == "folder pointing out":
        (root / "eval" / "outside").symlink_to(root.parent, target_is_directory=True)
        return "eval/outside"
    if how == "folder self-loop":
        (root / "val" / "loop").symlink_to("..", target_is_directory=True)
        return "val/loop"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["file inside", "folder pointing out", "folder self-loop"])
def test_verify_refuses_every_symlink(dataset_copy: Path, how: str) -> None:
    relative = _link(dataset_copy, how)
    problems = verify_dataset(dataset_copy)
    assert f"{relative}: a symlink; a dataset holds only plain files and folders (regenerate it)" in problems, problems


def test_a_run_never_copies_through_a_symlink_and_leaves_no_temp_folder(dataset_copy: Path, tmp_path: Path) -> None:
    from roadsense.pipeline import RunPaths, _prepare_dataset
    from tests.conftest import tiny_config

    paths = RunPaths.under(tmp_path / "run")
    paths.output.mkdir()
    _link(dataset_copy, "folder self-loop")
    with pytest.raises(DatasetError, match="val/loop: a symlink"):
        _prepare_dataset(paths, tiny_config(), dataset_copy)
    assert list(paths.output.iterdir()) == []
    (dataset_copy / "val" / "loop").unlink()
    opened = _prepare_dataset(paths, tiny_config(), dataset_copy)
    assert opened.root == paths.dataset.resolve() and verify_dataset(paths.dataset) == []
    assert sorted(p.name for p in paths.output.iterdir()) == ["dataset"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--val-seed", "1042"], "val_dataset_seed and eval_dataset_seed are both 1042"),
        (["--seed", "2042"], "dataset_seed and val_dataset_seed are both 2042"),
        (["--val-count", "3"], "val_count: Input should be greater than or equal to 5 (got 3)"),
    ],
)
def test_generate_cli_names_the_val_settings(tmp_path: Path, args: list[str], named: str) -> None:
    result = CliRunner().invoke(app, ["generate", "--output", str(tmp_path / "ds"), *args])
    assert result.exit_code == 2 and named in result.output, result.output
    assert not (tmp_path / "ds").exists()
