"""The trained actor as ONNX graphs, written node by node from the policy's own weights.

Three graphs, all float32, opset :data:`OPSET`, batch dimension dynamic (named ``batch``,
or ``peer_rows`` for the encoder; the car runs batch 1):

* ``peer_encoder.onnx``: ``peer`` (peer_rows, 6) -> ``embedding`` (peer_rows, H). The shared
  per-peer MLP phi (6 -> H -> H, ReLU), one peer row at a time.
* ``policy_head.onnx``: ``ego`` (batch, 6 K) and ``pooled`` (batch, H) -> ``action_mean``
  (batch, 1) and ``action`` (batch, 1) = ``action_mean`` clipped to [0, 1]. ``pooled`` is the
  masked max over the real peers' embeddings (zeros when there is none).
* ``policy.onnx``: ``ego`` (batch, 6 K), ``peers`` (batch, 8, 6), ``peer_mask`` (batch, 8)
  -> ``action_mean``, ``action``: the whole Dict-observation policy, the masked max-pool inside.

Why by hand rather than ``torch.onnx.export``: the actor is a handful of dense layers, and
writing them as ``Gemm`` nodes (weights kept in torch's (out, in) layout, ``transB=1``) gives
fixed names, a fixed small op set (Gemm, Relu, Tanh, Reshape, Greater, Unsqueeze, Where,
ReduceMax, Concat, Clip) that the C reference mirrors one to one, and per-output-channel INT8
weights along the axis the quantiser expects. It takes milliseconds and needs neither
onnxscript (torch's default exporter) nor the deprecated TorchScript exporter. Parity with the
torch policy is measured on every export (:mod:`roadsense.export.parity`).

The mask is read as ``peer_mask > 0.5`` and empty slots are replaced by zeros with ``Where``
(not multiplied by the mask as in training): a masked slot holding NaN or infinity then
still cannot reach the output. For 0/1 masks, which is all the env produces, the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from gymnasium import spaces
from onnx import TensorProto, helper, numpy_helper
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from roadsense.env.observation import MAX_PEERS, PEER_FEATURES
from roadsense.errors import UserError
from roadsense.policy.deep_sets import DeepSetsExtractor

OPSET = 17  # ReduceMax still takes axes as an attribute; every runtime that speaks 13+ reads it
BATCH = "batch"
PEER_ROWS = "peer_rows"
MASK_THRESHOLD = 0.5  # peer_mask is 0 or 1; anything above the half counts as a real peer
ACTION_LOW, ACTION_HIGH = 0.0, 1.0  # the env's Box([0], [1]); SB3's predict clips to it

Activation = Literal["relu", "tanh", "none"]
_ACTIVATIONS: dict[type[nn.Module], Activation] = {nn.ReLU: "relu", nn.Tanh: "tanh"}
_ONNX_OP = {"relu": "Relu", "tanh": "Tanh"}


class ExportError(UserError):
    """The model given cannot be exported as it is: an architecture the graphs cannot express, a
    VecNormalize that scaled observations, or settings that do not match it (exit 2)."""


@dataclass(frozen=True)
class Dense:
    """One layer y = act(x W^T + b): ``weight`` (out, in) float32, ``bias`` (out,) float32."""

    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    activation: Activation


@dataclass(frozen=True)
class PolicyWeights:
    """The actor's weights, in the order they are applied.

    ``phi``: the per-peer MLP (6 -> H -> H). ``head``: SB3's policy net (Tanh layers) then its
    action net (linear, 1 output). ``ego_dim`` = 6 x frame_stack.
    """

    phi: tuple[Dense, ...]
    head: tuple[Dense, ...]
    ego_dim: int

    @property
    def embedding_dim(self) -> int:
        return int(self.phi[-1].weight.shape[0])


def policy_weights(policy: ActorCriticPolicy) -> PolicyWeights:
    """Read the actor of a Deep Sets PPO policy; ExportError for anything the graphs cannot express."""
    if policy.squash_output or getattr(policy, "use_sde", False):
        raise ExportError("the policy squashes its output or uses gSDE; the exported graphs assume a plain Gaussian mean")
    extractor = policy.pi_features_extractor  # the actor's (the same module when features are shared)
    if not isinstance(extractor, DeepSetsExtractor):
        raise ExportError(f"the features extractor is {type(extractor).__name__}, not DeepSetsExtractor")
    phi = _dense_layers(extractor.phi)
    head = _dense_layers(policy.mlp_extractor.policy_net) + _dense_layers(policy.action_net)
    if phi[0].weight.shape[1] != PEER_FEATURES or head[-1].weight.shape[0] != 1:
        raise ExportError(f"expected {PEER_FEATURES} peer features in and 1 action out, got "
                          f"{phi[0].weight.shape[1]} and {head[-1].weight.shape[0]}")
    observation_space = policy.observation_space  # SB3 types it as any Space; DeepSetsExtractor's is a Dict of Boxes
    assert isinstance(observation_space, spaces.Dict) and isinstance(observation_space["ego"], spaces.Box)
    ego_dim = int(observation_space["ego"].shape[0])
    if head[0].weight.shape[1] != ego_dim + phi[-1].weight.shape[0]:
        raise ExportError("the head's input is not ego + pooled embedding")
    return PolicyWeights(phi, head, ego_dim)


def _dense_layers(module: nn.Module) -> tuple[Dense, ...]:
    """A Linear, or a Sequential of Linear layers each followed by at most one ReLU/Tanh."""
    modules = list(module) if isinstance(module, nn.Sequential) else [module]
    layers: list[Dense] = []
    for m in modules:
        if isinstance(m, nn.Linear):
            layers.append(Dense(m.weight.detach().numpy().astype(np.float32),
                                m.bias.detach().numpy().astype(np.float32), "none"))
        elif type(m) in _ACTIVATIONS and layers and layers[-1].activation == "none":
            layers[-1] = Dense(layers[-1].weight, layers[-1].bias, _ACTIVATIONS[type(m)])
        else:
            raise ExportError(f"cannot export a {type(m).__name__} here (only Linear followed by ReLU or Tanh)")
    return tuple(layers)


class _Builder:
    """Collects the nodes and initialisers of one graph."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: npt.NDArray[np.float32] | npt.NDArray[np.int64]) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: int | list[int]) -> str:
        # make_node takes the node's attributes as **kwargs: Any, beside keywords (doc_string, domain)
        # that no attribute here is named after.
        onnx_attrs: dict[str, Any] = attrs
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **onnx_attrs))
        return output

    def dense(self, prefix: str, layers: tuple[Dense, ...], x: str) -> str:
        """``x`` (rows, in) through ``layers``: Gemm with the (out, in) weight transposed, then the activation."""
        for i, layer in enumerate(layers):
            w = self.const(f"{prefix}.{i}.weight", layer.weight)
            b = self.const(f"{prefix}.{i}.bias", layer.bias)
            x = self.node("Gemm", [x, w, b], f"{prefix}.{i}.gemm", transB=1)
            if layer.activation != "none":
                x = self.node(_ONNX_OP[layer.activation], [x], f"{prefix}.{i}.{layer.activation}")
        return x

    def head(self, weights: PolicyWeights, ego: str, pooled: str) -> list[onnx.ValueInfoProto]:
        """concat(ego, pooled) -> ``action_mean`` and ``action``; returns the two outputs."""
        features = self.node("Concat", [ego, pooled], "features", axis=1)  # the extractor's order: ego first
        mean = self.node("Identity", [self.dense("head", weights.head, features)], "action_mean")
        low = self.const("action_low", np.array(ACTION_LOW, np.float32))
        high = self.const("action_high", np.array(ACTION_HIGH, np.float32))
        self.node("Clip", [mean, low, high], "action")
        return [_tensor("action_mean", [BATCH, 1]), _tensor("action", [BATCH, 1])]

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="roadsense", doc_string=doc)
        model.ir_version = 8  # the IR of opset 17: readable by every runtime that reads the opset
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model


