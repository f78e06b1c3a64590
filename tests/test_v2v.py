"""The ESP-NOW mesh emulator against the measured figures (docs/design.md, "The radio link"), and its parameter file's validation.

Statistical checks use enough steps that a tolerance of about 4.5 standard errors is tight
enough to catch a wrong model yet fails by chance less than once in 10^5 runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from roadsense.v2v import EspNowParams, MeshEmulator, ParamsError, Reception, load_params, params_hash

DT_S = 0.1
FRESH_MS = 50.0  # a message that arrived this step is a few ms old; a held one is >= 100 ms old
DEFAULTS = load_params()
LOSSLESS = DEFAULTS.model_copy(update={"loss_prob": [0.0, 0.0], "burst_loss_cap": 0.0})


def line_up(*x_m: float) -> np.ndarray:
    """Positions (n, 2) on the world x axis; the ego is the first."""
    return np.column_stack([np.array(x_m, dtype=float), np.zeros(len(x_m))])


def drive(
    emulator: MeshEmulator,
    pos: np.ndarray,
    steps: int,
    seed: int = 0,
    heading_deg: np.ndarray | None = None,
) -> list[Reception]:
    """Reset with ``seed`` and step ``steps`` times with the cars standing at ``pos`` (all heading +x unless given)."""
    n = len(pos)
    emulator.reset(np.random.default_rng(seed), n)
    heading = np.zeros(n) if heading_deg is None else heading_deg
    speed, accel = np.full(n, 20.0), np.full(n, -1.0)
    return [emulator.step(i * DT_S, pos, speed, accel, heading) for i in range(steps)]


def fresh(receptions: list[Reception], peer: int) -> np.ndarray:
    """Per step: did a message from peer index ``peer`` (1-based, as vehicles) arrive in that step?"""
    return np.array([r.valid[peer - 1] and r.age_ms[peer - 1] < FRESH_MS for r in receptions])


def assert_close(measured: float, expected: float, tolerance: float, what: str) -> None:
    assert abs(measured - expected) <= tolerance, f"{what}: measured {measured:.4f}, expected {expected:.4f} +- {tolerance:.4f}"


def assert_probability(outcomes: np.ndarray, expected: float, what: str) -> None:
    n = len(outcomes)
    assert n > 500, f"{what}: only {n} samples"
    assert_close(outcomes.mean(), expected, 4.5 * math.sqrt(expected * (1 - expected) / n), what)


# -- links ------------------------------------------------------------------------------


@pytest.mark.parametrize(("distance_m", "bin_loss"), [(10.0, 0.058), (30.0, 0.116)])
def test_loss_per_distance_bin_and_burst(distance_m: float, bin_loss: float) -> None:
    arrived = fresh(drive(MeshEmulator(DEFAULTS, domain_randomization=False), line_up(0.0, distance_m), 30_000), 1)
    lost, previous_lost = ~arrived[1:], ~arrived[:-1]
    assert_probability(lost[~previous_lost], bin_loss, "P(loss | previous delivered)")
    burst_loss = min(bin_loss * DEFAULTS.burst_loss_multiplier, DEFAULTS.burst_loss_cap)
    assert_probability(lost[previous_lost], burst_loss, "P(loss | previous lost)")
    assert lost[previous_lost].mean() > bin_loss + 0.03, "losses must come in bursts"


def test_nothing_arrives_directly_beyond_max_range() -> None:
    emulator = MeshEmulator(DEFAULTS, domain_randomization=False)
    assert fresh(drive(emulator, line_up(0.0, 49.5), 500), 1).mean() > 0.8
    assert not fresh(drive(emulator, line_up(0.0, 50.5), 2_000), 1).any()


def test_latency_mean_and_jitter_per_hop_add_up() -> None:
    # Ego, a relay 40 m ahead, a source 80 m ahead: the source is out of direct range, so
    # its messages take exactly two links; the relay's own take one.
    receptions = drive(MeshEmulator(DEFAULTS, domain_randomization=False), line_up(0.0, 40.0, 80.0), 20_000)
    base, jitter = DEFAULTS.latency_base_ms, DEFAULTS.latency_jitter_ms
    for peer, hops in ((1, 1), (2, 2)):
        arrived = fresh(receptions, peer)
        ages = np.array([r.age_ms[peer - 1] for r in receptions])[arrived]
        assert {int(r.hops[peer - 1]) for r, a in zip(receptions, arrived, strict=True) if a} == {hops}
        std = jitter * math.sqrt(hops)
        assert_close(ages.mean(), base * hops, 4.5 * std / math.sqrt(len(ages)), f"mean latency over {hops} hop(s)")
        assert_close(ages.std(), std, 0.05 * std, f"latency std over {hops} hop(s)")
        assert ages.min() >= DEFAULTS.latency_min_ms * hops


def test_relay_extends_reach_to_a_peer_at_80_m() -> None:
    emulator = MeshEmulator(DEFAULTS, domain_randomization=False)
    assert not fresh(drive(emulator, line_up(0.0, 80.0), 1_000), 1).any(), "80 m is out of direct range"
    receptions = drive(emulator, line_up(0.0, 40.0, 80.0), 1_000)
    arrived = fresh(receptions, 2)
    # Two links of 11.6 % loss each (plus bursts): about three quarters get through.
    assert arrived.mean() > 0.65
    assert all(r.hops[1] == 2 for r, a in zip(receptions, arrived, strict=True) if a)


@pytest.mark.parametrize(
    ("relay_heading_deg", "source_bearing_deg", "relays"),
    [(0.0, 0.0, True), (40.0, 0.0, True), (50.0, 0.0, False), (180.0, 0.0, False), (-20.0, 20.0, True), (-30.0, 20.0, False)],
)
def test_relay_forwards_only_sources_inside_its_forward_cone(relay_heading_deg: float, source_bearing_deg: float, relays: bool) -> None:
    # The source is 40 m from the relay (40 m ahead of the ego) at the given bearing (CCW from +x).
    bearing = math.radians(source_bearing_deg)
    pos = np.array([[0.0, 0.0], [40.0, 0.0], [40.0 + 40.0 * math.cos(bearing), 40.0 * math.sin(bearing)]])
    headings = np.array([0.0, relay_heading_deg, 0.0])
    receptions = drive(MeshEmulator(LOSSLESS, domain_randomization=False), pos, 200, heading_deg=headings)
    assert fresh(receptions, 1).all(), "the relay's own messages always arrive"
    assert fresh(receptions, 2).all() if relays else not fresh(receptions, 2).any()


def test_staleness_drops_a_peer_500_ms_after_its_last_message() -> None:
    emulator = MeshEmulator(LOSSLESS, domain_randomization=False)
    emulator.reset(np.random.default_rng(0), 2)
    zeros = np.zeros(2)
    last = emulator.step(0.0, line_up(0.0, 10.0), zeros, zeros, zeros)
    assert last.valid[0] and last.age_ms[0] < FRESH_MS
    gone = np.array([[0.0, 0.0], [np.nan, np.nan]])  # the peer left the simulation
    for k in range(1, 8):
        r = emulator.step(k * DT_S, gone, zeros, zeros, zeros)
        assert_close(r.age_ms[0], last.age_ms[0] + 100.0 * k, 1e-6, "age grows by the step time")
        assert r.valid[0] == (r.age_ms[0] <= 500.0), f"step {k}: age {r.age_ms[0]:.1f} ms, valid {r.valid[0]}"
        if r.valid[0]:
            np.testing.assert_array_equal(r.pos, last.pos, "the held message is kept as it was")
    assert not r.valid[0]


def test_sensor_noise_std_matches_parameters() -> None:
    pos = line_up(0.0, 10.0)
    receptions = drive(MeshEmulator(DEFAULTS, domain_randomization=False), pos, 12_000)
    arrived = fresh(receptions, 1)
    errors = {
        "gps_noise_m (x)": [r.pos[0, 0] - pos[1, 0] for r in receptions],
        "gps_noise_m (y)": [r.pos[0, 1] - pos[1, 1] for r in receptions],
        "speed_noise_mps": [r.speed[0] - 20.0 for r in receptions],
        "accel_noise_mps2": [r.accel[0] + 1.0 for r in receptions],
        "heading_noise_deg": [r.heading_deg[0] for r in receptions],
    }
    for name, values in errors.items():
        sample = np.array(values)[arrived]
        expected = getattr(DEFAULTS, name.split()[0])
        assert_close(sample.std(), expected, 0.04 * expected, f"{name} std")
        assert_close(sample.mean(), 0.0, 4.5 * expected / math.sqrt(len(sample)), f"{name} mean")


# -- episodes ---------------------------------------------------------------------------


def convoy_run(seed: int) -> list[Reception]:
    emulator = MeshEmulator(DEFAULTS)
    emulator.reset(np.random.default_rng(seed), 6)
    start = line_up(0.0, 25.0, 50.0, 75.0, 100.0, 125.0)
    speed, accel, heading = np.full(6, 15.0), np.zeros(6), np.zeros(6)
    return [emulator.step(i * DT_S, start + [1.5 * i, 0.0], speed, accel, heading) for i in range(600)]


def test_same_seed_same_receptions_different_seed_different() -> None:
    def same(a: list[Reception], b: list[Reception]) -> bool:
        fields = ("valid", "pos", "speed", "accel", "heading_deg", "age_ms", "hops")
        return all(np.array_equal(getattr(x, f), getattr(y, f), equal_nan=True) for x, y in zip(a, b, strict=True) for f in fields)

    first = convoy_run(seed=3)
    assert same(first, convoy_run(seed=3))
    assert not same(first, convoy_run(seed=4))
    # The sequence is not trivially constant: messages arrive over several hops, and some are lost.
    assert {int(h) for r in first for h in r.hops[r.valid]} == {1, 2, 3}
    assert 0.0 < np.mean([r.age_ms < FRESH_MS for r in first]) < 1.0


def test_domain_randomisation_draws_within_the_ranges() -> None:
    emulator = MeshEmulator(DEFAULTS)
    draws: dict[str, list[float]] = {}
    for seed in range(300):
        emulator.reset(np.random.default_rng(seed), 3)
        for key, value in emulator.episode_params.items():
            draws.setdefault(key, []).append(value)
    ranges = DEFAULTS.randomization.model_dump()
    assert set(draws) == set(ranges)
    for key, (low, high) in ranges.items():
        values = np.array(draws[key])
        assert values.min() >= low and values.max() <= high, key
        # Uniform over the whole range, not a constant: 300 draws fill the outer 5 % at both ends.
        assert values.min() < low + 0.05 * (high - low) and values.max() > high - 0.05 * (high - low), key


def test_episode_draws_drive_loss_latency_and_noise() -> None:
    emulator = MeshEmulator(DEFAULTS)
    pos = line_up(0.0, 10.0)
    receptions = drive(emulator, pos, 20_000, seed=11)
    drawn = emulator.episode_params
    arrived = fresh(receptions, 1)
    # The drawn loss_rate is the nearest bin's loss probability.
    assert_probability(~arrived[1:][arrived[:-1]], drawn["loss_rate"], "P(loss | previous delivered) at 10 m")
    # The 1 ms floor clips the lower tail only, so compare the median and the upper quartile.
    ages = np.array([r.age_ms[0] for r in receptions])[arrived]
    median, upper_quartile = np.quantile(ages, [0.5, 0.75])
    jitter = drawn["latency_jitter_ms"]
    assert drawn["latency_base_ms"] > DEFAULTS.latency_min_ms
    assert_close(median, drawn["latency_base_ms"], 0.06 * jitter, "median latency")
    assert_close((upper_quartile - median) / 0.6745, jitter, 0.1 * jitter, "latency std from the upper quartile")
    gps = np.array([r.pos[0, 0] for r in receptions])[arrived] - pos[1, 0]
    assert_close(gps.std(), drawn["gps_noise_m"], 0.04 * drawn["gps_noise_m"], "gps noise std")


def test_reset_rejects_impossible_vehicle_counts() -> None:
    emulator = MeshEmulator(DEFAULTS, max_peers=5)
    for n in (0, 7):
        with pytest.raises(ValueError, match="n_vehicles"):
            emulator.reset(np.random.default_rng(0), n)


# -- parameter file ---------------------------------------------------------------------


def test_shipped_defaults_hold_the_measured_figures() -> None:
    assert (DEFAULTS.max_range_m, DEFAULTS.max_hops, DEFAULTS.staleness_ms) == (50.0, 3, 500.0)
    assert DEFAULTS.loss_bin_upper_m == [20.0, 50.0] and DEFAULTS.loss_prob == [0.058, 0.116]
    assert (DEFAULTS.latency_base_ms, DEFAULTS.latency_jitter_ms, DEFAULTS.gps_noise_m) == (3.84, 1.04, 2.96)
    assert DEFAULTS.randomization.loss_rate == (0.029, 0.25)


def test_params_hash_is_canonical() -> None:
    digest = params_hash(DEFAULTS)
    assert len(digest) == 64 and digest == params_hash(EspNowParams.model_validate(DEFAULTS.model_dump()))
    assert digest != params_hash(DEFAULTS.model_copy(update={"gps_noise_m": 3.0}))


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "espnow.json"
    path.write_text(json.dumps(data))
    return path


def defaults_dict() -> dict:
    return DEFAULTS.model_dump(mode="json")


def with_value(dotted_key: str, value: object) -> dict:
    data = defaults_dict()
    *parents, last = dotted_key.split(".")
    target = data
    for part in parents:
        target = target[part]
    target[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (with_value("gps_noise_m", -0.1), "gps_noise_m"),
        (with_value("heading_noise_deg", -1.0), "heading_noise_deg"),
        (with_value("loss_prob", [0.058, 1.5]), "loss_prob.1"),
        (with_value("burst_loss_cap", 1.2), "burst_loss_cap"),
        (with_value("randomization.loss_rate", [0.25, 0.029]), "randomization.loss_rate"),
        (with_value("randomization.latency_base_ms", [7.68, 1.92]), "randomization.latency_base_ms"),
        (with_value("gps_noise", 1.0), "gps_noise"),
        (with_value("randomization.jitter_ms", [0.5, 2.0]), "randomization.jitter_ms"),
        ({k: v for k, v in defaults_dict().items() if k != "staleness_ms"}, "staleness_ms"),
        (with_value("loss_bin_upper_m", [20.0, 40.0]), "loss_bin_upper_m"),
    ],
)
def test_invalid_params_name_the_key(tmp_path: Path, data: dict, named: str) -> None:
    with pytest.raises(ParamsError, match=rf"\b{named}\b"):
        load_params(write(tmp_path, data))


def test_a_valid_edited_file_loads(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, with_value("gps_noise_m", 0.0))).gps_noise_m == 0.0


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"max_range_m": 50.0,')
    with pytest.raises(ParamsError, match="broken.json.*not valid JSON"):
        load_params(broken)
    with pytest.raises(ParamsError, match="missing.json.*no such file"):
        load_params(tmp_path / "missing.json")


def _numeric_paths(model: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every number-holding key of the parameter schema, nested ranges included (so new keys are covered)."""
    from pydantic import BaseModel

    paths = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths += _numeric_paths(field.annotation, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


@pytest.mark.parametrize("path", _numeric_paths(EspNowParams))
@pytest.mark.parametrize("bad", [True, math.inf, -math.inf, math.nan])
def test_true_false_and_non_finite_numbers_are_refused_with_the_key_named(tmp_path: Path, path: tuple[str, ...],
                                                                          bad: object) -> None:
    data = json.loads((Path(__file__).parents[1] / "roadsense" / "v2v" / "espnow_params.json").read_text())
    holder = data
    for key in path[:-1]:
        holder = holder[key]
    value = holder[path[-1]]
    holder[path[-1]] = [bad, *value[1:]] if isinstance(value, list) else bad  # JSON spells these true/Infinity/NaN
    file = tmp_path / "params.json"
    file.write_text(json.dumps(data))
    with pytest.raises(ParamsError, match=".".join(path)):
        load_params(file)
