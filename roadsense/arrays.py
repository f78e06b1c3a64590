"""Names for the dicts of arrays that pass between the env, the policy and the trainer (annotations only).

A leaf module (numpy alone), so that any module may import it without importing the env or torch.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

# The env's Dict observation (roadsense/env/observation.py): ``ego`` (EGO_FEATURES * frame_stack,),
# ``peers`` (MAX_PEERS, PEER_FEATURES), ``peer_mask`` (MAX_PEERS,), all float32. A batch has a leading
# axis on each (``(B, ...)``), a rollout segment a time axis (``(T, ...)``).
Observation: TypeAlias = dict[str, npt.NDArray[np.float32]]

# The policy's parameters by ``state_dict`` name (``"mlp_extractor.policy_net.0.weight"`` (out, in),
# ``"...bias"`` (out,), ``"log_std"`` (A,)) -> float32 arrays; gradients use the same names and shapes.
Weights: TypeAlias = dict[str, npt.NDArray[np.float32]]
