"""``roadsense export``: model.zip -> the ONNX graphs, their INT8 variants and deploy.json.

Files written to the output folder:

* ``policy.onnx``, ``peer_encoder.onnx``, ``policy_head.onnx``: float32 (roadsense.export.graph).
* ``policy_int8.onnx``, ``peer_encoder_int8.onnx``, ``policy_head_int8.onnx``: static INT8
  (roadsense.export.quantize), only when observations recorded on the val or train split are given.
* ``roadsense_policy.h``: the float weights and a dependency-free C forward pass (roadsense.export.c_header).
* ``deploy.json``: layout, feature order and units, the action's meaning, files, parity.

Float export needs only the model: its parity is then measured on synthetic observations.
Every export fails (:class:`ParityError`) if a float graph differs from torch by more than
:data:`~roadsense.export.parity.FLOAT_TOLERANCE`: a wrong graph is never shipped.
"""

from __future__ import annotations

import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from roadsense.artifacts.status import write_json_atomic
from roadsense.config import PipelineConfig
from roadsense.env.observation import EGO_FEATURES, MAX_PEERS, PEER_FEATURES
from roadsense.errors import InputNotFound, RunFailed
from roadsense.evaluation.policies import load_model, onnx_act
from roadsense.export import c_header, card, parity
from roadsense.export.graph import MASK_THRESHOLD, OPSET, ExportError, peer_encoder_graph, policy_graph, policy_head_graph, policy_weights
from roadsense.export.quantize import SETTINGS as QUANTISATION
from roadsense.export.quantize import quantize
from roadsense.export.record import CalibrationPlan, CalibrationSplit
from roadsense.export.runtime import ObsBatch, session
from roadsense.provenance import sha256_file
from roadsense.scenarios.dataset import Dataset

CARD_FILE = "deploy.json"
POLICY, ENCODER, HEAD = "policy.onnx", "peer_encoder.onnx", "policy_head.onnx"
INT8 = {POLICY: "policy_int8.onnx", ENCODER: "peer_encoder_int8.onnx", HEAD: "policy_head_int8.onnx"}
EVALUATED = (POLICY, INT8[POLICY])  # what the pipeline evaluates beside the torch model
SYNTHETIC_ROWS = 4096
SYNTHETIC_SEED = 0


class ParityError(RunFailed):
    """A float graph does not compute what the torch policy computes; nothing of the export is kept (exit 1)."""


def calibration_plan(config: PipelineConfig, dataset: Path, split: CalibrationSplit = "val") -> CalibrationPlan:
    """The run's calibration episodes: ``calibration_episodes_per_bucket`` per bucket of ``split``,
    seeded with ``val_seed``, under the run's env settings."""
    return CalibrationPlan(Dataset.open(dataset), split, config.env, config.evaluation.calibration_episodes_per_bucket,
                           config.evaluation.val_seed)


