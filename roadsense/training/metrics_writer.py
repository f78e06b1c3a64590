"""An SB3 logger output that prints scrapeable metric lines: ``[train]`` per PPO update, ``[val]`` per validation."""

from __future__ import annotations

import numbers
from typing import Any

from stable_baselines3.common.logger import KVWriter

from roadsense.metric_lines import TRAIN_TAG, VAL_TAG, emit

# tag -> (SB3 logger key -> published metric name); tests/test_metric_lines.py checks that the lines
# carry exactly roadsense.metric_lines.PUBLISHED.
_NAMES: dict[str, dict[str, str]] = {
    TRAIN_TAG: {
        "time/fps": "fps",
        "rollout/ep_rew_mean": "ep_rew_mean",
        "train/explained_variance": "explained_variance",
        "train/approx_kl": "approx_kl",
        "train/std": "std",
        "sim/errors": "sim_errors",
    },
    VAL_TAG: {
        "val/behavioral_success_rate": "behavioral_success_rate",
        "val/collision_rate": "collision_rate",
    },
}


class MetricLineWriter(KVWriter):
    def __init__(self, total_timesteps: int) -> None:
        self.total = total_timesteps

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        for tag, names in _NAMES.items():
            values: dict[str, float | int] = {}
            for key, name in names.items():
                value = key_values.get(key)
                if isinstance(value, numbers.Real):  # SB3 logs numpy float32 for some metrics
                    values[name] = float(value)
            if values:
                head: dict[str, float | int] = {"timesteps": int(step)}
                if tag == TRAIN_TAG:
                    head["total_timesteps"] = self.total
                emit(tag, {**head, **values})

    def close(self) -> None:
        pass
