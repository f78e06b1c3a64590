"""Failures you can see: traces of collisions and near-misses in report.md, and `roadsense replay`.

The evaluation here is real SUMO on the tiny dataset with the never-brake baseline, which
collides often, so there are collisions to trace without training a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from roadsense.cli import app
from roadsense.evaluation.evaluate import evaluate
from roadsense.evaluation.traces import MAX_TRACED, NEAR_MISS_GAP_M, REPRODUCED_KEYS, TRACE_COLUMNS, failure_section, select_failures
from roadsense.training.train import train
from tests.conftest import tiny_config


def _episode(bucket_n: int, episode: int, collision: bool, gap: float | None, sim_error: str | None = None) -> dict:
    return {"bucket_n": bucket_n, "bucket_k": 1, "episode": episode, "scenario_id": f"eval-000{bucket_n}",
            "seed": 100 + episode, "collision": collision, "min_gap_post_hazard_m": gap, "sim_error": sim_error,
            "hazard_received": True, "reaction_time_s": None, "steps": 10}


def test_failures_are_collisions_first_then_the_closest_near_misses_up_to_the_cap() -> None:
    episodes = [_episode(1, 0, False, 9.0), _episode(1, 1, True, 4.0), _episode(1, 2, False, 30.0),
                _episode(1, 3, False, 6.5), _episode(1, 4, False, 2.0, sim_error="SUMO failed"),
                _episode(1, 5, True, 4.9), _episode(1, 6, False, NEAR_MISS_GAP_M)]
    chosen = select_failures(episodes)
    assert [e["episode"] for e in chosen] == [1, 5, 3, 0]  # a SUMO error and a gap of exactly 10 m are not near-misses
    many = [_episode(1, i, True, 1.0) for i in range(MAX_TRACED + 3)]
    assert len(select_failures(many)) == MAX_TRACED
    # Collisions are spread over buckets: bucket 1's second collision comes after bucket 2's first.
    spread = [_episode(1, 0, True, 1.0), _episode(1, 1, True, 1.0), _episode(2, 0, True, 1.0)]
    assert [(e["bucket_n"], e["episode"]) for e in select_failures(spread)] == [(1, 0), (2, 0), (1, 1)]


def test_the_section_says_so_when_there_is_nothing_to_show() -> None:
    text = "\n".join(failure_section("rule-based", [_episode(1, 0, False, 25.0)], [], [], 0.0))
    assert "## Collisions and near-misses" in text
    assert f"under {NEAR_MISS_GAP_M:g} m after the hazard" in text
    assert "None: rule-based had no collision and no near-miss in 1 episodes." in text


@pytest.fixture(scope="module")
def evaluated(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """never-brake on the 15-bucket matrix (one episode each), evaluated with libsumo."""
    out = tmp_path_factory.mktemp("never-brake")
    evaluate("never-brake", tiny_dataset, out, tiny_config(), baselines=())
    return out


def _episodes(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]


def _trace(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_the_report_traces_each_collision_and_the_rerun_reproduces_it(evaluated: Path) -> None:
    episodes = _episodes(evaluated)
    collisions = [e for e in episodes if e["collision"]]
    assert collisions, "never-brake should collide in the tiny matrix; without collisions this test proves nothing"
    report = (evaluated / "report.md").read_text()
    assert "## Collisions and near-misses" in report and "**no**" not in report
    for e in select_failures(episodes):
        stem = f"n{e['bucket_n']}_k{e['bucket_k']}-e{e['episode']}"
        assert f"](traces/{stem}.png)" in report
        assert (evaluated / "traces" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        trace = _trace(evaluated / "traces" / f"{stem}.json")
        # The re-run is the evaluated episode: the same outcome, exactly.
        assert {k: trace["summary"][k] for k in REPRODUCED_KEYS} == {k: e[k] for k in REPRODUCED_KEYS}
        assert trace["summary"]["reward"] == e["reward"] == sum(trace["steps"]["reward"])
        steps = trace["steps"]
        assert set(steps) == set(TRACE_COLUMNS) == set(trace["columns"])
        assert len(steps["step"]) == e["steps"]
        start = trace["episode"]["hazard_start_step"]
        post_hazard = [g for s, g in zip(steps["step"], steps["true_gap_m"], strict=True) if s > start]
        assert min(post_hazard) == e["min_gap_post_hazard_m"]
        assert (post_hazard[-1] < 5.0) == e["collision"]
        assert trace["episode"]["seed"] == e["seed"] and trace["episode"]["backend"] == "libsumo"
        assert max(steps["action"]) == 0.0  # never-brake
        assert sum(steps["messages_received"]) > 0
        assert not any(steps["hazard_message"][: start])  # no hazard peer before the hazard
        if e["hazard_received"]:
            assert any(steps["hazard_message"])


@pytest.mark.slow
def test_replay_over_traci_reproduces_the_evaluated_episode_step_for_step(evaluated: Path, tiny_dataset: Path,
                                                                           tmp_path: Path) -> None:
    e = next(e for e in _episodes(evaluated) if e["collision"])
    bucket, stem = f"n{e['bucket_n']}_k{e['bucket_k']}", f"n{e['bucket_n']}_k{e['bucket_k']}-e{e['episode']}"
    evaluated_trace = _trace(evaluated / "traces" / f"{stem}.json")

    by_run = CliRunner().invoke(app, ["replay", "--run", str(evaluated), "--bucket", bucket,
                                      "--episode", str(e["episode"]), "--output", str(tmp_path / "a")])
    assert by_run.exit_code == 0, by_run.output
    assert "collision" in by_run.output
    replayed = _trace(tmp_path / "a" / f"{stem}.json")
    assert replayed["episode"]["backend"] == "traci"
    assert replayed["steps"] == evaluated_trace["steps"]
    assert {k: replayed["summary"][k] for k in REPRODUCED_KEYS} == {k: e[k] for k in REPRODUCED_KEYS}
    assert (tmp_path / "a" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"

    explicit = CliRunner().invoke(app, [
        "replay", "--policy", "never-brake", "--dataset", str(tiny_dataset), "--scenario", e["scenario_id"],
        "--seed", str(e["seed"]), "--hazard-rank", str(e["bucket_k"]), "--output", str(tmp_path / "b"),
        "--preset", "smoke", "--set", "episode_steps=150", "--set", "hazard_step=60"])
    assert explicit.exit_code == 0, explicit.output
    again = _trace(tmp_path / "b" / f"{e['scenario_id']}-seed{e['seed']}-k{e['bucket_k']}.json")
    assert again["steps"] == evaluated_trace["steps"]


@pytest.fixture
def fake_run(tiny_dataset: Path, tmp_path: Path) -> Path:
    """An evaluation folder's replay.json and episodes.jsonl (one bucket, episodes 0..1), written by hand."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "replay.json").write_text(json.dumps({"policy": "never-brake", "dataset": str(tiny_dataset),
                                                 "env": tiny_config().env.model_dump(mode="json")}))
    lines = [json.dumps({**_episode(2, i, False, 20.0), "bucket_k": 1, "scenario_id": "eval-0001"}) for i in range(2)]
    (run / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    return run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bucket", "n5_k9", "--episode", "0"], "--bucket 'n5_k9': not a bucket of"),
        (["--bucket", "n2_k1", "--episode", "2"], "--episode 2: bucket n2_k1 of"),
        (["--bucket", "n2_k1"], "--run needs --bucket"),
        (["--bucket", "n2_k1", "--episode", "0", "--seed", "3"], "drop --seed"),
    ],
)
def test_replay_refuses_a_bad_run_address(fake_run: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["replay", "--run", str(fake_run), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_replay_says_how_to_go_on_when_the_evaluated_model_is_gone(fake_run: Path) -> None:
    record = json.loads((fake_run / "replay.json").read_text())
    (fake_run / "replay.json").write_text(json.dumps({**record, "policy": "model.zip"}))
    result = CliRunner().invoke(app, ["replay", "--run", str(fake_run), "--bucket", "n2_k1", "--episode", "1"])
    assert result.exit_code == 2
    assert "model.zip is gone; replay with --model PATH" in result.output and "--seed 101" in result.output


def test_replay_refuses_a_folder_that_is_not_an_evaluation(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["replay", "--run", str(tmp_path), "--bucket", "n1_k1", "--episode", "0"])
    assert result.exit_code == 2 and "no replay.json" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "eval-9999", "--hazard-rank", "1"], "--scenario 'eval-9999': not in the eval split"),
        (["--scenario", "eval-0000", "--hazard-rank", "4"], "--hazard-rank 4: eval-0000 has 1 peer(s) ahead"),
        (["--scenario", "eval-0000"], "--hazard-rank missing"),
    ],
)
def test_replay_refuses_a_bad_explicit_address(tiny_dataset: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["replay", "--policy", "rule-based", "--dataset", str(tiny_dataset),
                                      "--seed", "1", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_replay_gui_without_a_display_is_a_clear_error(fake_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    result = CliRunner().invoke(app, ["replay", "--run", str(fake_run), "--bucket", "n2_k1", "--episode", "0", "--gui"])
    assert result.exit_code == 2
    assert "--gui: no display (DISPLAY is not set)" in result.output


@pytest.mark.slow
def test_a_trained_model_replays_over_traci_as_it_was_evaluated(tiny_dataset: Path, tmp_path: Path) -> None:
    model = train(tiny_dataset, tmp_path / "train", tiny_config()).model_path
    evaluate(str(model), tiny_dataset, tmp_path / "eval", tiny_config(), baselines=())
    replay = json.loads((tmp_path / "eval" / "replay.json").read_text())
    assert Path(replay["policy"]).is_absolute()  # the model lives outside the evaluation folder
    for e in _episodes(tmp_path / "eval")[-2:]:  # the five-peer buckets: the most messages to act on
        result = CliRunner().invoke(app, ["replay", "--run", str(tmp_path / "eval"), "--bucket",
                                          f"n{e['bucket_n']}_k{e['bucket_k']}", "--episode", str(e["episode"])])
        assert result.exit_code == 0, result.output
        replayed = _trace(tmp_path / "eval" / "replays" / f"n{e['bucket_n']}_k{e['bucket_k']}-e{e['episode']}.json")
        assert {k: replayed["summary"][k] for k in (*REPRODUCED_KEYS, "reward")} == \
            {k: e[k] for k in (*REPRODUCED_KEYS, "reward")}
        assert replayed["episode"]["policy_label"] == "model model.zip"
