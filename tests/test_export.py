"""roadsense export: the ONNX graphs against torch, their set properties, INT8, the card, the C reference, evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from typer.testing import CliRunner

from roadsense.cli import app
from roadsense.env.observation import MAX_PEERS, PEER_FEATURES, PeerView, ego_frame, observation_space, visible_peers
from roadsense.evaluation.policies import load_model, load_policy
from roadsense.export import card as card_module
from roadsense.export import exporter
from roadsense.export.c_header import HEADER_FILE
from roadsense.export.exporter import CARD_FILE, ENCODER, HEAD, INT8, POLICY, export_policy, synthetic_observations
from roadsense.export.graph import Dense, ExportError, policy_weights
from roadsense.export.parity import FLOAT_TOLERANCE, measure, torch_outputs
from roadsense.export.record import CalibrationPlan
from roadsense.export.report import FLAG, flagged, variant_section
from roadsense.export.runtime import is_quantised, run_policy, session
from roadsense.policy import policy_kwargs
from roadsense.scenarios.dataset import Dataset
from tests.conftest import TINY, tiny_config

runner = CliRunner()
FRAME_STACK = 3
EGO_DIM = 6 * FRAME_STACK


class _SpacesOnly(gym.Env):
    """Just the observation and action spaces, to build a PPO model without SUMO."""

    observation_space = observation_space(FRAME_STACK)
    action_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Deep Sets PPO model whose action head is scaled up.

    SB3 initialises the action net with gain 0.01, so an untrained mean sits near 0 and any
    graph would match it to 1e-5; with N(0, 0.5) weights and bias 0.5 the mean spans several
    units and often leaves [0, 1] on both sides, so both the parity and the clipping are exercised.
    """
    model = PPO("MultiInputPolicy", _SpacesOnly(), n_steps=64, batch_size=32, device="cpu", seed=3,
                policy_kwargs=policy_kwargs(32, -0.5))
    with torch.no_grad():
        model.policy.action_net.weight.normal_(0.0, 0.5)
        model.policy.action_net.bias.fill_(0.5)  # centred on [0, 1], so steps land on both sides of it
    path = tmp_path_factory.mktemp("model") / "model.zip"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def plan(tiny_dataset: Path) -> CalibrationPlan:
    return CalibrationPlan(Dataset.open(tiny_dataset), "val", tiny_config().env, 1, 11)


