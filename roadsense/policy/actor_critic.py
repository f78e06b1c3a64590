"""Lean forward paths through SB3's actor-critic policy, for the rollout workers and the PPO update.

SB3's own paths build a distribution object and copy the observation dict on every call;
at batch 1 (a worker's step) or 64 (a minibatch) that overhead is most of the cost. These
compute the same numbers from the same modules (``tests/test_ppo.py`` compares them).
The observations must be float32 tensors already, as the rollouts store them.
"""

from __future__ import annotations

import math

import torch
from stable_baselines3.common.policies import MultiInputActorCriticPolicy

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Actor(torch.nn.Module):
    """The actor half of the policy, sharing its modules: observation ``(B, ...)`` -> Gaussian mean ``(B, A)``."""

    def __init__(self, policy: MultiInputActorCriticPolicy) -> None:
        super().__init__()
        self.features_extractor = policy.pi_features_extractor
        self.policy_net = policy.mlp_extractor.policy_net
        self.action_net = policy.action_net

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.action_net(self.policy_net(self.features_extractor(obs)))


def evaluate(policy: MultiInputActorCriticPolicy, obs: dict[str, torch.Tensor],
             actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``(B,)`` and log-probabilities ``(B,)`` of ``actions`` ``(B, A)``: SB3's ``evaluate_actions``."""
    latent_pi, latent_vf = policy.mlp_extractor(policy.features_extractor(obs))
    mean = policy.action_net(latent_pi)
    log_std = policy.log_std
    log_prob = (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - LOG_SQRT_2PI).sum(dim=1)
    return policy.value_net(latent_vf).flatten(), log_prob


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian with these log standard deviations (the same for every state)."""
    return (0.5 + LOG_SQRT_2PI + log_std).sum()