def export_policy(model_path: Path, output: Path, vecnormalize: Path | None = None,
                  calibration: CalibrationPlan | None = None) -> dict[str, Any]:
    """Write every file (see the module docstring) into ``output``; returns the deploy card.

    ``calibration``: episodes of the val or train split, driven by the float ``policy.onnx``
    (onnxruntime answers ~45x faster than SB3's predict: 7,500 recorded steps took 0.5 s
    against 22 s; parity below proves it acts as the torch policy). Their even-numbered episodes calibrate the INT8 graphs and the
    odd-numbered ones (held out) measure parity. Without it no INT8 graph is built and
    parity uses synthetic observations.
    """
    _check_raw_observations(vecnormalize)
    model = load_model(model_path)
    weights = policy_weights(model.policy)
    if calibration is not None and calibration.env_config.frame_stack * EGO_FEATURES != weights.ego_dim:
        raise ExportError(f"the model takes {weights.ego_dim} ego values ({weights.ego_dim // EGO_FEATURES} frames) but "
                          f"calibration would run frame_stack={calibration.env_config.frame_stack}: "
                          f"--set frame_stack={weights.ego_dim // EGO_FEATURES}")
    output.mkdir(parents=True, exist_ok=True)
    for name, graph in ((POLICY, policy_graph(weights)), (ENCODER, peer_encoder_graph(weights)),
                        (HEAD, policy_head_graph(weights))):
        (output / name).write_bytes(graph.SerializeToString())
    header = c_header.write(weights, output)

    recording = None if calibration is None else calibration.record(onnx_act(output / POLICY))
    if recording is not None:
        calibration_rows = recording.rows(recording.episode % 2 == 0)
        held_out = recording.rows(recording.episode % 2 == 1)
        _quantize_all(output, calibration_rows)
        observations = {"source": "recorded", "split": recording.split, "seed": recording.seed,
                        "episodes": recording.episodes, "scenario_ids": list(recording.scenario_ids),
                        "calibration_rows": len(calibration_rows["ego"]), "parity_rows": len(held_out["ego"]),
                        "use": "even-numbered episodes calibrate INT8, odd-numbered ones (held out) measure parity"}
    else:
        held_out = synthetic_observations(weights.ego_dim, SYNTHETIC_ROWS, SYNTHETIC_SEED)
        observations = {"source": "synthetic", "parity_rows": SYNTHETIC_ROWS, "seed": SYNTHETIC_SEED,
                        "note": "no dataset given: random observations; INT8 needs --dataset (val or train split)"}

    graphs: dict[str, parity.Graph] = {
        "float policy.onnx": session(output / POLICY),
        "float peer_encoder.onnx + policy_head.onnx": (session(output / ENCODER), session(output / HEAD)),
    }
    if recording is not None:
        graphs["int8 policy_int8.onnx"] = session(output / INT8[POLICY])
        graphs["int8 peer_encoder_int8.onnx + policy_head_int8.onnx"] = (session(output / INT8[ENCODER]),
                                                                          session(output / INT8[HEAD]))
    measured = parity.measure(model, held_out, graphs)
    files = [POLICY, ENCODER, HEAD] + ([INT8[POLICY], INT8[ENCODER], INT8[HEAD]] if recording is not None else [])
    for label, errs in measured.items():
        if label.startswith("float") and max(errs["action_mean_max_abs_error"], errs["action_max_abs_error"]) > parity.FLOAT_TOLERANCE:
            for path in [header, *(output / name for name in files)]:  # nothing of a wrong export stays behind
                path.unlink()
            raise ParityError(f"{label} differs from the torch policy by {errs['action_mean_max_abs_error']:.2e} "
                              f"(action mean) / {errs['action_max_abs_error']:.2e} (action); the limit is {parity.FLOAT_TOLERANCE:g}")

    deploy = {
        "format": card.CARD_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_model": {"file": model_path.name, "sha256": sha256_file(model_path),
                         "vecnormalize": None if vecnormalize is None else
                         {"file": vecnormalize.name, "sha256": sha256_file(vecnormalize), "norm_obs": False}},
        "opset": OPSET,
        "batch": "dynamic: dimension 'batch' (or 'peer_rows' for peer_encoder) takes any size; the car runs 1",
        "observation": card.observation_doc(weights.ego_dim // EGO_FEATURES),
        "action": card.action_doc(),
        "graphs": {name: card.graph_doc(output / name) for name in files},
        "split_graphs": "peer_encoder per real peer row -> embedding (H values, >= 0); pooled = element-wise max over "
                        "the real peers' embeddings, zeros if there is none; policy_head(ego, pooled). Same outputs "
                        "as policy.onnx.",
        "quantisation": {**QUANTISATION, "calibrated_on": observations} if recording is not None else None,
        "parity": {"reference": "torch: action_mean against the actor's Gaussian mean; action against SB3 "
                                "predict(deterministic=True), the mean clipped to [0, 1]",
                   "float_tolerance": parity.FLOAT_TOLERANCE, "observations": observations, "errors": measured},
        "c_reference": {"file": header.name, "bytes": header.stat().st_size, "sha256": sha256_file(header),
                        "function": c_header.FUNCTION,
                        "checked": "compiled with gcc and compared with onnxruntime in tests/test_export.py"},
    }
    write_json_atomic(output / CARD_FILE, deploy)
    return deploy


def _check_raw_observations(vecnormalize: Path | None) -> None:
    """Refuse a VecNormalize that normalised observations: the graphs take raw ones."""
    if vecnormalize is None:
        return
    if not vecnormalize.is_file():
        raise InputNotFound(f"--vecnormalize {vecnormalize}: no such file; give the vecnormalize.pkl written beside "
                            "the model.zip, or leave the flag out")
    with open(vecnormalize, "rb") as fh:
        norm_obs = getattr(pickle.load(fh), "norm_obs", None)  # our own training's file (SB3 pickles it)
    if norm_obs is not False:
        raise ExportError(f"{vecnormalize}: norm_obs is {norm_obs!r}; the exported graphs take raw observations, "
                          "so only a reward-only VecNormalize (norm_obs=False, as roadsense trains) can be exported")


def _quantize_all(output: Path, calibration: ObsBatch) -> None:
    """INT8 variants of the three graphs, each calibrated on what it sees when the policy runs."""
    quantize(output / POLICY, output / INT8[POLICY], calibration)
    real = calibration["peer_mask"] > MASK_THRESHOLD
    quantize(output / ENCODER, output / INT8[ENCODER], {"peer": calibration["peers"][real]})
    pooled = parity.pooled_embedding(session(output / ENCODER), calibration["peers"], calibration["peer_mask"])
    quantize(output / HEAD, output / INT8[HEAD], {"ego": calibration["ego"], "pooled": pooled})


def synthetic_observations(ego_dim: int, rows: int, seed: int) -> ObsBatch:
    """Random observations of the right shapes: 0..8 real peers each, features ~ N(0, 0.5) (roughly
    the scale of the normalised features), garbage (N(0, 10)) in empty slots."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, MAX_PEERS + 1, rows)
    mask = (np.arange(MAX_PEERS)[None, :] < counts[:, None]).astype(np.float32)
    peers = rng.normal(0.0, 0.5, (rows, MAX_PEERS, PEER_FEATURES)).astype(np.float32)
    peers = np.where(mask[..., None] > 0, peers, rng.normal(0.0, 10.0, peers.shape)).astype(np.float32)
    return {"ego": rng.normal(0.0, 0.5, (rows, ego_dim)).astype(np.float32), "peers": peers, "peer_mask": mask}