@pytest.fixture(scope="module")
def exported(model_zip: Path, plan: CalibrationPlan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export_policy(model_zip, out, calibration=plan)
    return out


@pytest.fixture(scope="module")
def recorded(exported: Path, plan: CalibrationPlan):
    """Observations of the val split, driven by the float graph: what the car meets."""
    return plan.record(load_policy(str(exported / POLICY)))


def _card(folder: Path) -> dict:
    return json.loads((folder / CARD_FILE).read_text())


# --- parity --------------------------------------------------------------------------------------


def test_float_graphs_match_torch_within_the_tolerance(model_zip: Path, exported: Path, recorded) -> None:
    model = load_model(model_zip)
    graphs = {"policy": session(exported / POLICY), "split": (session(exported / ENCODER), session(exported / HEAD))}
    errors = measure(model, recorded.obs, graphs)
    for label, e in errors.items():
        assert e["action_mean_max_abs_error"] <= FLOAT_TOLERANCE, label
        assert e["action_max_abs_error"] <= FLOAT_TOLERANCE, label
    # The comparison means something: the mean leaves [0, 1] on some steps (so clipping is compared)
    # and varies over the recording.
    mean, action = torch_outputs(model, recorded.obs)
    assert (mean < 0).any() and (mean > 1).any() and np.ptp(mean) > 1.0
    assert np.array_equal(action, np.clip(mean, 0, 1))
    for label, e in _card(exported)["parity"]["errors"].items():
        if label.startswith("float"):
            assert e["action_mean_max_abs_error"] <= FLOAT_TOLERANCE and e["action_max_abs_error"] <= FLOAT_TOLERANCE


def test_an_export_whose_graph_drifts_from_torch_is_refused(model_zip: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = policy_weights

    def one_weight_off(policy):
        weights = real(policy)
        first = weights.phi[0]
        weight = first.weight.copy()
        weight[0, 0] += 1e-2
        return replace(weights, phi=(Dense(weight, first.bias, first.activation), *weights.phi[1:]))

    monkeypatch.setattr(exporter, "policy_weights", one_weight_off)
    with pytest.raises(exporter.ParityError, match="differs from the torch policy"):
        export_policy(model_zip, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no graph of a failed export is left to deploy


def test_calibration_with_another_frame_stack_is_refused(model_zip: Path, plan: CalibrationPlan, tmp_path: Path) -> None:
    other = replace(plan, env_config=plan.env_config.model_copy(update={"frame_stack": 2}))
    with pytest.raises(ExportError, match="--set frame_stack=3"):
        export_policy(model_zip, tmp_path, calibration=other)


def test_float_export_needs_no_dataset(model_zip: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--model", str(model_zip), "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "policy.onnx" in result.output and "float parity max abs error" in result.output
    card = _card(tmp_path)
    assert card["parity"]["observations"]["source"] == "synthetic" and card["quantisation"] is None
    assert sorted(card["graphs"]) == sorted([POLICY, ENCODER, HEAD])
    assert not any((tmp_path / name).exists() for name in INT8.values())
    assert all(e["action_mean_max_abs_error"] <= FLOAT_TOLERANCE for e in card["parity"]["errors"].values())


# --- the peer set ----------------------------------------------------------------------------------

_finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
_anything = st.floats(width=32)  # NaN and +-inf included: an empty slot may hold garbage


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n_real=st.integers(0, MAX_PEERS), int8=st.booleans())
def test_output_ignores_peer_order_and_empty_slot_content(exported: Path, data, n_real: int, int8: bool) -> None:
    sess = session(exported / (INT8[POLICY] if int8 else POLICY))
    ego = np.array(data.draw(st.lists(_finite, min_size=EGO_DIM, max_size=EGO_DIM)), np.float32)
    real = np.array(data.draw(st.lists(_finite, min_size=n_real * PEER_FEATURES, max_size=n_real * PEER_FEATURES)),
                    np.float32).reshape(n_real, PEER_FEATURES)
    garbage = np.array(data.draw(st.lists(_anything, min_size=MAX_PEERS * PEER_FEATURES,
                                          max_size=MAX_PEERS * PEER_FEATURES)), np.float32).reshape(MAX_PEERS, PEER_FEATURES)
    order = data.draw(st.permutations(range(MAX_PEERS)))  # real peers may sit in any slots

    mask = np.zeros(MAX_PEERS, np.float32)
    mask[:n_real] = 1.0
    peers = np.zeros((MAX_PEERS, PEER_FEATURES), np.float32)
    peers[:n_real] = real
    base = run_policy(sess, {"ego": ego[None], "peers": peers[None], "peer_mask": mask[None]})

    moved = garbage.copy()
    moved[np.array(order)[:n_real]] = real
    moved_mask = np.zeros(MAX_PEERS, np.float32)
    moved_mask[np.array(order)[:n_real]] = 1.0
    shuffled = run_policy(sess, {"ego": ego[None], "peers": moved[None], "peer_mask": moved_mask[None]})
    np.testing.assert_array_equal(shuffled[0], base[0])
    np.testing.assert_array_equal(shuffled[1], base[1])


def test_the_real_peers_do_change_the_output(exported: Path) -> None:
    sess = session(exported / POLICY)
    obs = synthetic_observations(EGO_DIM, 64, seed=5)
    obs["peer_mask"][:] = 1.0
    moved = {**obs, "peers": obs["peers"] + np.float32(0.5)}
    assert not np.allclose(run_policy(sess, obs)[0], run_policy(sess, moved)[0])


def test_zero_peers_pool_to_zeros_in_every_form(model_zip: Path, exported: Path) -> None:
    obs = synthetic_observations(EGO_DIM, 32, seed=9)
    obs["peer_mask"][:] = 0.0
    obs["peers"][:] = np.nan
    whole = run_policy(session(exported / POLICY), obs)
    head = session(exported / HEAD).run(["action_mean", "action"],
                                        {"ego": obs["ego"], "pooled": np.zeros((32, 32), np.float32)})
    np.testing.assert_array_equal(whole[0], head[0])
    reference = torch_outputs(load_model(model_zip), {**obs, "peers": np.zeros_like(obs["peers"])})
    np.testing.assert_allclose(whole[0], reference[0], rtol=0, atol=FLOAT_TOLERANCE)
    assert np.isfinite(run_policy(session(exported / INT8[POLICY]), obs)[0]).all()


# --- INT8 and calibration --------------------------------------------------------------------------


def test_int8_variants_are_smaller_and_their_error_is_recorded(exported: Path, model_zip: Path, recorded) -> None:
    card = _card(exported)
    for name, int8 in INT8.items():
        assert is_quantised(exported / int8) and not is_quantised(exported / name)
        assert card["graphs"][int8]["bytes"] == (exported / int8).stat().st_size
    assert card["graphs"][INT8[POLICY]]["bytes"] < card["graphs"][POLICY]["bytes"]
    assert card["graphs"][INT8[HEAD]]["bytes"] < card["graphs"][HEAD]["bytes"]
    errors = card["parity"]["errors"]["int8 policy_int8.onnx"]
    # INT8 is not exact, but it stays close: the mean error is a small share of the output's spread.
    assert 0 < errors["action_mean_mean_abs_error"] < 0.05 and errors["action_mean_max_abs_error"] < 1.0
    assert errors["action_mean_mean_abs_error"] <= errors["action_mean_max_abs_error"]


def test_calibration_never_reads_the_eval_split(tiny_dataset: Path, exported: Path, model_zip: Path,
                                                tmp_path: Path) -> None:
    dataset = Dataset.open(tiny_dataset)
    with pytest.raises(ValueError, match="never 'eval'"):
        CalibrationPlan(dataset, "eval", tiny_config().env, 1, 11)  # type: ignore[arg-type]
    calibrated = _card(exported)["quantisation"]["calibrated_on"]
    assert calibrated["split"] == "val" and set(calibrated["scenario_ids"]) <= set(dataset.ids("val"))
    assert not set(calibrated["scenario_ids"]) & set(dataset.ids("eval"))
    result = runner.invoke(app, ["export", "--model", str(model_zip), "--output", str(tmp_path),
                                 "--dataset", str(tiny_dataset), "--split", "eval"])
    assert result.exit_code == 2 and "never the eval split" in result.output
    assert not (tmp_path / POLICY).exists()


def test_calibration_and_parity_rows_come_from_different_episodes(exported: Path, recorded) -> None:
    calibrated = _card(exported)["quantisation"]["calibrated_on"]
    even = int((recorded.episode % 2 == 0).sum())
    assert calibrated["calibration_rows"] == even and calibrated["parity_rows"] == len(recorded.episode) - even > 0


# --- the card ----------------------------------------------------------------------------------------


def test_the_card_describes_the_files_as_they_are(exported: Path, model_zip: Path) -> None:
    card = _card(exported)
    assert card["source_model"]["sha256"] == hashlib.sha256(model_zip.read_bytes()).hexdigest()
    for name, doc in card["graphs"].items():
        graph = onnx.load(str(exported / name)).graph
        assert [v["name"] for v in doc["inputs"]] == [v.name for v in graph.input] and doc["opset"] == 17
        assert doc["sha256"] == hashlib.sha256((exported / name).read_bytes()).hexdigest()
    policy = card["graphs"][POLICY]
    assert policy["inputs"] == [{"name": "ego", "shape": ["batch", EGO_DIM], "dtype": "float32"},
                                {"name": "peers", "shape": ["batch", MAX_PEERS, PEER_FEATURES], "dtype": "float32"},
                                {"name": "peer_mask", "shape": ["batch", MAX_PEERS], "dtype": "float32"}]
    assert [v["name"] for v in policy["outputs"]] == ["action_mean", "action"]
    assert card["graphs"][ENCODER]["inputs"] == [{"name": "peer", "shape": ["peer_rows", PEER_FEATURES], "dtype": "float32"}]
    assert [v["name"] for v in card["graphs"][HEAD]["inputs"]] == ["ego", "pooled"]
    assert card["action"]["hand_back_at_or_below"] == 0.02 and card["action"]["max_decel_m_s2"] == 8.0
    assert card["observation"]["ego"]["frame_stack"] == FRAME_STACK
    assert card["c_reference"]["file"] == HEADER_FILE


def test_the_cards_feature_divisors_are_the_envs() -> None:
    """Each documented divisor reproduces what observation.py computes from a raw value."""
    raw_ego = [12.0, -3.0, None, -4.0, 0.7, 6.0]  # speed, accel, (count), min peer accel, signal, closing speed
    view = PeerView(index=[1, 2, 3], rows=[], distance=10.0, closing_speed=raw_ego[5], min_accel=raw_ego[3])
    frame = ego_frame(raw_ego[0], raw_ego[1], view, raw_ego[4])
    raw_ego[2] = 3.0
    for (name, _, _, divisor), raw, value in zip(card_module.EGO_FEATURES_DOC, raw_ego, frame, strict=True):
        assert math.isclose(raw / divisor, value), name

    # One peer 40 m ahead and 2 m left of an ego heading along +x, 5 m/s slower, heading +9 deg, braking.
    reception = SimpleNamespace(valid=np.array([True]), pos=np.array([[140.0, 2.0]]), speed=np.array([15.0]),
                                accel=np.array([-6.0]), heading_deg=np.array([9.0]), age_ms=np.array([120.0]))
    row = visible_peers(100.0, 0.0, 20.0, 0.0, reception).rows[0]
    for (name, _, _, divisor), raw, value in zip(card_module.PEER_FEATURES_DOC, [40.0, 2.0, -5.0, 9.0, -6.0, 120.0], row, strict=True):
        assert math.isclose(raw / divisor, value), name


def test_a_vecnormalize_that_normalised_observations_is_refused(model_zip: Path, tmp_path: Path) -> None:
    for norm_obs in (False, True):
        path = tmp_path / f"vecnormalize_{norm_obs}.pkl"
        VecNormalize(DummyVecEnv([_SpacesOnly]), norm_obs=norm_obs, norm_reward=True).save(str(path))
        if norm_obs:
            with pytest.raises(ExportError, match="norm_obs is True"):
                export_policy(model_zip, tmp_path / "refused", vecnormalize=path)
            assert not (tmp_path / "refused").exists()
        else:
            card = export_policy(model_zip, tmp_path / "ok", vecnormalize=path)
            assert card["source_model"]["vecnormalize"]["norm_obs"] is False


# --- the C reference ---------------------------------------------------------------------------------

_HARNESS = r"""
#include <stdio.h>
#include "roadsense_policy.h"
int main(void) {
    float ego[ROADSENSE_EGO_DIM], peers[ROADSENSE_MAX_PEERS][ROADSENSE_PEER_FEATURES], mask[ROADSENSE_MAX_PEERS], out[2];
    while (fread(ego, sizeof ego, 1, stdin) == 1 && fread(peers, sizeof peers, 1, stdin) == 1
           && fread(mask, sizeof mask, 1, stdin) == 1) {
        out[1] = roadsense_policy(ego, peers, mask, &out[0]);
        fwrite(out, sizeof out, 1, stdout);
    }
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_the_c_reference_computes_what_onnxruntime_computes(exported: Path, recorded, tmp_path: Path) -> None:
    (tmp_path / "main.c").write_text(_HARNESS)
    shutil.copy(exported / HEADER_FILE, tmp_path)
    subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Werror", "-o", str(tmp_path / "policy"), str(tmp_path / "main.c"),
                    "-lm"], check=True, cwd=tmp_path)
    obs = {k: v[::5] for k, v in recorded.obs.items()}
    obs["peers"] = np.where(obs["peer_mask"][..., None] > 0, obs["peers"], np.float32(np.nan))  # garbage in empty slots
    rows = np.concatenate([obs["ego"], obs["peers"].reshape(len(obs["ego"]), -1), obs["peer_mask"]], axis=1)
    done = subprocess.run([str(tmp_path / "policy")], input=rows.astype(np.float32).tobytes(), capture_output=True,
                          check=True)
    c_out = np.frombuffer(done.stdout, np.float32).reshape(-1, 2)
    mean, action = run_policy(session(exported / POLICY), obs)
    assert len(c_out) == len(mean) > 100
    np.testing.assert_allclose(c_out[:, 0], mean[:, 0], rtol=0, atol=FLOAT_TOLERANCE)
    np.testing.assert_allclose(c_out[:, 1], action[:, 0], rtol=0, atol=FLOAT_TOLERANCE)
    assert np.ptp(mean) > 1.0  # not a constant output that any header would match


# --- evaluation with onnxruntime ---------------------------------------------------------------------


def test_an_onnx_spec_drives_like_the_model(exported: Path, model_zip: Path, recorded) -> None:
    onnx_policy, torch_policy = load_policy(str(exported / POLICY)), load_policy(str(model_zip))
    for i in range(0, len(recorded.episode), 97):
        obs = {k: v[i] for k, v in recorded.obs.items()}
        a, b = onnx_policy(obs), torch_policy(obs)
        assert a.shape == b.shape == (1,) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=FLOAT_TOLERANCE)


def test_an_int8_policy_outside_the_float_interval_is_flagged(exported: Path) -> None:
    def overall(rate: float) -> dict:
        return {"episodes": 100, "behavioral_success_rate": rate, "collision_rate": 1 - rate, "reaction_rate": 1.0,
                "mean_reaction_time_s": 0.5}

    float_spec, int8_spec = str(exported / POLICY), str(exported / INT8[POLICY])
    assert flagged(overall(0.9), {float_spec: overall(0.95), int8_spec: overall(0.93)}) == []
    assert flagged(overall(0.9), {float_spec: overall(0.95), int8_spec: overall(0.80)}) == [int8_spec]
    # Without a float graph the torch model's interval is the reference.
    assert flagged(overall(0.95), {int8_spec: overall(0.80)}) == [int8_spec]
    lines = "\n".join(variant_section("model.zip", overall(0.95), {float_spec: overall(0.95), int8_spec: overall(0.8)}))
    assert "| policy_int8.onnx | onnxruntime, INT8 | 80.0% (71.1-86.7)" in lines and FLAG in lines


@pytest.mark.slow
def test_evaluate_runs_onnx_graphs_beside_the_model_on_the_same_plan(exported: Path, model_zip: Path,
                                                                     tiny_dataset: Path, tmp_path: Path) -> None:
    sets = [f"--set={k}={v}" for k, v in TINY.items() if k in ("episode_steps", "hazard_step")]
    result = runner.invoke(app, ["evaluate", "--model", str(model_zip), "--onnx", str(exported / POLICY),
                                 "--onnx", str(exported / INT8[POLICY]), "--dataset", str(tiny_dataset),
                                 "--output", str(tmp_path), "--episodes-per-bucket", "1", "--workers", "2",
                                 "--preset", "smoke", *sets])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["variants"]) == {str(exported / POLICY), str(exported / INT8[POLICY])}
    float_overall = metrics["variants"][str(exported / POLICY)]["overall"]
    assert float_overall["episodes"] == metrics["overall"]["episodes"] == 15
    # Parity to 1e-6 in the action: the float graph drives the same episodes as the model.
    for key in ("collision_rate", "behavioral_success_rate", "reaction_rate", "mean_min_distance_post_hazard_m"):
        assert float_overall[key] == pytest.approx(metrics["overall"][key], abs=1e-3), key
    report = (tmp_path / "report.md").read_text()
    assert "## Exported graphs beside the torch model" in report and "| policy_int8.onnx | onnxruntime, INT8 |" in report

    alone = runner.invoke(app, ["evaluate", "--onnx", str(exported / POLICY), "--dataset", str(tiny_dataset),
                                "--output", str(tmp_path / "alone"), "--episodes-per-bucket", "1", "--workers", "2",
                                "--preset", "smoke", "--set", "baselines=[]", *sets])
    assert alone.exit_code == 0, alone.output
    assert json.loads((tmp_path / "alone" / "metrics.json").read_text())["overall"] == float_overall


@pytest.mark.parametrize("args, message", [
    (["--policy", "rule-based", "--onnx", "x.onnx"], "drop --model and --onnx"),
    (["--onnx", "a.onnx", "--onnx", "b.onnx"], "exactly one of --model"),
])
def test_evaluate_refuses_ambiguous_onnx_options(tiny_dataset: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["evaluate", "--dataset", str(tiny_dataset), "--output", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output
