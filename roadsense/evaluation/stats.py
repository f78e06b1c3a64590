"""How sure a rate is: 95 % intervals for a proportion and for the difference of two.

Every rate in metrics.json is a share of episodes, k of n, so its sampling noise is that of
a binomial proportion. The textbook interval p +- z*sqrt(p(1-p)/n) collapses to a width of
zero at 0 or n successes, which is exactly where a good policy lives (0 collisions, ~98 %
success), so these are score intervals instead:

- :func:`wilson_interval`: Wilson (1927). It keeps every p whose score test does not reject
  it, i.e. it solves |p_hat - p| = z * sqrt(p(1-p)/n) for p, which gives the closed form
  in the function's docstring. At k = 0 its upper bound is z^2/(n + z^2) (1.26 % for n = 300).
- :func:`difference_interval`: Newcombe's hybrid score interval for p_a - p_b from two
  independent samples (Newcombe 1998, "Interval estimation for the difference between
  independent proportions", method 10), built from the two Wilson intervals.
- :func:`differs`: the two rates differ by more than the noise when that interval excludes 0.
"""

from __future__ import annotations

import math
from statistics import NormalDist

# The standard normal's 97.5th percentile (1.959964...): a two-sided 95 % interval leaves
# 2.5 % in each tail.
Z95: float = NormalDist().inv_cdf(0.975)


def wilson_interval(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of a proportion ``rate`` = k/n observed over ``n`` trials.

    With p = ``rate``::

        centre = (p + z^2/(2n)) / (1 + z^2/n)
        half   = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2))
        interval = centre -+ half

    ``z`` = :data:`Z95` gives 95 % coverage. ``rate`` need not be k/n for a whole k (an old
    metrics.json holds only the rate, rounded), the formula depends on p and n alone.
    """
    if n <= 0:
        raise ValueError(f"an interval needs at least one trial, got n={n}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"a proportion is between 0 and 1, got {rate}")
    shrink = 1.0 + z * z / n
    centre = (rate + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(rate * (1.0 - rate) / n + z * z / (4 * n * n))
    # At p = 0 (p = 1) the low (high) bound is exactly 0 (1); rounding misses it by a hair, and
    # then a rate of exactly 1 would fall outside its own interval.
    low = 0.0 if rate == 0.0 else max(0.0, centre - half)
    high = 1.0 if rate == 1.0 else min(1.0, centre + half)
    return low, high


def difference_interval(rate_a: float, n_a: int, rate_b: float, n_b: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (low, high) for ``rate_a - rate_b``, two independent samples.

    With Wilson intervals (l_a, u_a) and (l_b, u_b) and d = p_a - p_b::

        low  = d - sqrt((p_a - l_a)^2 + (u_b - p_b)^2)
        high = d + sqrt((u_a - p_a)^2 + (p_b - l_b)^2)

    Each side combines the two samples' own distances to the bounds that move d that way,
    so the interval stays sensible at rates of 0 or 1, unlike the Wald interval of d.
    """
    low_a, high_a = wilson_interval(rate_a, n_a, z)
    low_b, high_b = wilson_interval(rate_b, n_b, z)
    d = rate_a - rate_b
    return d - math.hypot(rate_a - low_a, high_b - rate_b), d + math.hypot(high_a - rate_a, rate_b - low_b)


def differs(rate_a: float, n_a: int, rate_b: float, n_b: int) -> bool:
    """True when the 95 % interval of ``rate_a - rate_b`` (:func:`difference_interval`) excludes 0."""
    low, high = difference_interval(rate_a, n_a, rate_b, n_b)
    return low > 0.0 or high < 0.0
