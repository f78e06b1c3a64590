"""Intervals on rates (roadsense.evaluation.stats), checked against independent references.

The references are computed here by other means than the closed forms under test: z from
the normal CDF (math.erf) by bisection, Wilson bounds by bisecting the score equation
|p_hat - p| = z*sqrt(p(1-p)/n) on each side of p_hat, plus values published by Newcombe (1998).
"""

from __future__ import annotations

import math
from typing import Callable

import pytest

from roadsense.evaluation.stats import Z95, difference_interval, differs, wilson_interval


def _bisect(f: Callable[[float], float], low: float, high: float) -> float:
    """The root of ``f`` in [low, high], where f changes sign."""
    for _ in range(200):
        mid = (low + high) / 2
        if (f(low) < 0) == (f(mid) < 0):
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _score_bounds(k: int, n: int) -> tuple[float, float]:
    """The p where the score statistic |p_hat - p| / sqrt(p(1-p)/n) equals z, below and above p_hat."""
    z = _bisect(lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))) - 0.975, 0.0, 5.0)
    p_hat = k / n

    def excess(p: float) -> float:
        return abs(p_hat - p) - z * math.sqrt(p * (1 - p) / n)

    # At p = 0 or 1 the score statistic is infinite unless p_hat is there too: the bound is then exact.
    # Brackets stop a hair short of p_hat: at p_hat = 0 or 1 the excess there is 0, not negative.
    low = 0.0 if k == 0 else _bisect(excess, 0.0, p_hat - 1e-12)
    high = 1.0 if k == n else _bisect(excess, p_hat + 1e-12, 1.0)
    return low, high


def test_z_is_the_two_sided_95_percent_normal_quantile() -> None:
    assert Z95 == pytest.approx(_bisect(lambda x: math.erfc(x / math.sqrt(2)) - 0.05, 0.0, 5.0), abs=1e-12)
    assert Z95 == pytest.approx(1.959964, abs=1e-6)


@pytest.mark.parametrize(("k", "n"), [(0, 300), (5, 150), (294, 300), (300, 300), (0, 20), (19, 20), (10, 20), (1, 1)])
def test_wilson_interval_solves_the_score_equation(k: int, n: int) -> None:
    low, high = wilson_interval(k / n, n)
    ref_low, ref_high = _score_bounds(k, n)
    assert low == pytest.approx(ref_low, abs=1e-9)
    assert high == pytest.approx(ref_high, abs=1e-9)


@pytest.mark.parametrize(
    ("k", "n", "published"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", method 3 (score).
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
        # 0 events in 300: the upper bound is z^2/(n+z^2), 1.26 %.
        (0, 300, (0.0, 0.0126)),
    ],
)
def test_wilson_interval_matches_published_values(k: int, n: int, published: tuple[float, float]) -> None:
    assert wilson_interval(k / n, n) == pytest.approx(published, abs=5e-5)


@pytest.mark.parametrize(
    ("a", "b", "published"),
    [
        # Newcombe (1998), "Interval estimation for the difference between independent proportions",
        # Table II, method 10 (hybrid score, no continuity correction).
        ((56, 70), (48, 80), (0.0524, 0.3339)),
        ((9, 10), (3, 10), (0.1705, 0.8090)),
        ((6, 7), (2, 7), (0.0582, 0.8062)),
        ((5, 56), (0, 29), (-0.0381, 0.1926)),
        ((0, 10), (0, 20), (-0.1611, 0.2775)),
        ((10, 10), (0, 20), (0.6791, 1.0)),
    ],
)
def test_difference_interval_matches_newcombe(a: tuple[int, int], b: tuple[int, int], published: tuple[float, float]) -> None:
    assert difference_interval(a[0] / a[1], a[1], b[0] / b[1], b[1]) == pytest.approx(published, abs=5e-5)


def test_a_difference_is_marked_only_when_its_interval_excludes_zero() -> None:
    assert differs(56 / 70, 70, 48 / 80, 80)  # (0.052, 0.334)
    assert differs(48 / 80, 80, 56 / 70, 70)  # the same, negative
    assert not differs(5 / 56, 56, 0 / 29, 29)  # (-0.038, 0.193)
    # 0 vs 4 collisions in 300 episodes each is within the noise; 0 vs 5 is not.
    assert not differs(0.0, 300, 4 / 300, 300)
    assert differs(0.0, 300, 5 / 300, 300)


@pytest.mark.parametrize(("rate", "n"), [(0.5, 0), (1.2, 10), (-0.1, 10)])
def test_wilson_interval_refuses_what_is_not_a_proportion(rate: float, n: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(rate, n)


@pytest.mark.parametrize("n", [1, 20, 150, 300, 10_000])
def test_a_perfect_or_null_rate_lies_inside_its_own_interval(n: int) -> None:
    # A flag "outside the interval" must never fire for the very rate the interval was made from.
    assert wilson_interval(1.0, n)[1] == 1.0
    assert wilson_interval(0.0, n)[0] == 0.0
