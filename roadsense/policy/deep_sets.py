"""Deep Sets features extractor over ``ego`` / ``peers`` / ``peer_mask`` observations.

Each peer row goes through the same MLP (phi: 6 -> h -> h, ReLU); the peer set is then
max-pooled over the real peers only, and the pooled vector is concatenated with the ego
vector. The result does not change when the real peers are permuted or when the content
of masked slots changes, and an empty set pools to zeros.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class DeepSetsExtractor(BaseFeaturesExtractor):
    """Features = concat(ego, masked-max-pool(phi(peers))).

    Args:
        observation_space: Dict with ``ego`` (E,), ``peers`` (P, F) and ``peer_mask`` (P,).
        peer_hidden: width h of phi; the features have E + h dimensions.
    """

    def __init__(self, observation_space: spaces.Dict, peer_hidden: int = 32) -> None:
        ego, peers = observation_space["ego"], observation_space["peers"]
        assert isinstance(ego, spaces.Box) and isinstance(peers, spaces.Box), "ego and peers are Boxes (env/observation.py)"
        ego_dim = int(ego.shape[0])
        peer_features = int(peers.shape[1])
        super().__init__(observation_space, features_dim=ego_dim + peer_hidden)
        self.phi = nn.Sequential(
            nn.Linear(peer_features, peer_hidden),
            nn.ReLU(),
            nn.Linear(peer_hidden, peer_hidden),
            nn.ReLU(),
        )

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        encoded = self.phi(obs["peers"])  # (B, P, h), every entry >= 0 after the ReLU
        mask = obs["peer_mask"].unsqueeze(-1)  # (B, P, 1)
        # Because encoded >= 0, zeroing the empty slots and taking the max equals the max over
        # the real peers alone, and an empty set gives exactly zeros: no -inf bookkeeping.
        pooled = (encoded * mask).amax(dim=1)  # (B, h)
        return torch.cat([obs["ego"], pooled], dim=1)


def policy_kwargs(peer_hidden: int, log_std_init: float) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for ``MultiInputPolicy`` with the Deep Sets encoder and SB3's default heads.

    Adam is the fused kernel: one call for every parameter instead of a few small ops per
    parameter tensor, which cut SB3's update at batch 64 by about a quarter on this CPU.
    """
    return {
        "features_extractor_class": DeepSetsExtractor,
        "features_extractor_kwargs": {"peer_hidden": peer_hidden},
        "log_std_init": log_std_init,
        "optimizer_kwargs": {"fused": True},
    }
