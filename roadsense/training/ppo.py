"""The PPO update: the loss of SB3's ``PPO.train``, with its gradients derived by hand.

At batch 128 an autograd minibatch is ~1 ms of arithmetic and ~3 ms of per-call overhead
(~140 forward and ~280 backward operations at 10-20 us each on a cloud vCPU), so the update
costs what it calls. The loss is SB3's: clipped surrogate on per-minibatch normalised
advantages, MSE value loss against the GAE returns, entropy bonus, gradient norm clipped,
one ``torch.optim.Adam`` step per minibatch (the policy's own optimizer, so its state is
what SB3 saves and resumes), a fresh shuffle every epoch. What is leaner:

- the batch is shuffled once per epoch and each minibatch is a slice of it, instead of
  gathering and converting every field of every minibatch;
- the forward pass is ``PolicyNet.forward`` (no distribution object, no autograd graph) and
  the backward pass ``PolicyNet.backward``, the loss's derivatives written out below, into
  gradients that live in one flat buffer, so clipping their norm is two calls;
- the entropy of this state-independent Gaussian depends on ``log_std`` alone, so it enters
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

from roadsense.policy.actor_critic import PolicyNet, gaussian_entropy, gaussian_log_prob
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
    net = PolicyNet(policy)
    optimizer = policy.optimizer
    log_std = policy.log_std
    gradients = _flat_gradients(list(policy.parameters()))
    n = len(batch)
    policy_losses, value_losses, log_ratios = [], [], []
    with torch.no_grad():
        for _ in range(n_epochs):
            order = torch.from_numpy(rng.permutation(n))
            obs = {key: value[order] for key, value in batch.obs.items()}
            actions, old_log_prob = batch.actions[order], batch.old_log_prob[order]
            advantages, returns = batch.advantages[order], batch.returns[order]
            for start in range(0, n, batch_size):
                mb = slice(start, start + batch_size)
                values, mean, saved = net.forward({key: value[mb] for key, value in obs.items()})
                size = len(values)
                advantage = advantages[mb]
                if size > 1:
                    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
                inverse_std = log_std.neg().exp()
                z = (actions[mb] - mean) * inverse_std
                log_ratio = gaussian_log_prob(z, log_std) - old_log_prob[mb]
                ratio = log_ratio.exp()
                unclipped, clipped = advantage * ratio, advantage * ratio.clamp(1 - clip_range, 1 + clip_range)
                policy_loss = -torch.min(unclipped, clipped).mean()
                value_error = values - returns[mb]
                value_loss = value_error.square().mean()
                entropy = gaussian_entropy(log_std) if ent_coef > 0 else None

                # d loss / d log-prob: the surrogate's slope where min() takes the unclipped
                # term (where they are equal, torch's min and clamp gradients add up to the same).
                d_log_prob = advantage * (unclipped <= clipped) * ratio * (-1.0 / size)
                d_log_prob = d_log_prob.unsqueeze(1)
                net.backward(saved, value_error * (2.0 * VF_COEF / size), d_log_prob * z * inverse_std)
                torch.sum(d_log_prob * (z.square() - 1), dim=0, out=log_std.grad)
                if ent_coef > 0:
                    log_std.grad -= ent_coef  # d(-ent_coef * entropy) / d log_std
                # torch.nn.utils.clip_grad_norm_, on the one flat buffer all gradients live in.
                gradients.mul_((MAX_GRAD_NORM / (torch.linalg.vector_norm(gradients) + 1e-6)).clamp(max=1.0))
                optimizer.step()

                policy_losses.append(policy_loss)
                value_losses.append(value_loss)
                log_ratios.append(log_ratio)

        sizes = torch.tensor([len(r) for r in log_ratios])
        log_ratio = torch.cat(log_ratios)
        ratio = log_ratio.exp()
        clipped = ((ratio - 1).abs() > clip_range).float()
        kl = (ratio - 1) - log_ratio  # the low-variance estimator SB3 uses
        last_epoch = math.ceil(n / batch_size)
        loss = policy_loss + VF_COEF * value_loss - (ent_coef * entropy if entropy is not None else 0.0)
        return UpdateStats(
            policy_loss=torch.stack(policy_losses).mean().item(),
            value_loss=torch.stack(value_losses).mean().item(),
            entropy_loss=-gaussian_entropy(log_std).item(),
            loss=float(loss),
            approx_kl=_minibatch_means(kl, sizes)[-last_epoch:].mean().item(),
            clip_fraction=_minibatch_means(clipped, sizes).mean().item(),
            explained_variance=float(explained_variance(batch.old_values.numpy(), batch.returns.numpy())),
            std=log_std.exp().mean().item(),
        )


def _flat_gradients(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """Give every parameter a ``.grad`` that is a view into one flat buffer, and return the buffer."""
    flat = torch.zeros(sum(p.numel() for p in parameters))
    offset = 0
    for p in parameters:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def _minibatch_means(values: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Per-minibatch means of ``values``, the minibatches laid end to end with these ``sizes``."""
    minibatch = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    return torch.zeros(len(sizes)).index_add_(0, minibatch, values) / sizes
