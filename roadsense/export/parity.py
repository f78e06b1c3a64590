"""How far the exported graphs' outputs are from the torch policy's, on the same observations.

Two references, both from the SB3 model: the Gaussian mean (the actor's raw output, before
any clipping) and SB3's ``predict(deterministic=True)``, which is that mean clipped to the
action space [0, 1] and is what the evaluation drives with. The graphs' ``action_mean`` is
compared with the first and their ``action`` with the second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from roadsense.export.graph import MASK_THRESHOLD
from roadsense.export.runtime import ObsBatch, run_policy

if TYPE_CHECKING:
    from stable_baselines3 import PPO

FLOAT_TOLERANCE = 1e-5  # max abs error of a float graph against torch, in action units (brake intensity)

Outputs: TypeAlias = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]  # (action_mean, action), each (B, 1)
# What measure() compares with torch: a policy.onnx session, or a (peer_encoder, policy_head) pair of sessions.
Graph: TypeAlias = ort.InferenceSession | tuple[ort.InferenceSession, ort.InferenceSession]


def torch_outputs(model: "PPO", obs: ObsBatch) -> Outputs:
    """(Gaussian mean (B, 1), SB3 predict's clipped action (B, 1)), float32."""
    with torch.no_grad():  # SB3's own forward pass: the reference is the library, not our numpy copy of it
        tensors, _ = model.policy.obs_to_tensor(obs)
        distribution = model.policy.get_distribution(tensors).distribution
        assert isinstance(distribution, torch.distributions.Normal), "a diagonal Gaussian policy (graph.policy_weights)"
        mean = distribution.mean.numpy()
    action = model.predict(obs, deterministic=True)[0]
    return mean.astype(np.float32), np.asarray(action, np.float32)


def pooled_embedding(encoder: ort.InferenceSession, peers: npt.NDArray[np.float32],
                     mask: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The masked max-pool of ``peer_encoder.onnx`` over each observation's real peers.

    ``peers`` (B, 8, 6), ``mask`` (B, 8) float32 -> (B, H) float32; zeros for an empty set.
    This is what firmware computes between ``peer_encoder.onnx`` and ``policy_head.onnx``.
    """
    b, slots, features = peers.shape
    embedding = encoder.run(["embedding"], {"peer": peers.reshape(b * slots, features)})[0].reshape(b, slots, -1)
    # Embeddings are ReLU outputs (>= 0), so zeros in the empty slots leave the max of the real ones.
    pooled: npt.NDArray[np.float32] = np.where(mask[..., None] > MASK_THRESHOLD, embedding, np.float32(0.0)).max(axis=1)
    return pooled


def split_outputs(encoder: ort.InferenceSession, head: ort.InferenceSession, obs: ObsBatch) -> Outputs:
    """(action_mean, action) (B, 1) of peer_encoder -> pool -> policy_head."""
    pooled = pooled_embedding(encoder, obs["peers"], obs["peer_mask"])
    mean, action = head.run(["action_mean", "action"], {"ego": obs["ego"], "pooled": pooled})
    return mean, action


def errors(outputs: Outputs, reference: Outputs) -> dict[str, float]:
    """Max and mean absolute error of the action mean and of the clipped action."""
    mean_err = np.abs(outputs[0] - reference[0])
    action_err = np.abs(outputs[1] - reference[1])
    return {"action_mean_max_abs_error": float(mean_err.max()), "action_mean_mean_abs_error": float(mean_err.mean()),
            "action_max_abs_error": float(action_err.max()), "action_mean_abs_error": float(action_err.mean())}


def measure(model: "PPO", obs: ObsBatch, graphs: dict[str, Graph]) -> dict[str, dict[str, float]]:
    """Errors of each graph against the torch policy on ``obs``.

    ``graphs``: a label -> a ``policy.onnx`` session, or an (encoder, head) pair of sessions.
    """
    reference = torch_outputs(model, obs)
    return {label: errors(_graph_outputs(g, obs), reference) for label, g in graphs.items()}


def _graph_outputs(graph: Graph, obs: ObsBatch) -> Outputs:
    if isinstance(graph, tuple):
        encoder, head = graph
        return split_outputs(encoder, head, obs)
    return run_policy(graph, obs)
