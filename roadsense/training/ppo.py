"""The PPO update: the loss of SB3's ``PPO.train``, with fewer torch calls per minibatch.

At batch 64 a minibatch is microseconds of arithmetic and milliseconds of per-call
overhead (10-20 us per torch call on a cloud vCPU), so the update costs what it calls.
The loss is SB3's: clipped surrogate on per-minibatch normalised advantages, MSE value
loss against the GAE returns, entropy bonus, gradient norm clipped, one optimizer step per
minibatch, a fresh shuffle every epoch. What is leaner:

- the batch is shuffled once per epoch and each minibatch is a slice of it, instead of
  gathering and converting every field of every minibatch;
- the forward pass is ``roadsense.policy.actor_critic.evaluate`` (no distribution object);
  the entropy of this state-independent Gaussian depends on ``log_std`` alone, so it enters
  the loss only when ``ent_coef > 0`` and is logged once per update;
- the statistics are computed once, at the end, from the saved log-ratios.

``tests/test_ppo.py`` checks the result against SB3's ``PPO.train`` on the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from roadsense.policy.actor_critic import evaluate, gaussian_entropy
from roadsense.training.rollout import RolloutBatch

VF_COEF = 0.5  # SB3's defaults, which domain.md's settings keep
MAX_GRAD_NORM = 0.5


@dataclass(frozen=True)
class UpdateStats:
    """Means over the update's minibatches (``approx_kl``: over its last epoch, as SB3 logs it)."""

    policy_loss: float
    value_loss: float
    entropy_loss: float  # after the update (SB3: the mean over minibatches; log_std moves little in one update)
    loss: float  # of the last minibatch
    approx_kl: float
    clip_fraction: float
    explained_variance: float  # of the rollout's values against its returns
    std: float  # the Gaussian's standard deviation after the update


def ppo_update(policy: MultiInputActorCriticPolicy, batch: RolloutBatch, n_epochs: int, batch_size: int,
               clip_range: float, ent_coef: float, rng: np.random.Generator) -> UpdateStats:
    """``n_epochs`` passes over ``batch`` in shuffled minibatches of ``batch_size``; updates ``policy`` in place."""
    policy.set_training_mode(True)
    optimizer = policy.optimizer
    parameters = list(policy.parameters())
    n = len(batch)
    policy_losses, value_losses, log_ratios = [], [], []
    for _ in range(n_epochs):
        order = torch.from_numpy(rng.permutation(n))
        obs = {key: value[order] for key, value in batch.obs.items()}
        actions, old_log_prob = batch.actions[order], batch.old_log_prob[order]
        advantages, returns = batch.advantages[order], batch.returns[order]
        for start in range(0, n, batch_size):
            mb = slice(start, start + batch_size)
            values, log_prob = evaluate(policy, {key: value[mb] for key, value in obs.items()}, actions[mb])
            advantage = advantages[mb]
            if len(advantage) > 1:
                advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
            log_ratio = log_prob - old_log_prob[mb]
            ratio = log_ratio.exp()
            policy_loss = -torch.min(advantage * ratio, advantage * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
            value_loss = F.mse_loss(returns[mb], values)
            loss = policy_loss + VF_COEF * value_loss
            if ent_coef > 0:
                loss = loss - ent_coef * gaussian_entropy(policy.log_std)

            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
            optimizer.step()

            policy_losses.append(policy_loss.detach())
            value_losses.append(value_loss.detach())
            log_ratios.append(log_ratio.detach())

    with torch.no_grad():
        sizes = torch.tensor([len(r) for r in log_ratios])
        log_ratio = torch.cat(log_ratios)
        ratio = log_ratio.exp()
        clipped = ((ratio - 1).abs() > clip_range).float()
        kl = (ratio - 1) - log_ratio  # the low-variance estimator SB3 uses
        last_epoch = math.ceil(n / batch_size)
        return UpdateStats(
            policy_loss=torch.stack(policy_losses).mean().item(),
            value_loss=torch.stack(value_losses).mean().item(),
            entropy_loss=-gaussian_entropy(policy.log_std).item(),
            loss=loss.item(),
            approx_kl=_minibatch_means(kl, sizes)[-last_epoch:].mean().item(),
            clip_fraction=_minibatch_means(clipped, sizes).mean().item(),
            explained_variance=float(explained_variance(batch.old_values.numpy(), batch.returns.numpy())),
            std=policy.log_std.exp().mean().item(),
        )


def _minibatch_means(values: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Per-minibatch means of ``values``, the minibatches laid end to end with these ``sizes``."""
    minibatch = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    return torch.zeros(len(sizes)).index_add_(0, minibatch, values) / sizes
