"""Evaluation: the planned matrix, coverage checked first, results independent of worker count."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from roadsense.cli import app
from roadsense.evaluation.evaluate import evaluate
from roadsense.evaluation.matrix import CoverageError, plan_matrix
from roadsense.evaluation.metrics import RATES, compute_metrics, format_rate, rate_interval
from roadsense.evaluation.policies import load_model, model_act
from roadsense.evaluation.report import write_report
from roadsense.evaluation.stats import wilson_interval
from roadsense.scenarios.dataset import Dataset
from roadsense.scenarios.generate import generate_dataset
from roadsense.training.train import train
from roadsense.v2v import load_params, params_hash
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_model(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    return train(tiny_dataset, out, tiny_config()).model_path


def test_the_plan_covers_every_bucket_in_a_fixed_order(tiny_dataset: Path) -> None:
    plan = plan_matrix(Dataset.open(tiny_dataset), episodes_per_bucket=2, eval_seed=7)
    buckets = sorted({(s.n_peers, s.hazard_rank) for s in plan})
    assert buckets == [(n, k) for n in range(1, 6) for k in range(1, n + 1)]  # 15 buckets
    assert len(plan) == 30
    assert plan == plan_matrix(Dataset.open(tiny_dataset), episodes_per_bucket=2, eval_seed=7)
    assert len({s.seed for s in plan}) == len(plan)
    assert plan != plan_matrix(Dataset.open(tiny_dataset), episodes_per_bucket=2, eval_seed=8)


def test_an_impossible_matrix_fails_before_any_episode_runs(tmp_path: Path) -> None:
    config = tiny_config(eval_count=3)  # peer counts 1..3 only: no scenario for 4 or 5 peers
    dataset = generate_dataset(tmp_path / "ds", config.dataset, params_hash(load_params(None)))
    start = time.monotonic()
    with pytest.raises(CoverageError, match="4, 5 peer"):
        evaluate("never-brake", dataset, tmp_path / "eval", config)
    assert time.monotonic() - start < 5
    assert not (tmp_path / "eval" / "episodes.jsonl").exists()


def _episode(n: int, k: int, collision: bool, reward: float, reaction: float | None) -> dict:
    """One episode summary as the runner returns it, reduced to what metrics.py reads."""
    return {"bucket_n": n, "bucket_k": k, "collision": collision, "reward": reward, "sim_error": None,
            "hazard_received": True, "reaction": reaction is not None, "reaction_time_s": reaction,
            "min_gap_post_hazard_m": 3.0 if collision else 12.0}


FOUR_EPISODES = [_episode(1, 1, False, 10.0, 0.5), _episode(1, 1, True, -50.0, None),
                 _episode(2, 1, False, -2000.0, 1.5), _episode(2, 2, False, 5.0, None)]


def test_metrics_aggregate_per_count_and_bucket() -> None:
    metrics = compute_metrics(FOUR_EPISODES)
    overall = metrics["overall"]
    assert overall["episodes"] == 4
    assert overall["collision_rate"] == 0.25 and overall["success_rate"] == 0.75
    assert overall["behavioral_success_rate"] == 0.5  # the -2000 episode does not count
    assert overall["reaction_rate"] == 0.5 and overall["mean_reaction_time_s"] == 1.0
    assert metrics["per_peer_count"]["1"]["collision_rate"] == 0.5
    assert set(metrics["per_bucket"]) == {"n1_k1", "n2_k1", "n2_k2"}


def test_every_rate_at_every_level_has_its_interval_beside_it() -> None:
    metrics = compute_metrics(FOUR_EPISODES)
    sections = [metrics["overall"], *metrics["per_peer_count"].values(), *metrics["per_bucket"].values()]
    for section in sections:
        for rate in RATES:
            assert section[rate + "_ci95"] == list(wilson_interval(section[rate], section["episodes"]))
    assert metrics["overall"]["collision_rate_ci95"] == pytest.approx([0.0456, 0.6994], abs=1e-4)  # 1 of 4
    assert metrics["per_bucket"]["n2_k2"]["collision_rate_ci95"] == pytest.approx([0.0, 0.7935], abs=1e-4)  # 0 of 1
    assert json.loads(json.dumps(metrics)) == metrics  # plain JSON: lists, not tuples


def test_rates_of_an_old_metrics_file_get_their_interval_from_rate_and_episodes() -> None:
    stored = {"episodes": 300, "collision_rate": 0.0, "collision_rate_ci95": [0.0, 0.0126]}
    assert rate_interval(stored, "collision_rate") == (0.0, 0.0126)
    old = {"episodes": 300, "collision_rate": 0.0}
    assert rate_interval(old, "collision_rate") == wilson_interval(0.0, 300)
    assert format_rate(old, "collision_rate") == "0.0% (0.0-1.3)"
    assert rate_interval({"collision_rate": 0.0}, "collision_rate") is None  # no episode count: no interval
    assert format_rate({"collision_rate": 0.0}, "collision_rate") == "0.0%"
    assert format_rate({"episodes": 3, "collision_rate": None}, "collision_rate") == "n/a"


def test_the_report_shows_each_rate_with_its_interval_per_level(tmp_path: Path) -> None:
    metrics = compute_metrics(FOUR_EPISODES)
    metrics.update(policy="model", plan={"eval_seed": 7}, baselines={"never-brake": compute_metrics(FOUR_EPISODES[:2])})
    lines = write_report(tmp_path, metrics).read_text().splitlines()
    # behavioural success 2 of 4, collisions 1 of 4, received 4 of 4, reacted 2 of 4
    assert "| policy: model | 50.0% (15.0-85.0) | 25.0% (4.6-69.9) | 100.0% (51.0-100.0) | 50.0% (15.0-85.0) | 1.00 | 9.8 |" in lines
    assert "| baseline: never-brake | 50.0% (9.5-90.5) | 50.0% (9.5-90.5) | 100.0% (34.2-100.0) | 50.0% (9.5-90.5) | 0.50 | 7.5 |" in lines
    assert "| 2 | 2 | 50.0% (9.5-90.5) | 0.0% (0.0-65.8) | 1.50 |" in lines  # per peer count
    buckets = lines[lines.index("## Per bucket"):]
    assert "| 1 | 1 | 2 | 50.0% (9.5-90.5) | 50.0% (9.5-90.5) |" in buckets
    assert "| 2 | 1 | 1 | 0.0% (0.0-79.3) | 0.0% (0.0-79.3) |" in buckets
    assert "| 2 | 2 | 1 | 100.0% (20.7-100.0) | 0.0% (0.0-79.3) |" in buckets


def test_the_report_names_the_selected_checkpoint_and_its_val_score(tmp_path: Path) -> None:
    metrics = compute_metrics(FOUR_EPISODES)
    score = {"num_timesteps": 300_000, "episodes": 45, "behavioral_success_rate": 44 / 45, "collision_rate": 0.0,
             "mean_min_distance_post_hazard_m": 21.0, "wall_s": 6.0}
    metrics.update(policy="model", plan={"eval_seed": 7}, model_selection={
        "selected": "best", "criterion": "c", "selected_timesteps": 300_000, "last_timesteps": 500_000,
        "validation": score, "val_seed": 11, "history": [score, {**score, "num_timesteps": 500_000}]})
    text = write_report(tmp_path, metrics).read_text()
    assert "the **best** checkpoint by validation, at 300,000 steps (the run ended at 500,000)" in text
    assert "behavioural success 97.8% (88.4-99.6), collisions 0.0% (0.0-7.9). 2 validations in all" in text


@pytest.mark.slow
def test_a_model_is_evaluated_with_its_baselines_and_a_report(tiny_model: Path, tiny_dataset: Path,
                                                              tmp_path: Path) -> None:
    metrics = evaluate(str(tiny_model), tiny_dataset, tmp_path, tiny_config())
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["overall"] == metrics["overall"]
    for section in ("overall", "per_peer_count", "per_bucket"):
        assert section in written
    for key in ("episodes", "collision_rate", "success_rate", "behavioral_success_rate", "reaction_rate",
                "mean_reaction_time_s", "mean_min_distance_post_hazard_m"):
        assert key in written["overall"]
    assert written["overall"]["episodes"] == 15 and len(written["per_bucket"]) == 15
    assert set(written["baselines"]) == {"never-brake", "rule-based"}
    assert written["baselines"]["never-brake"]["overall"]["reaction_rate"] == 0.0
    for name in ("never-brake", "rule-based"):  # the baselines carry the intervals at every level too
        baseline = written["baselines"][name]
        for section in (baseline["overall"], baseline["per_peer_count"]["3"], baseline["per_bucket"]["n3_k2"]):
            assert all(len(section[rate + "_ci95"]) == 2 for rate in RATES)
    report = (tmp_path / "report.md").read_text()
    assert "baseline: never-brake" in report and "baseline: rule-based" in report
    assert "| 5 | 5 | 1 | " in report.split("## Per bucket")[1]  # one row per bucket: n=5, k=5, 1 episode
    for picture in ("bucket_heatmap.png", "reaction_times.png"):
        assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == 15


def test_a_model_acts_as_sb3s_deterministic_predict(tiny_model: Path, tiny_dataset: Path, make_env) -> None:
    model = load_model(tiny_model)
    with torch.no_grad():  # a mean inside [0, 1], so the comparison is not of two clipped zeros
        model.policy.action_net.bias.fill_(0.5)
    act = model_act(model)
    env = make_env(tiny_dataset, "val", episode_steps=150, hazard_step=60)
    obs, _ = env.reset(seed=0)
    actions = []
    for _ in range(150):
        action = act(obs)
        np.testing.assert_allclose(action, model.predict(obs, deterministic=True)[0], atol=1e-6)
        actions.append(float(action[0]))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    assert 0.0 < min(actions) and max(actions) < 1.0


@pytest.mark.slow
def test_the_same_model_evaluates_identically_whatever_the_worker_count(tiny_model: Path, tiny_dataset: Path,
                                                                         tmp_path: Path) -> None:
    one = evaluate(str(tiny_model), tiny_dataset, tmp_path / "a", tiny_config(eval_workers=1), baselines=())
    two = evaluate(str(tiny_model), tiny_dataset, tmp_path / "b", tiny_config(eval_workers=2), baselines=())
    assert one["overall"] == two["overall"] and one["per_bucket"] == two["per_bucket"]
    assert (tmp_path / "a" / "episodes.jsonl").read_text() == (tmp_path / "b" / "episodes.jsonl").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "always-brake"], "choose one of never-brake, rule-based"),
        ([], "exactly one of --model"),
        (["--model", "missing.zip"], "no such file"),
    ],
)
def test_evaluate_cli_refuses_bad_input(tiny_dataset: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--dataset", str(tiny_dataset), "--output", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
