"""onnxruntime sessions for the exported graphs: one thread, as on the car and in evaluation workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from roadsense.arrays import Observation

ObsBatch = Observation  # ego (B, 6K), peers (B, 8, 6), peer_mask (B, 8); float32


def session(path: Path) -> ort.InferenceSession:
    """A CPU session on one intra-op and one inter-op thread.

    Evaluation runs one worker per core, so more threads per session would only contend;
    the car runs batch 1 on one core anyway.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_policy(sess: ort.InferenceSession, obs: ObsBatch) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``policy.onnx`` (or its INT8 variant) on a batch: (action_mean (B, 1), action (B, 1)), float32."""
    feed = {name: np.ascontiguousarray(obs[name], np.float32) for name in ("ego", "peers", "peer_mask")}
    mean, action = sess.run(["action_mean", "action"], feed)
    return mean, action


def is_quantised(path: Path) -> bool:
    """True for a graph that carries INT8 (QuantizeLinear / DequantizeLinear or QLinear*) nodes."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.op_type.startswith("QLinear") for n in graph.node)
