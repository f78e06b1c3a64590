"""The reference reward of domain.md, term by term.

All inputs are plain floats (this runs every env step; numpy scalars would only slow it).
``d`` is the nearest peer distance as received over the mesh (bumper to bumper, m), or
``inf`` when no peer is visible; ``decel`` is the ego's applied deceleration (m/s^2, >= 0).
"""

from __future__ import annotations

import math
from typing import NamedTuple


class RewardTerms(NamedTuple):
    safety: float
    comfort: float
    far_braking: float
    missed_warning: float
    early_reaction: float
    ignoring_hazard: float

    @property
    def total(self) -> float:
        return self.safety + self.comfort + self.far_braking + self.missed_warning + self.early_reaction + self.ignoring_hazard


REWARD_TERM_NAMES = RewardTerms._fields

BRAKING_ACTION = 0.02  # actions at or below this hand the ego back to SUMO
DECEL_THRESHOLD = 0.5  # m/s^2: below this the ego is not braking


def safety(d: float) -> float:
    """-100 under 5 m; -5 -> +4 linearly over 5..20 m; +4 over 20..35 m; -2 beyond (or no peer)."""
    if d < 5.0:
        return -100.0
    if d < 20.0:
        return -5.0 + 9.0 * (d - 5.0) / 15.0
    if d <= 35.0:
        return 4.0
    return -2.0


def comfort(decel: float, d: float) -> float:
    """0 up to 0.5 m/s^2, to -2 at 3, to -5 at 4.5, -5 beyond; softened when close (braking is right then)."""
    if decel <= DECEL_THRESHOLD:
        return 0.0
    if decel <= 3.0:
        penalty = -2.0 * (decel - DECEL_THRESHOLD) / 2.5
    elif decel <= 4.5:
        penalty = -2.0 - 3.0 * (decel - 3.0) / 1.5
    else:
        penalty = -5.0
    if d < 20.0:
        penalty *= max(0.1, (d - 5.0) / 15.0)
    return penalty


def reward_terms(
    d: float, decel: float, action: float, braking_signal: float, closing_speed: float, ego_speed: float
) -> RewardTerms:
    """Every term for one step.

    Args:
        d: nearest received peer distance, m (``inf`` if none visible).
        decel: applied ego deceleration, m/s^2 (>= 0).
        action: the policy's brake command in [0, 1].
        braking_signal: the decaying braking signal in [0, 1].
        closing_speed: max over visible peers of ego speed - peer speed, m/s.
        ego_speed: m/s.
    """
    braking = action > BRAKING_ACTION
    far = d > 35.0 and math.isfinite(d)
    far_braking = 0.0
    if far and decel >= 4.5:
        far_braking = -4.0
    elif far and decel > DECEL_THRESHOLD:
        far_braking = -2.0
    missed = -3.0 if (d < 10.0 and closing_speed > 0.5 and not braking) else 0.0
    early = 2.0 * braking_signal if (braking and braking_signal > 0.01 and d > 15.0) else 0.0
    ignoring = -5.0 * braking_signal if (not braking and ego_speed > 0.1) else 0.0
    return RewardTerms(safety(d), comfort(decel, d), far_braking, missed, early, ignoring)
