"""Model selection on the val split: scored during training, the best published, eval never read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from roadsense.evaluation.matrix import plan_matrix
from roadsense.evaluation.runner import run_episodes
from roadsense.metric_lines import PUBLISHED, VAL_TAG, parse_line
from roadsense.scenarios.dataset import Dataset
from roadsense.training.train import train
from roadsense.training.validation import BEST_DIR, HISTORY_FILE, ValidationScore, Validator
from tests.conftest import tiny_config


def _score(steps: int, success: float, collisions: float, gap: float | None) -> ValidationScore:
    return ValidationScore(steps, 15, success, collisions, gap, 1.0)


def test_ranking_is_success_then_fewer_collisions_then_larger_gap() -> None:
    scores = [
        _score(1, 0.90, 0.00, 30.0),
        _score(2, 0.95, 0.05, 10.0),  # best success wins over everything else
        _score(3, 0.95, 0.10, 40.0),
        _score(4, 0.80, 0.00, None),
    ]
    assert max(scores, key=ValidationScore.rank).num_timesteps == 2
    tied = [_score(5, 0.95, 0.05, 12.0), _score(6, 0.95, 0.05, None), _score(7, 0.95, 0.05, 11.0)]
    assert max(tied, key=ValidationScore.rank).num_timesteps == 5


def test_the_val_plan_holds_only_val_scenarios_and_the_val_env_cannot_load_eval(tiny_dataset: Path,
                                                                                tmp_path: Path) -> None:
    dataset = Dataset.open(tiny_dataset)
    validator = Validator(tiny_dataset, tiny_config(val_every=256), tmp_path)
    assert {spec.scenario_id for spec in validator.plan} <= set(dataset.ids("val"))
    assert not set(dataset.ids("val")) & set(dataset.ids("eval"))
    eval_plan = plan_matrix(dataset, 1, 7)[:1]
    with pytest.raises(Exception, match="no scenario"):
        run_episodes(eval_plan, ["never-brake"], tiny_dataset, tiny_config().env, 1, split="val")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_training_validates_on_schedule_and_publishes_the_best(tiny_dataset: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    result = train(tiny_dataset, tmp_path, tiny_config(total_timesteps=768, val_every=512))
    checkpoints = tmp_path / "checkpoints"
    history = json.loads((checkpoints / HISTORY_FILE).read_text())
    # Due at the first multiple of 512 crossed, then at the end.
    assert [entry["num_timesteps"] for entry in history["history"]] == [512, 768]
    best = max((ValidationScore(**e) for e in history["history"]), key=ValidationScore.rank)
    assert history["best"] == best.num_timesteps
    assert result.model_selection["selected_timesteps"] == best.num_timesteps
    assert _sha(tmp_path / "model.zip") == _sha(checkpoints / BEST_DIR / "model.zip")
    assert _sha(tmp_path / "model_last.zip") == _sha(checkpoints / "step_000000000768" / "model.zip")
    assert json.loads((tmp_path / "model_selection.json").read_text()) == result.model_selection

    lines = [parse_line(line) for line in capsys.readouterr().out.splitlines()]
    val_lines = [values for tag, values in filter(None, lines) if tag == "val"]
    assert [v["timesteps"] for v in val_lines] == [512, 768]
    assert all(0 <= v["behavioral_success_rate"] <= 1 for v in val_lines)
    assert all(set(v) == {name for tag, name in PUBLISHED if tag == VAL_TAG} for v in val_lines)


@pytest.mark.slow
def test_resume_keeps_the_validation_history(tiny_dataset: Path, tmp_path: Path) -> None:
    train(tiny_dataset, tmp_path, tiny_config(total_timesteps=512, val_every=256))
    resumed = train(tiny_dataset, tmp_path, tiny_config(total_timesteps=768, val_every=256), resume=True)
    steps = [entry["num_timesteps"] for entry in resumed.model_selection["history"]]
    assert steps == [256, 512, 768]


def test_scores_from_after_the_resume_point_are_dropped(tiny_dataset: Path, tmp_path: Path) -> None:
    (tmp_path / HISTORY_FILE).write_text(json.dumps({
        "criterion": "x", "best": 768,
        "history": [vars(_score(512, 0.5, 0.1, 20.0)), vars(_score(768, 0.9, 0.0, 25.0))],
    }))
    # best/ holds the 768-step checkpoint, which a resume from 512 abandons.
    (tmp_path / BEST_DIR).mkdir()
    (tmp_path / BEST_DIR / "model.zip").write_bytes(b"the 768-step model")
    validator = Validator(tiny_dataset, tiny_config(val_every=256), tmp_path, resumed_at=512)
    assert validator.best is None and validator.history == []
    assert not (tmp_path / BEST_DIR).exists()
