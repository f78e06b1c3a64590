"""What drives the ego in evaluation: a trained model, its exported ONNX graph, or one of the two baselines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, get_args

import numpy as np
import numpy.typing as npt

from roadsense.arrays import Observation
from roadsense.errors import InputNotFound

if TYPE_CHECKING:
    from stable_baselines3 import PPO

# The baselines every model is compared with; the config's ``baselines`` setting takes its type from here.
Baseline = Literal["never-brake", "rule-based"]
BASELINES: tuple[Baseline, ...] = get_args(Baseline)
RULE_THRESHOLD = 0.5  # the signal is 'up' for about 1.3 s after a braking message
ONNX_SUFFIX = ".onnx"

Act = Callable[[Observation], npt.NDArray[np.float32]]  # obs -> action (1,) in [0, 1]


def load_policy(spec: str) -> Act:
    """``never-brake``, ``rule-based``, the path of a ``model.zip``, or of an exported ``*.onnx``
    policy (``policy.onnx`` or its INT8 variant, run by onnxruntime on one thread); returns
    obs -> action (1,) float32 in [0, 1]."""
    if spec == "never-brake":
        return lambda obs: np.zeros(1, np.float32)
    if spec == "rule-based":
        # Imported here: roadsense.config imports this module, and roadsense.env imports roadsense.config.
        from roadsense.env.observation import EGO_FEATURE_NAMES

        signal = EGO_FEATURE_NAMES.index("braking_signal")  # in the newest ego frame, which comes first
        return lambda obs: np.ones(1, np.float32) if obs["ego"][signal] >= RULE_THRESHOLD else np.zeros(1, np.float32)
    path = Path(spec)
    if path.suffix == ONNX_SUFFIX:
        return onnx_act(path)
    return model_act(load_model(path))


def require_policy_file(path: Path, flag: str) -> None:
    """Refuse ``path``, given as ``flag``, unless it is a file: commands check before any slow work starts."""
    if not path.is_file():
        expected = ("an exported policy.onnx (or policy_int8.onnx) written by `roadsense export`" if path.suffix == ONNX_SUFFIX
                    else "a model.zip written by `roadsense train` or `roadsense run`")
        raise InputNotFound(f"{flag} {path}: no such file; give {expected}")


def load_model(path: Path) -> "PPO":
    """The SB3 PPO model of a ``model.zip``, on the CPU."""
    require_policy_file(path, "--model")
    from stable_baselines3 import PPO

    return PPO.load(path, device="cpu")


def model_act(model: "PPO") -> Act:
    """The model's deterministic action: the Gaussian mean clipped to the action space, which is
    what SB3's ``predict(deterministic=True)`` returns, computed by the numpy forward pass the
    training workers use (a tenth of predict's cost per step; tests/test_evaluation.py compares them)."""
    from gymnasium import spaces

    from roadsense.policy.actor_critic import PolicyNet

    actor = PolicyNet.of(model.policy)
    action_space = model.action_space  # SB3 types it as any Space; a model trained on ConvoyEnv has its Box
    assert isinstance(action_space, spaces.Box), f"expected a Box action space, got {action_space}"
    low, high = action_space.low, action_space.high
    return lambda obs: np.clip(actor.mean({key: value[None] for key, value in obs.items()})[0], low, high)


def onnx_act(path: Path) -> Act:
    """An exported ``policy.onnx`` (float or INT8): its ``action`` output, the mean clipped to [0, 1]."""
    require_policy_file(path, "--onnx")
    from roadsense.export.runtime import run_policy, session

    sess = session(path)
    return lambda obs: run_policy(sess, {k: v[None] for k, v in obs.items()})[1][0]
