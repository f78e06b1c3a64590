"""Lean paths through SB3's actor-critic policy: a worker's step, the batch evaluation, the PPO update.

The network is tiny (a 6 -> h -> h peer encoder, two 64-64 MLPs, one-unit heads), so what
SB3's own paths cost is almost all per-call overhead: distribution objects, observation
copies, and autograd recording and replaying ~140 forward and ~280 backward operations per
minibatch. These paths compute the same numbers from the same weights with fewer calls:

- :class:`NumpyActor`: the Gaussian's mean for one observation in numpy (a worker's step;
  numpy's per-call cost is a fraction of torch's at batch 1);
- :class:`PolicyNet`: values and means for a batch in torch, and the hand-derived backward
  pass that writes every parameter's gradient (the PPO update; no autograd graph).

Both read the layers from the SB3 policy through :class:`Layout`, which refuses a policy
whose structure they do not implement. ``tests/test_ppo.py`` and ``tests/test_rollout.py``
compare them with SB3's ``get_distribution``, ``evaluate_actions`` and autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from torch import nn

from roadsense.policy.deep_sets import DeepSetsExtractor

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class Dense:
    """One ``nn.Linear`` of the policy and the activation after it (None for an output head)."""

    linear: nn.Linear
    name: str  # its state_dict prefix, e.g. "mlp_extractor.policy_net.0"
    activation: type[nn.Module] | None  # nn.ReLU or nn.Tanh


@dataclass(frozen=True)
class Layout:
    """The policy's layers in forward order: the peer encoder phi, the actor and the critic.

    ``pi`` is the policy MLP followed by ``action_net``; ``vf`` the value MLP followed by
    ``value_net``. Both start from the shared Deep Sets features ``(ego, pooled phi)``.
    """

    phi: list[Dense]
    pi: list[Dense]
    vf: list[Dense]

    @classmethod
    def of(cls, policy: MultiInputActorCriticPolicy) -> "Layout":
        """Read the layers, checking every assumption the lean paths make about them."""
        if not isinstance(policy.features_extractor, DeepSetsExtractor) or not policy.share_features_extractor:
            raise ValueError("the lean policy paths need one Deep Sets extractor shared by actor and critic")
        if type(policy.action_dist) is not DiagGaussianDistribution:
            raise ValueError(f"the lean policy paths implement a diagonal Gaussian, not {type(policy.action_dist)}")
        names = {id(module): name for name, module in policy.named_modules()}
        phi = _dense(policy.features_extractor.phi, names)
        # The extractor's masked max-pool relies on non-negative encodings (deep_sets.py).
        if not phi or phi[-1].activation is not nn.ReLU:
            raise ValueError("the peer encoder phi must end in a ReLU")
        head = [Dense(policy.action_net, names[id(policy.action_net)], None)]
        value = [Dense(policy.value_net, names[id(policy.value_net)], None)]
        return cls(phi=phi, pi=_dense(policy.mlp_extractor.policy_net, names) + head,
                   vf=_dense(policy.mlp_extractor.value_net, names) + value)


def _dense(sequential: nn.Module, names: dict[int, str]) -> list[Dense]:
    """``Sequential(Linear, activation, Linear, activation, ...)`` -> its Dense layers."""
    modules = list(sequential)
    if len(modules) % 2:
        raise ValueError(f"expected Linear/activation pairs, got {sequential}")
    layers = []
    for linear, activation in zip(modules[::2], modules[1::2]):
        if type(linear) is not nn.Linear or type(activation) not in (nn.ReLU, nn.Tanh):
            raise ValueError(f"expected Linear/ReLU or Linear/Tanh pairs, got {sequential}")
        layers.append(Dense(linear, names[id(linear)], type(activation)))
    return layers


def gaussian_log_prob(z: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density ``(B,)`` of a diagonal Gaussian at standardised actions ``z = (a - mean) / std`` ``(B, A)``."""
    return -0.5 * z.square().sum(dim=1) - (log_std.sum() + len(log_std) * LOG_SQRT_2PI)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian with these log standard deviations (the same for every state)."""
    return (0.5 + LOG_SQRT_2PI + log_std).sum()


class NumpyActor:
    """The Gaussian a worker acts with, in numpy: weights as sent to the worker, one observation per call.

    A worker's forward pass is ~20 operations on arrays of a few hundred numbers; torch
    spends ~150 us per step on dispatch there, numpy a fraction of it.
    """

    def __init__(self, layout: Layout) -> None:
        self._phi = [(layer.name, layer.activation) for layer in layout.phi]
        self._pi = [(layer.name, layer.activation) for layer in layout.pi]
        self._weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.std = np.empty(0, np.float32)

    def load(self, weights: dict[str, np.ndarray]) -> None:
        """Take the policy's ``state_dict`` as numpy arrays (float32)."""
        # Stored as (in, out), contiguous: x @ w without a transpose per call.
        self._weights = {name: (np.ascontiguousarray(weights[f"{name}.weight"].T), weights[f"{name}.bias"])
                         for name, _ in self._phi + self._pi}
        self.std = np.exp(weights["log_std"])

    def mean(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The Gaussian's mean ``(A,)`` for one observation (``ego`` (E,), ``peers`` (P, F), ``peer_mask`` (P,))."""
        encoded = self._mlp(self._phi, obs["peers"])  # (P, h), >= 0
        pooled = (encoded * obs["peer_mask"][:, None]).max(axis=0)  # the extractor's masked max-pool
        return self._mlp(self._pi, np.concatenate([obs["ego"], pooled]))

    def _mlp(self, layers: list[tuple[str, type[nn.Module] | None]], x: np.ndarray) -> np.ndarray:
        for name, activation in layers:
            weight, bias = self._weights[name]
            x = x @ weight + bias
            if activation is nn.ReLU:
                np.maximum(x, 0, out=x)
            elif activation is nn.Tanh:
                np.tanh(x, out=x)
        return x


@dataclass
class Activations:
    """What the backward pass needs from a forward pass over a batch of ``B``."""

    phi: list[torch.Tensor]  # phi's input (B*P, F), then each layer's output (B*P, h)
    mask: torch.Tensor  # (B, P, 1)
    masked: torch.Tensor  # (B, P, h): phi's output times the mask
    pooled: torch.Tensor  # (B, h): its max over the peers
    pi: list[torch.Tensor]  # the features (B, E + h), then each actor layer's output; the last is the mean (B, A)
    vf: list[torch.Tensor]  # the features, then each critic layer's output; the last is the value (B, 1)


class PolicyNet:
    """SB3's forward pass for whole batches, and its backward pass derived by hand.

    Reads the policy's parameters in place, so it follows every optimizer step. Call under
    ``torch.no_grad()``: no autograd graph is recorded, the gradients are computed directly.
    """

    def __init__(self, policy: MultiInputActorCriticPolicy) -> None:
        self.layout = Layout.of(policy)
        self.log_std = policy.log_std

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Activations]:
        """Values ``(B,)``, Gaussian means ``(B, A)`` and the activations for :meth:`backward`.

        ``obs`` holds float32 tensors ``ego`` (B, E), ``peers`` (B, P, F), ``peer_mask`` (B, P).
        """
        peers = obs["peers"]
        batch, n_peers, _ = peers.shape
        phi = _forward(self.layout.phi, peers.reshape(batch * n_peers, -1))
        mask = obs["peer_mask"].unsqueeze(-1)
        masked = phi[-1].view(batch, n_peers, -1) * mask
        pooled = masked.amax(dim=1)
        features = torch.cat([obs["ego"], pooled], dim=1)
        pi, vf = _forward(self.layout.pi, features), _forward(self.layout.vf, features)
        return vf[-1].flatten(), pi[-1], Activations(phi, mask, masked, pooled, pi, vf)

    def backward(self, saved: Activations, d_values: torch.Tensor, d_mean: torch.Tensor) -> None:
        """Write ``d loss / d parameter`` into every layer's ``.grad`` (which must exist), given
        ``d loss / d values`` ``(B,)`` and ``d loss / d means`` ``(B, A)``. ``log_std`` is the caller's.
        """
        d_features = _backward(self.layout.pi, saved.pi, d_mean) + _backward(self.layout.vf, saved.vf,
                                                                              d_values.unsqueeze(1))
        d_pooled = d_features[:, -saved.pooled.shape[1]:]
        # amax shares the gradient equally among tied maxima, as torch's amax backward does.
        tied = saved.masked == saved.pooled.unsqueeze(1)
        d_masked = tied * (d_pooled / tied.sum(dim=1)).unsqueeze(1)
        _backward(self.layout.phi, saved.phi, (d_masked * saved.mask).flatten(0, 1), input_grad=False)


