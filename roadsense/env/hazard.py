"""The hazard: one peer ahead brakes hard once per episode (docs/design.md, "Hazard").

The plan is drawn at reset from the episode's generator, so the same seed gives the same
hazard; timing is fixed (or drawn from a window) so the critic can learn it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from roadsense.sim.backend import STEP_S

RELEASE_PROB = 0.4


@dataclass(frozen=True, slots=True)
class HazardPlan:
    """What the hazard peer does; steps count from the end of warm-up."""

    start_step: int
    rank: int | None  # k-th peer ahead of the ego (1 = nearest); None = drawn uniformly at the start
    decel: float  # m/s^2
    brake_steps: int
    release_step: int | None  # step at which SUMO's car-following takes the peer back, if ever

    @classmethod
    def draw(cls, rng: np.random.Generator, start_step: int, rank: int | None) -> "HazardPlan":
        decel = float(rng.uniform(3.0, 10.0))
        brake_steps = max(1, round(float(rng.uniform(0.5, 1.5)) / STEP_S))
        released = rng.random() < RELEASE_PROB
        hold_steps = round(float(rng.uniform(2.0, 5.0)) / STEP_S)
        release = start_step + brake_steps + hold_steps if released else None
        return cls(start_step, rank, decel, brake_steps, release)
