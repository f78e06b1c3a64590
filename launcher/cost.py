"""What a job is expected to take and cost on SageMaker.

The time comes from roadsense's own estimate (``roadsense/estimate.py``, the one place the
pipeline's throughput figures live) for the instance's vCPUs; the launcher only adds what
SageMaker itself costs in time and money: the instance start-up and the spot discount.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from roadsense.config import PipelineConfig
from roadsense.estimate import stage_seconds

# Instance start-up and image download before the container runs; not part of the pipeline.
STARTUP_SECONDS = 5 * 60

# Managed spot typically costs about 70 % less than on-demand (AWS quotes "up to 90 %");
# the real price varies by hour and region, so this is a planning figure only.
SPOT_TYPICAL_DISCOUNT = 0.70


@dataclass(frozen=True)
class CostEstimate:
    instance_type: str
    steps_per_second: float
    hours: float  # start-up plus every pipeline stage: what the job's max runtime must cover
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


def estimate(config: PipelineConfig, instance_count: int = 1) -> CostEstimate | None:
    """Hours and USD for ``config`` on its own ``cost.instance_type``; None for an unknown size."""
    instance = config.cost.instance_type
    cpus = vcpus(instance)
    if cpus is None:
        return None
    stages = stage_seconds(config, cpus)
    hours = (sum(stages.values()) + STARTUP_SECONDS) / 3600
    on_demand = hours * config.cost.instance_price_per_hour * instance_count
    steps_per_second = config.train.total_timesteps / stages["train"]
    return CostEstimate(instance, steps_per_second, hours, on_demand, on_demand * (1 - SPOT_TYPICAL_DISCOUNT))
