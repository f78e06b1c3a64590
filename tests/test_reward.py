"""The reward terms against the reference numbers (docs/design.md, "Reward"), and an audit of calm driving over real SUMO."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadsense.config import DatasetConfig
from roadsense.env.reward import REWARD_TERM_NAMES, comfort, reward_terms, safety

INF = math.inf


# -- safety ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("d", "expected"),
    [
        (0.0, -100.0), (4.99, -100.0),  # under 5 m
        (5.0, -5.0), (12.5, -0.5), (17.0, 2.2), (19.999, 4.0),  # linear -5 -> +4 over 5..20 m
        (20.0, 4.0), (27.0, 4.0), (35.0, 4.0),  # the good band
        (35.01, -2.0), (80.0, -2.0),  # too far behind
    ],
)
def test_safety_bins_and_ramp(d: float, expected: float) -> None:
    assert safety(d) == pytest.approx(expected, abs=1e-3)


@given(st.floats(0.0, 35.0), st.floats(0.0, 35.0))
def test_a_closer_peer_never_scores_better_up_to_the_good_band(a: float, b: float) -> None:
    """Up to 35 m, closing in never pays. Catches a ramp that overshoots +4 before 20 m (a slope or
    offset typo), runs backwards, or whose end a moved bin edge no longer meets."""
    nearer, farther = sorted((a, b))
    assert safety(nearer) <= safety(farther)


def test_safety_without_a_visible_peer_is_the_far_value() -> None:
    assert safety(INF) == -2.0


# -- comfort -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("decel", "expected"),
    [
        (0.0, 0.0), (0.5, 0.0),  # free up to 0.5 m/s^2
        (1.75, -1.0), (3.0, -2.0),  # linear to -2 at 3
        (3.75, -3.5), (4.5, -5.0),  # linear to -5 at 4.5
        (6.0, -5.0), (8.0, -5.0),  # -5 beyond
    ],
)
def test_comfort_curve_far_from_peers(decel: float, expected: float) -> None:
    for d in (20.0, 30.0, 60.0, INF):  # no scaling at 20 m and beyond
        assert comfort(decel, d) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("d", "factor"),
    [(19.0, 14 / 15), (12.5, 0.5), (8.0, 0.2), (6.5, 0.1), (5.0, 0.1), (3.0, 0.1)],
)
def test_comfort_is_scaled_down_when_close(d: float, factor: float) -> None:
    assert comfort(3.0, d) == pytest.approx(-2.0 * factor)
    assert comfort(6.0, d) == pytest.approx(-5.0 * factor)
    assert comfort(0.4, d) == 0.0


@given(st.floats(0.0, 10.0), st.floats(0.0, 10.0), st.floats(0.0, 100.0))
def test_comfort_never_rewards_and_grows_with_decel(a: float, b: float, d: float) -> None:
    lo, hi = sorted((a, b))
    assert comfort(hi, d) <= comfort(lo, d) <= 0.0
    assert comfort(hi, d) >= -5.0


# -- the whole step ------------------------------------------------------------------------------
def _terms(d=30.0, decel=0.0, action=0.0, b=0.0, closing=0.0, speed=15.0):
    return reward_terms(d, decel, action, b, closing, speed)


@pytest.mark.parametrize(
    ("d", "decel", "expected"),
    [
        (40.0, 1.0, -2.0), (40.0, 4.49, -2.0), (40.0, 4.5, -4.0), (40.0, 7.0, -4.0),
        (40.0, 0.5, 0.0),  # not braking
        (35.0, 5.0, 0.0), (20.0, 5.0, 0.0),  # not far
    ],
)
def test_far_braking(d: float, decel: float, expected: float) -> None:
    assert _terms(d=d, decel=decel, action=0.6).far_braking == expected


@pytest.mark.parametrize("action", [0.0, 0.02])
def test_sumo_braking_is_not_charged_to_the_policy(action: float) -> None:
    """With the action at or below 0.02, SUMO drives the ego: its braking costs the policy nothing."""
    terms = _terms(d=40.0, decel=3.0, action=action)
    assert terms.comfort == 0.0 and terms.far_braking == 0.0
    assert _terms(d=40.0, decel=3.0, action=0.03).comfort < 0.0


@pytest.mark.parametrize(
    ("d", "closing", "action", "expected"),
    [
        (9.0, 1.0, 0.0, -3.0), (9.0, 1.0, 0.02, -3.0),  # a <= 0.02 is not braking
        (9.0, 1.0, 0.03, 0.0),  # braking
        (9.0, 0.5, 0.0, 0.0), (10.0, 1.0, 0.0, 0.0), (INF, 3.0, 0.0, 0.0),  # not closing fast / not close
        (2.0, 5.0, 0.0, -3.0),
    ],
)
def test_missed_warning(d: float, closing: float, action: float, expected: float) -> None:
    assert _terms(d=d, closing=closing, action=action).missed_warning == expected


@pytest.mark.parametrize(
    ("action", "b", "d", "expected"),
    [
        (0.5, 0.6, 20.0, 1.2), (1.0, 1.0, 15.01, 2.0), (0.03, 0.02, 40.0, 0.04),
        (0.5, 0.6, 15.0, 0.0),  # too close: braking is just required there
        (0.5, 0.01, 30.0, 0.0),  # no signal
        (0.02, 1.0, 30.0, 0.0),  # not braking
    ],
)
def test_early_reaction(action: float, b: float, d: float, expected: float) -> None:
    assert _terms(d=d, action=action, b=b).early_reaction == pytest.approx(expected)


@pytest.mark.parametrize(
    ("action", "b", "speed", "expected"),
    [
        (0.0, 1.0, 10.0, -5.0), (0.0, 0.8, 10.0, -4.0), (0.02, 0.5, 1.0, -2.5),
        (0.0, 0.0, 10.0, 0.0),  # no braking peer
        (0.5, 1.0, 10.0, 0.0),  # braking
        (0.0, 1.0, 0.0, 0.0), (0.0, 1.0, 0.1, 0.0),  # already stopped
        (0.0, 0.01, 10.0, 0.0), (0.0, 0.011, 10.0, -0.055),  # a faded signal no longer counts
    ],
)
def test_ignoring_a_braking_peer(action: float, b: float, speed: float, expected: float) -> None:
    assert _terms(action=action, b=b, speed=speed).ignoring_hazard == pytest.approx(expected)


def test_total_is_the_sum_of_the_terms() -> None:
    terms = reward_terms(8.0, 3.0, 0.03, 0.5, 2.0, 10.0)
    assert terms.safety == pytest.approx(-5.0 + 9.0 * 3.0 / 15.0)
    assert terms.comfort == pytest.approx(-2.0 * 0.2)
    assert terms.missed_warning == 0.0 and terms.ignoring_hazard == 0.0  # the policy brakes
    assert terms.far_braking == 0.0 and terms.early_reaction == 0.0
    assert terms.total == pytest.approx(sum(terms))
    assert REWARD_TERM_NAMES == ("safety", "comfort", "far_braking", "missed_warning", "early_reaction", "ignoring_hazard",
                                 "collision")


def test_calm_cruising_costs_nothing_but_the_safety_term() -> None:
    terms = reward_terms(25.0, 0.2, 0.0, 0.0, 0.3, 20.0)
    assert terms == (4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


# -- audit over real SUMO ------------------------------------------------------------------------
CALM_PENALTIES = ("missed_warning", "ignoring_hazard", "far_braking", "comfort")
CALM_LIMIT = 0.03  # "a few percent" of hazard-free steps, per term, per split


@pytest.fixture(scope="module")
def audit_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first scenarios of the production dataset seeds (scenario i does not depend on the count)."""
    from roadsense.scenarios import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("audit") / "ds", DatasetConfig(train_count=20, eval_count=10), "audit")


