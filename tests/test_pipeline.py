"""`roadsense run`: the whole pipeline end to end, its status file, dry run and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from roadsense import pipeline
from roadsense.cli import app
from roadsense.pipeline import RunPaths, run_pipeline
from tests.conftest import tiny_config

runner = CliRunner()


@pytest.mark.slow
def test_run_smoke_preset_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--preset", "smoke", "--output", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("model.zip", "vecnormalize.pkl", "metrics.json", "report.md", "manifest.json", "config.json",
                 "provenance.json", "status.json", "bucket_heatmap.png", "learning_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "dataset" / "manifest.json").is_file()
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "succeeded" and status["error"] is None
    assert all(stage["state"] == "succeeded" for stage in status["stages"].values())
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["training"]["num_timesteps"] == 4096
    assert provenance["seeds"] == {"dataset_seed": 42, "eval_dataset_seed": 1042, "val_dataset_seed": 2042, "seed": 0,
                                   "eval_seed": 7, "val_seed": 11}
    # The smoke preset validates at 2,048 and 4,096 steps; model.zip is the better of the two.
    selection = json.loads((out / "model_selection.json").read_text())
    assert [s["num_timesteps"] for s in selection["history"]] == [2048, 4096]
    assert selection["selected_timesteps"] in (2048, 4096) and (out / "model_last.zip").is_file()
    assert provenance["model_selection"]["selected_timesteps"] == selection["selected_timesteps"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_selection"]["validation"] == selection["validation"]
    assert "## Model selection" in (out / "report.md").read_text()
    assert set(provenance["stage_wall_s"]) >= {"dataset", "train", "evaluate"}
    assert provenance["cost"]["estimated_usd"] > 0
    assert provenance["packages"]["torch"].startswith("2.13.0")
    assert json.loads((out / "manifest.json").read_text())["dataset_id"] == provenance["dataset_id"]


def test_a_failed_evaluation_keeps_the_finished_training_visible(tiny_dataset: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_evaluation(*args, **kwargs):
        raise RuntimeError("evaluation worker crashed")

    monkeypatch.setattr(pipeline, "evaluate", broken_evaluation)
    with pytest.raises(RuntimeError, match="crashed"):
        run_pipeline(RunPaths.under(tmp_path), tiny_config(total_timesteps=256), tiny_dataset)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and status["stage"] == "evaluate"
    assert "evaluation worker crashed" in status["error"]
    assert status["stages"]["train"]["state"] == "succeeded"
    assert status["stages"]["train"]["num_timesteps"] == 256
    assert (tmp_path / "model.zip").is_file()


def test_dry_run_validates_and_prints_the_plan_without_writing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--preset", "production", "--output", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["plan"]
    assert plan["total_timesteps"] == 2_000_000
    assert set(plan["expected_seconds"]) == {"dataset", "train", "evaluate", "package"}
    assert plan["expected_total_seconds"] > plan["expected_seconds"]["train"] > 0
    assert not out.exists()


def test_dry_run_checks_a_given_dataset(tiny_dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(tiny_dataset, copy)
    routes = next(copy.glob("train/*/routes.rou.xml"))
    routes.write_text(routes.read_text() + "<!-- edited -->")
    result = runner.invoke(app, ["run", "--output", str(tmp_path / "run"), "--dataset", str(copy), "--dry-run"])
    assert result.exit_code == 2
    assert "routes.rou.xml" in result.output


@pytest.mark.parametrize(
    ("sets", "message"),
    [(["total_timestep=5"], "did you mean 'total_timesteps'"), (["peer_drop_prob=2"], "peer_drop_prob"),
     (["eval_count=3"], "eval_count")],
)
def test_bad_settings_exit_2_naming_the_key_and_write_nothing(tmp_path: Path, sets: list[str], message: str) -> None:
    out = tmp_path / "run"
    args = ["run", "--preset", "smoke", "--output", str(out)]
    for item in sets:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


def test_an_output_with_other_settings_is_refused(tmp_path: Path) -> None:
    tiny_config(seed=1).save(tmp_path / "config.json")
    result = runner.invoke(app, ["run", "--preset", "smoke", "--output", str(tmp_path), "--set", "seed=2"])
    assert result.exit_code == 2
    assert "other settings" in result.output and "seed" in result.output
