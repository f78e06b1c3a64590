"""An SB3 logger output that prints one scrapeable ``[train]`` line per PPO update."""

from __future__ import annotations

import numbers
from typing import Any

from stable_baselines3.common.logger import KVWriter

from roadsense.metric_lines import TRAIN_TAG, emit

# SB3 logger key -> published metric name (see roadsense.metric_lines.PUBLISHED)
_NAMES = {
    "time/fps": "fps",
    "rollout/ep_rew_mean": "ep_rew_mean",
    "train/explained_variance": "explained_variance",
    "train/approx_kl": "approx_kl",
    "train/std": "std",
    "sim/errors": "sim_errors",
}


class MetricLineWriter(KVWriter):
    def __init__(self, total_timesteps: int) -> None:
        self.total = total_timesteps

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        values: dict[str, float | int] = {"timesteps": int(step), "total_timesteps": self.total}
        for key, name in _NAMES.items():
            value = key_values.get(key)
            if isinstance(value, numbers.Real):  # SB3 logs numpy float32 for some metrics
                values[name] = float(value)
        emit(TRAIN_TAG, values)

    def close(self) -> None:
        pass
