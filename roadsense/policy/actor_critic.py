"""The policy's network in numpy: a worker's step, the batch evaluation, and the PPO update's gradients.

The network is tiny (a 6 -> h -> h peer encoder, two 64-64 MLPs, one-unit heads), so what
SB3's torch paths cost is almost all per-call overhead: distribution objects, observation
copies, torch's dispatch (~150 us per step for a worker's batch-of-1 forward pass) and
autograd recording and replaying ~140 forward and ~280 backward operations per minibatch.
:class:`PolicyNet` computes the same numbers from the same weights in numpy, whose per-call
cost and small elementwise kernels (tanh, comparisons) are several times cheaper, with a
backward pass derived by hand. The weights are numpy views: of the arrays a worker receives,
or of the trainer's torch parameters themselves, so the torch optimizer's in-place steps
are what the next forward pass reads.

:class:`Layout` reads the layers from the SB3 policy and refuses a policy whose structure
``PolicyNet`` does not implement. ``tests/test_ppo.py`` and ``tests/test_rollout.py`` compare
it with SB3's ``get_distribution``, ``evaluate_actions`` and autograd.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np
import numpy.typing as npt
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from roadsense.arrays import Observation, Weights
from roadsense.policy.deep_sets import DeepSetsExtractor

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class Dense:
    """One ``nn.Linear`` of the policy, by its state_dict prefix, and the activation after it."""

    name: str  # e.g. "mlp_extractor.policy_net.0": weights f"{name}.weight" (out, in), f"{name}.bias" (out,)
    activation: type[nn.Module] | None  # nn.ReLU, nn.Tanh, or None for an output head


@dataclass(frozen=True)
class Layout:
    """The policy's layers in forward order: the peer encoder phi, the actor and the critic.

    ``pi`` is the policy MLP followed by ``action_net``; ``vf`` the value MLP followed by
    ``value_net``. Both start from the shared Deep Sets features ``(ego, pooled phi)``.
    """

    phi: tuple[Dense, ...]
    pi: tuple[Dense, ...]
    vf: tuple[Dense, ...]

    @classmethod
    def of(cls, policy: ActorCriticPolicy) -> "Layout":
        """Read the layers, checking every assumption :class:`PolicyNet` makes about them (any
        actor-critic that passes is one: SB3 types ``PPO.policy`` as the base class)."""
        if not isinstance(policy.features_extractor, DeepSetsExtractor) or not policy.share_features_extractor:
            raise ValueError("PolicyNet needs one Deep Sets extractor shared by actor and critic")
        if type(policy.action_dist) is not DiagGaussianDistribution:
            raise ValueError(f"PolicyNet implements a diagonal Gaussian, not {type(policy.action_dist).__name__}")
        names = {id(module): name for name, module in policy.named_modules()}
        phi = _dense(policy.features_extractor.phi, names)
        # The extractor's masked max-pool relies on non-negative encodings (deep_sets.py).
        if not phi or phi[-1].activation is not nn.ReLU:
            raise ValueError("the peer encoder phi must end in a ReLU")
        action, value = Dense(names[id(policy.action_net)], None), Dense(names[id(policy.value_net)], None)
        return cls(phi=phi, pi=_dense(policy.mlp_extractor.policy_net, names) + (action,),
                   vf=_dense(policy.mlp_extractor.value_net, names) + (value,))


def _dense(sequential: nn.Sequential, names: dict[int, str]) -> tuple[Dense, ...]:
    """``Sequential(Linear, activation, Linear, activation, ...)`` -> its Dense layers."""
    modules = list(sequential)
    # strict=False: an odd count leaves a Linear unpaired, which the check below refuses with a message.
    pairs = list(zip(modules[::2], modules[1::2], strict=False))
    if len(modules) % 2 or any(type(linear) is not nn.Linear or type(activation) not in (nn.ReLU, nn.Tanh)
                               for linear, activation in pairs):
        raise ValueError(f"expected Linear/ReLU or Linear/Tanh pairs, got {sequential}")
    return tuple(Dense(names[id(linear)], type(activation)) for linear, activation in pairs)


def gaussian_log_prob(z: npt.NDArray[np.float32], log_std: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Log-density ``(B,)`` of a diagonal Gaussian at standardised actions ``z = (a - mean) / std`` ``(B, A)``."""
    log_prob: npt.NDArray[np.float32] = -0.5 * np.square(z).sum(axis=1) - (log_std.sum() + len(log_std) * LOG_SQRT_2PI)
    return log_prob