def _tensor(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def peer_encoder_graph(weights: PolicyWeights) -> onnx.ModelProto:
    """``peer`` (peer_rows, 6) float32 -> ``embedding`` (peer_rows, H) float32, every entry >= 0."""
    b = _Builder()
    b.node("Identity", [b.dense("phi", weights.phi, "peer")], "embedding")
    return b.model("peer_encoder", [_tensor("peer", [PEER_ROWS, PEER_FEATURES])],
                   [_tensor("embedding", [PEER_ROWS, weights.embedding_dim])],
                   "One peer's 6 features (docs/design.md, 'Observation') -> its embedding; ReLU output, >= 0.")


def policy_head_graph(weights: PolicyWeights) -> onnx.ModelProto:
    """``ego`` (batch, 6 K), ``pooled`` (batch, H) float32 -> ``action_mean``, ``action`` (batch, 1) float32."""
    b = _Builder()
    outputs = b.head(weights, "ego", "pooled")
    return b.model("policy_head", [_tensor("ego", [BATCH, weights.ego_dim]), _tensor("pooled", [BATCH, weights.embedding_dim])],
                   outputs, "Ego frames and the pooled peer embedding -> the deterministic brake action.")


def policy_graph(weights: PolicyWeights) -> onnx.ModelProto:
    """``ego`` (batch, 6 K), ``peers`` (batch, 8, 6), ``peer_mask`` (batch, 8) float32 -> ``action_mean``, ``action``."""
    b = _Builder()
    h = weights.embedding_dim
    rows = b.node("Reshape", ["peers", b.const("peer_rows_shape", np.array([-1, PEER_FEATURES], np.int64))], "peer_rows")
    encoded = b.node("Reshape", [b.dense("phi", weights.phi, rows),
                                 b.const("encoded_shape", np.array([-1, MAX_PEERS, h], np.int64))], "encoded")
    real = b.node("Greater", ["peer_mask", b.const("mask_threshold", np.array(MASK_THRESHOLD, np.float32))], "real")
    real = b.node("Unsqueeze", [real, b.const("slot_axis", np.array([2], np.int64))], "real_slots")
    # ReLU embeddings are >= 0, so zeros in the empty slots leave the max over the real peers
    # unchanged and give exactly zeros for an empty set, as DeepSetsExtractor does.
    kept = b.node("Where", [real, encoded, b.const("zero", np.array(0.0, np.float32))], "kept")
    pooled = b.node("ReduceMax", [kept], "pooled", axes=[1], keepdims=0)
    outputs = b.head(weights, "ego", pooled)
    inputs = [_tensor("ego", [BATCH, weights.ego_dim]), _tensor("peers", [BATCH, MAX_PEERS, PEER_FEATURES]),
              _tensor("peer_mask", [BATCH, MAX_PEERS])]
    return b.model("policy", inputs, outputs,
                   "The Deep Sets braking policy on raw observations (no normalisation): Dict observation -> brake.")
