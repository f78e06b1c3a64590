"""The PPO update: the loss of SB3's ``PPO.train``, its gradients derived by hand, in numpy.

At batch 128 an autograd minibatch is ~1 ms of arithmetic and ~3 ms of per-call overhead
(~140 forward and ~280 backward operations at 10-20 us each on a cloud vCPU), so the update
costs what it calls. The loss is SB3's: clipped surrogate on per-minibatch normalised
advantages, MSE value loss against the GAE returns, entropy bonus, gradient norm clipped,
one ``torch.optim.Adam`` step per minibatch (the policy's own optimizer, so its state is
what SB3 saves and resumes), a fresh shuffle every epoch. What is leaner:

- the forward pass is ``PolicyNet.forward`` in numpy over numpy views of the policy's
  parameters, and the backward pass ``PolicyNet.backward`` plus the loss's derivatives
  written out below, into gradients that are numpy views of the parameters' ``.grad``,
  which all live in one flat buffer (so clipping their norm is two calls); Adam then steps
  the parameters in place, where the next forward pass reads them;
- the batch is shuffled once per epoch and each minibatch is a slice of it;
- the entropy of this state-independent Gaussian depends on ``log_std`` alone, so it enters
  the loss only when ``ent_coef > 0`` and is logged once per update;
- the statistics are computed once, at the end, from the saved log-ratios.

``tests/test_ppo.py`` checks the result against SB3's ``PPO.train`` on the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import explained_variance

from roadsense.arrays import Weights
from roadsense.policy.actor_critic import PolicyNet, blas_threads, gaussian_entropy, gaussian_log_prob
from roadsense.training.rollout import RolloutBatch

VF_COEF = 0.5  # SB3's defaults, which the reference settings keep (docs/design.md, "PPO settings")
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


def learning_rate_at(learning_rate: float, schedule: str, steps_done: int, total_steps: int) -> float:
    """The Adam step size for an update that starts after ``steps_done`` of ``total_steps`` env steps.

    ``linear`` decays to 0 at ``total_steps`` (as CleanRL's ``anneal_lr`` and SB3's linear
    schedules do): late updates then only refine the policy instead of moving it away from
    what it learned.
    """
    if schedule == "constant":
        return learning_rate
    return learning_rate * max(0.0, 1.0 - steps_done / total_steps)


def ppo_update(policy: ActorCriticPolicy, batch: RolloutBatch, n_epochs: int, batch_size: int,
               clip_range: float, ent_coef: float, learning_rate: float, rng: np.random.Generator) -> UpdateStats:
    """``n_epochs`` passes over ``batch`` in shuffled minibatches of ``batch_size``; updates ``policy`` in place."""
    policy.set_training_mode(True)
    for group in policy.optimizer.param_groups:  # the config's rate, not the one a checkpoint's optimizer saved
        group["lr"] = learning_rate
    flat_grads, grads = _flat_gradients(policy)
    net = PolicyNet.of(policy, grads)
    log_std = net.log_std
    n = len(batch)
    policy_losses, value_losses, log_ratios = [], [], []
    with blas_threads(torch.get_num_threads()):
        for _ in range(n_epochs):
            order = rng.permutation(n)
            obs = {key: value[order] for key, value in batch.obs.items()}
            actions, old_log_prob = batch.actions[order], batch.old_log_prob[order]
            advantages, returns = batch.advantages[order], batch.returns[order]
            for start in range(0, n, batch_size):
                mb = slice(start, start + batch_size)
                values, mean, saved = net.forward({key: value[mb] for key, value in obs.items()})
                size = len(values)
                advantage = advantages[mb]
                if size > 1:
                    advantage = (advantage - advantage.mean()) / (advantage.std(ddof=1) + 1e-8)
                inverse_std = np.exp(-log_std)
                z = (actions[mb] - mean) * inverse_std
                log_ratio = gaussian_log_prob(z, log_std) - old_log_prob[mb]
                ratio = np.exp(log_ratio)
                unclipped, clipped = advantage * ratio, advantage * np.clip(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -np.minimum(unclipped, clipped).mean()
                value_error = values - returns[mb]
                value_loss = np.square(value_error).mean()
                entropy = gaussian_entropy(log_std)  # before this step: the loss SB3 logs is the last minibatch's

                # d loss / d log-prob: the surrogate's slope where min() takes the unclipped
                # term (where they are equal, torch's min and clamp gradients add up to the same).
                d_log_prob = (advantage * (unclipped <= clipped) * ratio * (-1.0 / size))[:, None]
                net.backward(saved, value_error * (2.0 * VF_COEF / size), d_log_prob * z * inverse_std)
                (d_log_prob * (np.square(z) - 1)).sum(axis=0, out=grads["log_std"])
                grads["log_std"] -= ent_coef  # d(-ent_coef * entropy) / d log_std
                # torch.nn.utils.clip_grad_norm_, on the one buffer all gradients live in.
                flat_grads *= min(1.0, MAX_GRAD_NORM / (float(np.linalg.norm(flat_grads)) + 1e-6))
                policy.optimizer.step()

                policy_losses.append(policy_loss)
                value_losses.append(value_loss)
                log_ratios.append(log_ratio)

    sizes = np.array([len(r) for r in log_ratios])
    log_ratio = np.concatenate(log_ratios)
    ratio = np.exp(log_ratio)
    clip_fractions = _minibatch_means((np.abs(ratio - 1) > clip_range).astype(np.float32), sizes)
    kl = _minibatch_means((ratio - 1) - log_ratio, sizes)  # the low-variance estimator SB3 uses
    return UpdateStats(
        policy_loss=float(np.mean(policy_losses)),
        value_loss=float(np.mean(value_losses)),
        entropy_loss=-gaussian_entropy(log_std),
        loss=float(policy_loss + VF_COEF * value_loss - ent_coef * entropy),
        approx_kl=float(kl[-math.ceil(n / batch_size):].mean()),
        clip_fraction=float(clip_fractions.mean()),
        explained_variance=float(explained_variance(batch.old_values, batch.returns)),
        std=float(np.exp(log_std).mean()),
    )


def _flat_gradients(policy: ActorCriticPolicy) -> tuple[npt.NDArray[np.float32], Weights]:
    """Give every parameter a ``.grad`` that is a view into one flat buffer.

    Returns the buffer and, by parameter name, numpy views of each ``.grad``.
    """
    parameters = dict(policy.named_parameters())
    flat = torch.zeros(sum(p.numel() for p in parameters.values()))
    offset = 0
    grads: Weights = {}
    for name, p in parameters.items():
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        grads[name] = p.grad.numpy()
        offset += p.numel()
    return flat.numpy(), grads


def _minibatch_means(values: npt.NDArray[np.float32], sizes: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Per-minibatch means of ``values``, the minibatches laid end to end with these ``sizes``."""
    means: npt.NDArray[np.float64] = np.add.reduceat(values, np.cumsum(sizes) - sizes) / sizes
    return means
