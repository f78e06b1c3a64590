"""deploy.json: everything firmware needs to feed the graphs and act on their output.

The feature tables restate roadsense.env.observation (``ego_frame``, ``visible_peers``) in
words, with each feature's divisor; the ego features are listed in the order and under the
names of :class:`~roadsense.env.observation.EgoFrame`, and ``tests/test_export.py`` checks
every divisor against those functions, so the card cannot drift from what the policy was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx

from roadsense.env.convoy_env import MAX_DECEL
from roadsense.env.observation import BRAKING_ACCEL, EGO_FEATURE_NAMES, EGO_FEATURES, MAX_PEERS, SIGNAL_DECAY, STALE_MS
from roadsense.env.reward import BRAKING_ACTION
from roadsense.provenance import sha256_file
from roadsense.sim.backend import STEP_S

CARD_FORMAT = 1

# name -> (what it is, unit of the raw quantity, divisor): observation value = raw / divisor.
_EGO_MEANINGS: dict[str, tuple[str, str, float]] = {
    "speed": ("ego speed (ground truth)", "m/s", 30.0),
    "accel": ("ego acceleration (ground truth)", "m/s^2", 10.0),
    "visible_peers": ("peers visible this step (fresh message, inside the +-45 degree forward cone)", "count", float(MAX_PEERS)),
    "min_peer_accel": ("min(0, lowest acceleration reported by a visible peer)", "m/s^2", 10.0),
    "braking_signal": (f"1 when a visible peer reports accel <= {BRAKING_ACCEL} m/s^2, else the previous value x "
                       f"{SIGNAL_DECAY}; 0 at episode start", "1", 1.0),
    "closing_speed": ("max(0, largest ego speed - peer speed over visible peers)", "m/s", 30.0),
}
# (name, what it is, unit, divisor) in the ego frame's order; a feature without a meaning above fails the import.
EGO_FEATURES_DOC: tuple[tuple[str, str, str, float], ...] = tuple(
    (name, *_EGO_MEANINGS[name]) for name in EGO_FEATURE_NAMES)
PEER_FEATURES_DOC: tuple[tuple[str, str, str, float], ...] = (
    ("rel_x", "peer position ahead of the ego, in the ego frame (x forward)", "m", 100.0),
    ("rel_y", "peer position to the ego's left, in the ego frame (y left)", "m", 100.0),
    ("rel_speed", "peer speed - ego speed", "m/s", 30.0),
    ("rel_heading", "peer heading - ego heading, wrapped to [-180, 180)", "degree", 180.0),
    ("accel", "peer acceleration as reported", "m/s^2", 10.0),
    ("age", f"age of the peer's message (stale and dropped at {STALE_MS:.0f} ms)", "ms", STALE_MS),
)


def _features(table: tuple[tuple[str, str, str, float], ...]) -> list[dict[str, Any]]:
    return [{"index": i, "name": name, "meaning": meaning, "unit": unit, "value": f"raw / {divisor:g}"}
            for i, (name, meaning, unit, divisor) in enumerate(table)]


def observation_doc(frame_stack: int) -> dict[str, Any]:
    """The inputs' layout, feature order and units; no normalisation beyond the fixed divisors."""
    return {
        "normalisation": "none: the policy takes the raw observation below (each feature divided by its fixed "
                         "divisor, as the env produces it). VecNormalize scaled only the rewards during training.",
        "ego": {"shape": [EGO_FEATURES * frame_stack], "frame_stack": frame_stack,
                "layout": f"{frame_stack} frames of {EGO_FEATURES} features, newest frame first: "
                          f"ego[{EGO_FEATURES} f + i] is feature i of the frame f steps ago ({STEP_S} s per step); "
                          "frames before the episode start are zeros",
                "features": _features(EGO_FEATURES_DOC)},
        "peers": {"shape": [MAX_PEERS, len(PEER_FEATURES_DOC)],
                  "layout": "one row per visible peer in any order (the output does not depend on it); "
                            "rows of empty slots may hold anything",
                  "features": _features(PEER_FEATURES_DOC)},
        "peer_mask": {"shape": [MAX_PEERS], "values": "1.0 for a slot holding a visible peer, 0.0 for an empty slot "
                                                       "(read as > 0.5)"},
    }


def action_doc() -> dict[str, Any]:
    """What the output means for the car (docs/design.md, "Action")."""
    return {
        "meaning": "brake intensity a in [0, 1]",
        "output": "'action' is 'action_mean' clipped to [0, 1]: the deterministic policy (SB3 predict, "
                  "deterministic=True); 'action_mean' is the Gaussian mean before clipping",
        "hand_back_at_or_below": BRAKING_ACTION,
        "hand_back": f"a <= {BRAKING_ACTION}: the car's own car-following (ACC) drives",
        "max_decel_m_s2": MAX_DECEL,
        "decel": f"otherwise decelerate at {MAX_DECEL:g} m/s^2 x a: new speed = max(0, v - {MAX_DECEL:g} a {STEP_S:g}) "
                 f"each {STEP_S:g} s step",
        "step_s": STEP_S,
    }


def graph_doc(path: Path) -> dict[str, Any]:
    """A graph file's size, hash, opset and input/output names, shapes and dtypes, read from the file itself."""
    model = onnx.load(str(path))

    def io(values: Iterable[onnx.ValueInfoProto]) -> list[dict[str, Any]]:  # a list: the order is the graph's, for positional runtimes
        return [{"name": v.name, "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}
                for v in values]

    return {"bytes": path.stat().st_size, "sha256": sha256_file(path),
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "inputs": io(model.graph.input), "outputs": io(model.graph.output)}
