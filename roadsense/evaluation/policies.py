"""What drives the ego in evaluation: a trained model or one of the two baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

BASELINES = ("never-brake", "rule-based")
SIGNAL_INDEX = 4  # the braking signal in the newest ego frame
RULE_THRESHOLD = 0.5  # the signal is 'up' for about 1.3 s after a braking message

Act = Callable[[dict[str, np.ndarray]], np.ndarray]


def load_policy(spec: str) -> Act:
    """``never-brake``, ``rule-based`` or the path of a ``model.zip``; returns obs -> action (1,)."""
    if spec == "never-brake":
        return lambda obs: np.zeros(1, np.float32)
    if spec == "rule-based":
        return lambda obs: np.ones(1, np.float32) if obs["ego"][SIGNAL_INDEX] >= RULE_THRESHOLD else np.zeros(1, np.float32)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--model {path}: no such model file (expected a model.zip written by `roadsense train`)")
    from stable_baselines3 import PPO

    model = PPO.load(path, device="cpu")
    return lambda obs: model.predict(obs, deterministic=True)[0]