def _forward(layers: list[Dense], x: torch.Tensor) -> list[torch.Tensor]:
    """``[x, output of layer 1, ..., output of the last layer]``."""
    outputs = [x]
    for layer in layers:
        x = torch.addmm(layer.linear.bias, x, layer.linear.weight.t())
        if layer.activation is nn.ReLU:
            x.relu_()
        elif layer.activation is nn.Tanh:
            x.tanh_()
        outputs.append(x)
    return outputs


def _backward(layers: list[Dense], outputs: list[torch.Tensor], grad: torch.Tensor,
              input_grad: bool = True) -> torch.Tensor | None:
    """Backpropagate ``grad`` (d loss / d last output) through ``layers``; returns d loss / d input."""
    for i in reversed(range(len(layers))):
        linear, output = layers[i].linear, outputs[i + 1]
        if layers[i].activation is nn.ReLU:
            grad = grad * (output > 0)
        elif layers[i].activation is nn.Tanh:
            grad = torch.addcmul(grad, grad, output.square(), value=-1)  # grad * (1 - tanh^2)
        torch.mm(grad.t(), outputs[i], out=linear.weight.grad)
        torch.sum(grad, dim=0, out=linear.bias.grad)
        if i or input_grad:
            grad = grad @ linear.weight
    return grad if input_grad else None
