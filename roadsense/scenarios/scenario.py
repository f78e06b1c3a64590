"""What one scenario is (a convoy on a road) and how the augmentation draws it.

A scenario is a single-lane convoy: the ego ``V001`` at the rear and 1..5 peers
``V002``.. ahead of it (``V002`` nearest), all departing at t = 0 at 11 m/s (``DEPART_SPEED_MPS``). Augmentation
(docs/design.md, "Augmentation and spacing"):

* one vehicle-type draw shared by all cars: speedFactor, sigma, decel (m/s^2), tau (s);
* training: each of the 5 base peers is dropped with ``peer_drop_prob``, keeping at least
  one, and the road variant is drawn at random;
* validation and evaluation: no dropout; peer counts cycle 1, 2, 3, 4, 5 so every count
  is equally represented, and each count alternates between the road variants. The two
  splits are drawn from separate seeds: validation picks the model, evaluation reports it;
* the survivors are re-spaced by peer count: peer i departs with its front bumper at
  ego + i * spacing, spacing 50, 40, 35, 30 or 25 m for n = 1..5 measured front to front
  (the bumper gap is spacing minus the 5 m car; no spawn jitter). 50 m front to front is
  the largest distance the radio was measured at, so with one peer the hazard is in range.

Every scenario draws from its own generator seeded by (split seed, split, index), so
scenario ``i`` does not change when the dataset grows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from roadsense.config import DatasetConfig
from roadsense.scenarios.network import EDGE_ID, ROADS
from roadsense.sim.backend import STEP_S

Split = Literal["train", "val", "eval"]
SPLITS: tuple[Split, ...] = ("train", "val", "eval")
# The stream number of each split in its generators' seed. Fixed (not the SPLITS order) so
# adding a split never changes the scenarios an existing split draws.
_SPLIT_STREAM: dict[Split, int] = {"train": 0, "eval": 1, "val": 2}

EGO_ID = "V001"  # the SUMO id of the ego car, the first vehicle of every route file
BASE_PEERS = 5
# Front bumper to front bumper between neighbouring cars, by peer count (docs/design.md, "Augmentation and spacing").
PEER_SPACING_M: dict[int, float] = {1: 50.0, 2: 40.0, 3: 35.0, 4: 30.0, 5: 25.0}
SPACING_RULE = "front-to-front"
VEHICLE_LENGTH_M = 5.0  # every car of a scenario; front-to-front distance minus this is the bumper gap
EGO_DEPART_POS_M = 10.0  # front bumper of the ego, from the start of the road
# SUMO inserts a car only if the car behind can stop safely. With the tightest draw (tau
# 1.5 s, decel 3.5 m/s^2, 25 m front to front = 17.5 m bumper gap after minGap) Krauss'
# safe speed is 11.9 m/s (SUMO refused 12 m/s); 11 m/s leaves a margin, so every car
# really departs at t = 0 and the convoy reaches cruising speed during warm-up.
DEPART_SPEED_MPS = 11.0
# The hazard brakes at up to 10 m/s^2; SUMO warns about braking harder than emergencyDecel.
EMERGENCY_DECEL_MPS2 = 10.0
ACCEL_MPS2 = 2.6
MIN_GAP_M = 2.5

ROUTE_ID = "convoy_route"
VTYPE_ID = "convoy"
NETWORK_FILE = "network.net.xml"
ROUTES_FILE = "routes.rou.xml"
SUMOCFG_FILE = "scenario.sumocfg"


@dataclass(frozen=True)
class VehicleType:
    """One Krauss car-following draw, shared by every car of a scenario."""

    speed_factor: float  # multiplier on the speed limit
    sigma: float  # driver imperfection, 0..1
    decel: float  # comfortable deceleration, m/s^2
    tau: float  # desired time headway, s

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class ScenarioSpec:
    """Everything that makes one scenario: written to its files and to the manifest."""

    scenario_id: str
    split: Split
    peer_count: int
    road: str
    vehicle_type: VehicleType


def scenario_id(split: Split, index: int) -> str:
    """``train-0000``: zero-padded so that sorting the ids keeps generation order."""
    return f"{split}-{index:04d}"


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    # Rounded so the value written to XML and the manifest is exactly the one SUMO uses.
    return round(float(rng.uniform(bounds[0], bounds[1])), 3)


def draw_vehicle_type(rng: np.random.Generator, config: DatasetConfig) -> VehicleType:
    return VehicleType(
        speed_factor=_uniform(rng, config.speed_factor_range),
        sigma=_uniform(rng, config.sigma_range),
        decel=_uniform(rng, config.decel_range),
        tau=_uniform(rng, config.tau_range),
    )


def draw_peer_count(rng: np.random.Generator, drop_prob: float) -> int:
    """Peers left after dropping each base peer with ``drop_prob``; at least one survives."""
    kept = rng.random(BASE_PEERS) >= drop_prob
    if not kept.any():
        kept[rng.integers(BASE_PEERS)] = True
    return int(kept.sum())


def _rng(seed: int, split: Split, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_STREAM[split], index])


def train_specs(config: DatasetConfig) -> list[ScenarioSpec]:
    roads = sorted(ROADS)
    specs = []
    for index in range(config.train_count):
        rng = _rng(config.dataset_seed, "train", index)
        vehicle_type = draw_vehicle_type(rng, config)
        road = roads[int(rng.integers(len(roads)))]
        peers = draw_peer_count(rng, config.peer_drop_prob)
        specs.append(ScenarioSpec(scenario_id("train", index), "train", peers, road, vehicle_type))
    return specs


def balanced_specs(config: DatasetConfig, split: Split) -> list[ScenarioSpec]:
    """The val or eval split: no dropout, peer counts cycling 1..5, roads alternating per count."""
    seed, count = {"val": (config.val_dataset_seed, config.val_count), "eval": (config.eval_dataset_seed, config.eval_count)}[split]
    roads = sorted(ROADS)
    specs = []
    for index in range(count):
        rng = _rng(seed, split, index)
        peers = 1 + index % BASE_PEERS
        road = roads[(index // BASE_PEERS) % len(roads)]
        specs.append(ScenarioSpec(scenario_id(split, index), split, peers, road, draw_vehicle_type(rng, config)))
    return specs


def depart_positions(peer_count: int) -> list[float]:
    """Front-bumper positions (departPos, m along the road) of V001, V002, ..., ego first."""
    spacing = PEER_SPACING_M[peer_count]
    return [EGO_DEPART_POS_M + i * spacing for i in range(peer_count + 1)]


def routes_xml(spec: ScenarioSpec) -> str:
    """The route file: one vType, one route, the ego first, every car departing at t = 0."""
    vehicle_type = spec.vehicle_type
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<routes>",
        f'    <vType id="{VTYPE_ID}" carFollowModel="Krauss" length="{VEHICLE_LENGTH_M:.2f}" minGap="{MIN_GAP_M:.2f}"'
        f' accel="{ACCEL_MPS2:.2f}" decel="{vehicle_type.decel:.3f}"'
        f' emergencyDecel="{EMERGENCY_DECEL_MPS2:.2f}" sigma="{vehicle_type.sigma:.3f}" tau="{vehicle_type.tau:.3f}"'
        f' speedFactor="{vehicle_type.speed_factor:.3f}" speedDev="0"/>',
        f'    <route id="{ROUTE_ID}" edges="{EDGE_ID}"/>',
    ]
    for number, position in enumerate(depart_positions(spec.peer_count), start=1):
        lines.append(
            f'    <vehicle id="V{number:03d}" type="{VTYPE_ID}" route="{ROUTE_ID}" depart="0.00"'
            f' departLane="0" departPos="{position:.2f}" departSpeed="{DEPART_SPEED_MPS:.2f}"/>'
        )
    lines.append("</routes>")
    return "\n".join(lines) + "\n"


def sumocfg_xml(end_s: float) -> str:
    """The SUMO configuration: relative inputs, 10 Hz, no outputs, no teleports, quiet.

    Teleporting is off so a collision or a jam is never hidden by a car jumping ahead; the
    env detects collisions from the true gap itself, so SUMO only warns.
    """
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<configuration>\n"
        "    <input>\n"
        f'        <net-file value="{NETWORK_FILE}"/>\n'
        f'        <route-files value="{ROUTES_FILE}"/>\n'
        "    </input>\n"
        "    <time>\n"
        '        <begin value="0"/>\n'
        f'        <end value="{end_s:.1f}"/>\n'
        f'        <step-length value="{STEP_S}"/>\n'
        "    </time>\n"
        "    <processing>\n"
        '        <time-to-teleport value="-1"/>\n'
        '        <collision.action value="warn"/>\n'
        "    </processing>\n"
        "    <report>\n"
        '        <no-step-log value="true"/>\n'
        '        <duration-log.disable value="true"/>\n'
        "    </report>\n"
        "</configuration>\n"
    )
