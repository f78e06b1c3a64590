"""The metric lines log scrapers read: what training and evaluation print is what roadsense.metric_lines publishes.

metric_lines.PUBLISHED becomes the SageMaker metric definitions and the tuning objectives; a
published metric nobody prints leaves a definition that never matches, and a printed one that
is not published is never scraped. The lines of real training and validation are checked the
same way in tests/test_training.py and tests/test_validation.py.
"""

from __future__ import annotations

import math

import pytest

from roadsense.evaluation.evaluate import emitted_metrics
from roadsense.evaluation.metrics import compute_metrics
from roadsense.metric_lines import EVAL_TAG, PUBLISHED, TRAIN_TAG, VAL_TAG, format_line, parse_line
from roadsense.training.metrics_writer import _NAMES, MetricLineWriter


def _published(*tags: str) -> set[tuple[str, str]]:
    return {(tag, name) for tag, name in PUBLISHED if tag in tags}


def _printed(output: str) -> set[tuple[str, str]]:
    return {(tag, name) for tag, values in filter(None, map(parse_line, output.splitlines())) for name in values}


def test_the_training_writer_prints_exactly_the_published_train_and_val_metrics(capsys: pytest.CaptureFixture) -> None:
    every_key = {key: 0.5 for names in _NAMES.values() for key in names}  # as if SB3 had logged all of them
    MetricLineWriter(total_timesteps=4096).write(every_key, {}, step=1024)
    assert _printed(capsys.readouterr().out) == _published(TRAIN_TAG, VAL_TAG)


def _episode(n: int, k: int, collision: bool, reaction_s: float | None) -> dict:
    return {"bucket_n": n, "bucket_k": k, "collision": collision, "sim_error": None, "reward": -50.0,
            "hazard_received": True, "reaction": reaction_s is not None, "reaction_time_s": reaction_s,
            "min_gap_post_hazard_m": 3.0 if collision else 12.0}


def test_the_eval_line_carries_every_published_eval_metric() -> None:
    """Catches a published eval metric that metrics.json no longer computes (renamed or dropped)."""
    overall = compute_metrics([_episode(1, 1, False, 0.4), _episode(2, 1, True, None)])["overall"]
    emitted = emitted_metrics(overall)
    assert _printed(format_line(EVAL_TAG, emitted)) == _published(EVAL_TAG)
    assert all(math.isfinite(value) for value in emitted.values())


def test_an_eval_metric_without_a_value_is_left_out_of_the_line() -> None:
    overall = compute_metrics([_episode(1, 1, False, None)])["overall"]  # nobody reacted: no mean reaction time
    assert "mean_reaction_time_s" not in emitted_metrics(overall)