def gaussian_entropy(log_std: npt.NDArray[np.float32]) -> float:
    """Entropy of a diagonal Gaussian with these log standard deviations (the same for every state)."""
    return float((0.5 + LOG_SQRT_2PI + log_std).sum())


@dataclass
class Activations:
    """What the backward pass needs from a forward pass over a batch of ``B``.

    phi runs on the ``R`` occupied peer slots only, in observation order.
    """

    sample: npt.NDArray[np.intp]  # (R,) the observation each occupied slot belongs to (ascending)
    groups: npt.NDArray[np.intp]  # (G,) where each observation with an occupied slot starts in ``sample``
    mask: npt.NDArray[np.float32]  # (R, 1) the occupied slots' mask values
    phi: list[npt.NDArray[np.float32]]  # phi's input (R, F), then each layer's output (R, h)
    masked: npt.NDArray[np.float32]  # (R, h): phi's output times the mask
    pooled: npt.NDArray[np.float32]  # (B, h): the max over each observation's slots (0 for an empty set)
    pi: list[npt.NDArray[np.float32]]  # the features (B, E + h), then each actor layer's output; the last is the mean (B, A)
    vf: list[npt.NDArray[np.float32]]  # the features, then each critic layer's output; the last is the value (B, 1)


class PolicyNet:
    """SB3's actor-critic forward pass for batches of observations, and its backward pass derived by hand.

    Observations are dicts of float32 arrays ``ego`` (B, E), ``peers`` (B, P, F),
    ``peer_mask`` (B, P). Weights are ``state_dict`` names -> float32 arrays, read at every
    call (so they may be views that an optimizer updates in place); ``log_std`` is (A,).

    Args:
        layout: the policy's layers (:meth:`Layout.of`).
        weights: every layer's ``.weight`` and ``.bias``, and ``log_std``.
        grads: the same names -> arrays that :meth:`backward` writes the gradients into; only
            needed for training.
    """

    def __init__(self, layout: Layout, weights: Weights, grads: Weights | None = None) -> None:
        self.layout = layout
        self.weights = weights
        self.grads = grads
        self.log_std = weights["log_std"]

    @classmethod
    def of(cls, policy: ActorCriticPolicy, grads: Weights | None = None) -> "PolicyNet":
        """Over ``policy``'s own parameters (numpy views, so every optimizer step shows at the next call)."""
        return cls(Layout.of(policy), {name: p.detach().numpy() for name, p in policy.named_parameters()}, grads)

    def mean(self, obs: Observation) -> npt.NDArray[np.float32]:
        """The Gaussian's means ``(B, A)``: the actor alone (a worker's step)."""
        return _forward(self.layout.pi, self.weights, self._features(obs).pi[0])[-1]

    def forward(self, obs: Observation) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Activations]:
        """Values ``(B,)``, Gaussian means ``(B, A)`` and the activations for :meth:`backward`."""
        saved = self._features(obs)
        saved.pi = _forward(self.layout.pi, self.weights, saved.pi[0])
        saved.vf = _forward(self.layout.vf, self.weights, saved.vf[0])
        return saved.vf[-1][:, 0], saved.pi[-1], saved

    def backward(self, saved: Activations, d_values: npt.NDArray[np.float32], d_mean: npt.NDArray[np.float32]) -> None:
        """Write ``d loss / d weight`` of every layer into ``grads``, from ``d loss / d values`` ``(B,)``
        and ``d loss / d means`` ``(B, A)``. ``log_std``'s gradient is the caller's (it depends on the loss).
        """
        grads = self.grads
        assert grads is not None, "backward() writes into the grads given to PolicyNet(..., grads)"
        d_features = _backward(self.layout.pi, self.weights, grads, saved.pi, d_mean)
        d_features += _backward(self.layout.vf, self.weights, grads, saved.vf, d_values[:, None])
        d_pooled = d_features[:, -saved.pooled.shape[1]:]
        # A max shares its gradient equally among tied maxima, as torch's amax backward does. Only
        # occupied slots are counted: where an empty slot ties, the max is 0 and phi's final ReLU
        # passes no gradient to any slot that ties with it.
        group = saved.sample[saved.groups]
        tied = saved.masked == saved.pooled[saved.sample]
        ties = np.ones_like(saved.pooled)
        if len(saved.groups):
            ties[group] = np.add.reduceat(tied, saved.groups, axis=0, dtype=np.float32)
        d_encoded = tied * (d_pooled / ties)[saved.sample] * saved.mask
        _backward(self.layout.phi, self.weights, grads, saved.phi, d_encoded, input_grad=False)

    def _features(self, obs: Observation) -> Activations:
        """The Deep Sets features and what led to them; ``pi`` and ``vf`` hold just the features ``(B, E + h)``.

        phi runs on the occupied peer slots only: an empty slot's encoding is multiplied by a
        zero mask, so it adds nothing to the pool (encodings are >= 0) or to any gradient, and
        most slots are empty (3 % were occupied in the built-in scenario's rollouts).
        """
        peers, mask = obs["peers"], obs["peer_mask"]
        batch, n_peers, n_features = peers.shape
        slots = mask.reshape(-1)
        occupied = np.flatnonzero(slots)
        sample = occupied // n_peers
        if batch == 1:  # a worker's step: every slot is the one observation's (and grouping costs ~5 us)
            groups = np.zeros(min(len(occupied), 1), np.intp)
        else:
            groups = np.flatnonzero(np.diff(sample, prepend=-1))
        occupied_mask = slots[occupied][:, None]
        phi = _forward(self.layout.phi, self.weights, peers.reshape(-1, n_features)[occupied])
        masked = phi[-1] * occupied_mask
        # The extractor's masked max-pool: 0 for an empty set, else the max over the occupied
        # slots (the empty slots' zeros never exceed it).
        pooled = np.zeros((batch, masked.shape[1]), np.float32)
        if len(groups):
            pooled[sample[groups]] = np.maximum.reduceat(masked, groups, axis=0)
        features = np.concatenate([obs["ego"], pooled], axis=1)
        return Activations(sample, groups, occupied_mask, phi, masked, pooled, [features], [features])


