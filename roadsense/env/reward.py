"""The reference reward, term by term (docs/design.md, "Reward"; its departures: "Departures from the reference").

All inputs are plain floats (this runs every env step; numpy scalars would only slow it).
``d`` is the nearest peer distance as received over the mesh (bumper to bumper, m), or
``inf`` when no peer is visible; ``decel`` is the ego's applied deceleration (m/s^2, >= 0).

Departures from the reference. Two were found by auditing hazard-free driving (see
tests/test_reward.py): comfort and far-braking charge only deceleration the policy asked
for, because with action 0 SUMO drives the ego and its driver imperfection (sigma) brakes at
0.5-1.3 m/s^2 on 6 % of calm steps, a penalty the policy could neither cause nor avoid; and
ignoring a braking peer, like the early-reaction bonus, needs a signal above 0.01, because
the decaying signal never reaches zero and otherwise charged tiny penalties for hundreds of
steps after a single noisy report. The third, ``collision``, is a one-off charge on the step
that ends the episode in a collision (``EnvConfig.collision_penalty``): the reference charges a
crash only the -100 of one step under 5 m, then ends the episode, so ending in a crash costs
less than a safe stop beyond 35 m (-2 a step until the time limit); with the whole episode's
worth of that (-2 x 500 = -1000) a crash is never the cheaper way out. One reading of the
reference, too: braking "far" (beyond 35 m) is charged only with a peer in view; with none
(``d`` = inf) the ego knows nothing of what is ahead, so braking then is not called far, while
the safety term still scores an empty view as far (-2).
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
    collision: float

    @property
    def total(self) -> float:
        return (self.safety + self.comfort + self.far_braking + self.missed_warning + self.early_reaction
                + self.ignoring_hazard + self.collision)


REWARD_TERM_NAMES = RewardTerms._fields

BRAKING_ACTION = 0.02  # actions at or below this hand the ego back to SUMO
DECEL_THRESHOLD = 0.5  # m/s^2: below this the ego is not braking
SIGNAL_FLOOR = 0.01  # a braking signal at or below this has faded out


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
    d: float, decel: float, action: float, braking_signal: float, closing_speed: float, ego_speed: float,
    collision: float = 0.0,
) -> RewardTerms:
    """Every term for one step.

    Args:
        d: nearest received peer distance, m (``inf`` if none visible).
        decel: applied ego deceleration, m/s^2 (>= 0); counted only when the policy brakes.
        action: the policy's brake command in [0, 1].
        braking_signal: the decaying braking signal in [0, 1].
        closing_speed: max over visible peers of ego speed - peer speed, m/s.
        ego_speed: m/s.
        collision: the charge of this step's crash (<= 0); 0 unless the step ends in a collision.
    """
    braking = action > BRAKING_ACTION
    decel = decel if braking else 0.0  # SUMO's own braking is not the policy's doing
    signal_up = braking_signal > SIGNAL_FLOOR
    far = d > 35.0 and math.isfinite(d)
    far_braking = 0.0
    if far and decel >= 4.5:
        far_braking = -4.0
    elif far and decel > DECEL_THRESHOLD:
        far_braking = -2.0
    missed = -3.0 if (d < 10.0 and closing_speed > 0.5 and not braking) else 0.0
    early = 2.0 * braking_signal if (braking and signal_up and d > 15.0) else 0.0
    ignoring = -5.0 * braking_signal if (not braking and signal_up and ego_speed > 0.1) else 0.0
    return RewardTerms(safety(d), comfort(decel, d), far_braking, missed, early, ignoring, collision)
