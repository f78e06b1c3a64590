"""What a job is expected to take and cost, from the config's step count and a throughput table.

The throughput figures are the one place to update once runs are measured: PPO steps per
second of the whole job (all envs) on each instance type. ml.c6i.xlarge is set
conservatively (~700 steps/s) until a cloud run measures it; other sizes scale with their
vCPUs because the pipeline runs one SUMO env per CPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from roadsense.config import PipelineConfig

STEPS_PER_SECOND: dict[str, float] = {"ml.c6i.xlarge": 700.0}
STEPS_PER_SECOND_PER_VCPU = STEPS_PER_SECOND["ml.c6i.xlarge"] / 4

# Scenario generation, evaluation, packaging and instance start-up, on top of training.
OVERHEAD_HOURS = 0.25

# Managed spot typically costs about 70 % less than on-demand (AWS quotes "up to 90 %");
# the real price varies by hour and region, so this is a planning figure only.
SPOT_TYPICAL_DISCOUNT = 0.70


@dataclass(frozen=True)
class CostEstimate:
    instance_type: str
    steps_per_second: float
    hours: float
    on_demand_usd: float
    spot_usd: float

    def describe(self) -> str:
        return (
            f"~{self.hours:.1f} h on {self.instance_type} at ~{self.steps_per_second:.0f} steps/s: "
            f"~${self.on_demand_usd:.2f} on-demand, ~${self.spot_usd:.2f} spot "
            f"(assumes a typical {SPOT_TYPICAL_DISCOUNT:.0%} spot discount)"
        )


def vcpus(instance_type: str) -> int | None:
    """vCPUs from the size: large = 2, xlarge = 4, Nxlarge = 4N; None for other sizes."""
    match = re.match(r"^ml\.[a-z0-9-]+\.(\d*)(x?)large$", instance_type)
    if not match:
        return None
    if not match[2]:
        return 2
    return 4 * int(match[1] or 1)


def steps_per_second(instance_type: str) -> float | None:
    if instance_type in STEPS_PER_SECOND:
        return STEPS_PER_SECOND[instance_type]
    cpus = vcpus(instance_type)
    return cpus * STEPS_PER_SECOND_PER_VCPU if cpus else None


def estimate(config: PipelineConfig, instance_count: int = 1) -> CostEstimate | None:
    """Hours and USD for ``config`` on its own ``cost.instance_type``; None if throughput is unknown."""
    instance = config.cost.instance_type
    rate = steps_per_second(instance)
    if rate is None:
        return None
    hours = config.train.total_timesteps / rate / 3600 + OVERHEAD_HOURS
    on_demand = hours * config.cost.instance_price_per_hour * instance_count
    return CostEstimate(instance, rate, hours, on_demand, on_demand * (1 - SPOT_TYPICAL_DISCOUNT))