def _forward(layers: tuple[Dense, ...], weights: Weights, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    """``[x, output of layer 1, ..., output of the last layer]``."""
    outputs = [x]
    for layer in layers:
        x = x @ weights[f"{layer.name}.weight"].T
        x += weights[f"{layer.name}.bias"]
        if layer.activation is nn.ReLU:
            np.maximum(x, 0, out=x)
        elif layer.activation is nn.Tanh:
            np.tanh(x, out=x)
        outputs.append(x)
    return outputs


@overload
def _backward(layers: tuple[Dense, ...], weights: Weights, grads: Weights, outputs: list[npt.NDArray[np.float32]],
              grad: npt.NDArray[np.float32], input_grad: Literal[True] = ...) -> npt.NDArray[np.float32]: ...


@overload
def _backward(layers: tuple[Dense, ...], weights: Weights, grads: Weights, outputs: list[npt.NDArray[np.float32]],
              grad: npt.NDArray[np.float32], input_grad: Literal[False]) -> None: ...


def _backward(layers: tuple[Dense, ...], weights: Weights, grads: Weights, outputs: list[npt.NDArray[np.float32]],
              grad: npt.NDArray[np.float32], input_grad: bool = True) -> npt.NDArray[np.float32] | None:
    """Backpropagate ``grad`` (d loss / d last output) through ``layers``, writing the weights'
    gradients into ``grads``; returns d loss / d input (when ``input_grad``)."""
    for i in reversed(range(len(layers))):
        name, activation, output = layers[i].name, layers[i].activation, outputs[i + 1]
        if activation is nn.ReLU:
            grad = grad * (output > 0)
        elif activation is nn.Tanh:
            grad = grad * (1 - np.square(output))
        np.matmul(grad.T, outputs[i], out=grads[f"{name}.weight"])
        grad.sum(axis=0, out=grads[f"{name}.bias"])
        if i or input_grad:
            grad = grad @ weights[f"{name}.weight"]
    return grad if input_grad else None


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """numpy's OpenBLAS limited to ``n`` threads inside the block.

    OpenBLAS splits a matrix product over every CPU once it passes ~256k multiply-adds (a
    minibatch's peer encoder does), and for products this small the threads cost more than
    they save; on a busy machine a 60 us product took 5 ms. Without numpy's bundled OpenBLAS
    (another BLAS, another platform) this does nothing.
    """
    set_threads, get_threads = openblas_thread_functions()
    if set_threads is None or get_threads is None:  # both or neither: they come from the same library
        yield
        return
    previous = get_threads()
    set_threads(n)
    try:
        yield
    finally:
        set_threads(previous)


def openblas_thread_functions() -> tuple[Callable[[int], object] | None, Callable[[], int] | None]:
    """``openblas_set_num_threads`` and ``openblas_get_num_threads`` of the OpenBLAS numpy wheels bundle."""
    for library in sorted((Path(np.__file__).parent.parent / "numpy.libs").glob("*openblas*")):
        blas = ctypes.CDLL(str(library))  # already loaded by numpy: this returns the same library
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
            setter = getattr(blas, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(blas, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                return setter, getter
    return None, None