@pytest.mark.slow
def test_calm_driving_penalties_are_rare(make_env, audit_dataset: Path) -> None:
    """Hazard-free, never-brake driving over every scenario: count how often each term fires.

    The hazard starts at the last step (it must lie inside the episode), so that step is
    taken out of the counts.
    """
    steps = 500
    report = {}
    for split, count in (("train", 20), ("eval", 10)):
        env = make_env(audit_dataset, split, episode_steps=steps, hazard_step=steps - 1)
        fired = dict.fromkeys(REWARD_TERM_NAMES, 0)
        total = 0
        for i in range(count):
            env.reset(seed=i, options={"scenario_id": f"{split}-{i:04d}"})
            per_step = dict.fromkeys(REWARD_TERM_NAMES, 0)
            for _ in range(steps):
                _, _, terminated, truncated, info = env.step(np.zeros(1, np.float32))
                for name, value in info["reward_terms"].items():
                    per_step[name] += value != 0.0
                if terminated or truncated:
                    break
            assert truncated and not terminated, f"{split}-{i:04d}: calm driving ended at step {env.t}"
            summary = info["episode_summary"]
            assert summary["term_fired"] == per_step  # the summary counts what each step reported
            assert summary["hazard_started"] and summary["min_gap_post_hazard_m"] > 5.0
            for name in REWARD_TERM_NAMES:  # drop the last step: the hazard's first
                fired[name] += summary["term_fired"][name] - (info["reward_terms"][name] != 0.0)
            total += steps - 1
        report[split] = {name: round(n / total, 4) for name, n in fired.items()}
        report[split]["steps"] = total
    print("reward audit (share of hazard-free steps each term fires):", report)
    too_often = {
        f"{split}.{name}": report[split][name]
        for split in report for name in CALM_PENALTIES if report[split][name] >= CALM_LIMIT
    }
    assert not too_often, f"calm-driving penalties fire on >= {CALM_LIMIT:.0%} of hazard-free steps: {too_often}; full audit {report}"
