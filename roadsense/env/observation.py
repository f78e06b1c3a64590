"""Turn what the ego received over the mesh into the Dict observation (docs/design.md, "Observation").

Shapes: ``ego`` (EGO_FEATURES * frame_stack,), newest frame first; ``peers`` (MAX_PEERS, 6);
``peer_mask`` (MAX_PEERS,). Peers fill the first slots in a fresh random order each step:
the policy must treat them as a set, so no slot may carry identity or distance rank.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from roadsense.scenarios.scenario import VEHICLE_LENGTH_M

if TYPE_CHECKING:
    from roadsense.v2v import Reception


class EgoFrame(NamedTuple):
    """The ego features of one frame, in the order the policy reads them (ground truth for the ego itself).

    ``ego[EGO_FEATURES * f + i]`` is field i of the frame f steps ago; code that reads one
    feature (the rule-based baseline, deploy.json) finds its index here by name.
    """

    speed: float  # m/s / 30
    accel: float  # m/s^2 / 10
    visible_peers: float  # count / MAX_PEERS
    min_peer_accel: float  # min(0, lowest accel a visible peer reports), m/s^2 / 10
    braking_signal: float  # 0..1
    closing_speed: float  # max(0, largest ego speed - peer speed), m/s / 30


MAX_PEERS = 8
EGO_FEATURE_NAMES = EgoFrame._fields
EGO_FEATURES = len(EGO_FEATURE_NAMES)
PEER_FEATURES = 6
BRAKING_ACCEL = -2.5  # m/s^2: a peer reporting this or harder raises the braking signal
SIGNAL_DECAY = 0.95
STALE_MS = 500.0


def observation_space(frame_stack: int) -> spaces.Dict:
    return spaces.Dict(
        {
            "ego": spaces.Box(-np.inf, np.inf, (EGO_FEATURES * frame_stack,), np.float32),
            "peers": spaces.Box(-np.inf, np.inf, (MAX_PEERS, PEER_FEATURES), np.float32),
            "peer_mask": spaces.Box(0.0, 1.0, (MAX_PEERS,), np.float32),
        }
    )


@dataclass(slots=True)
class PeerView:
    """The visible peers of one step, in emulator index order (not the slot order).

    Plain Python lists: with at most eight peers, list arithmetic beats numpy's per-call cost.
    """

    index: list[int]  # peer indices into the episode's vehicle list (1-based, 0 is the ego)
    rows: list[list[float]]  # (m, 6) normalised peer features
    distance: float  # nearest received gap, m; inf when no peer is visible
    closing_speed: float  # max(ego speed - peer speed) over visible peers, m/s; 0 if none
    min_accel: float  # min reported accel over visible peers, m/s^2; 0 if none


def visible_peers(ego_x: float, ego_y: float, ego_speed: float, ego_heading_deg: float, reception: Reception) -> PeerView:
    """Peers whose held message is fresh and that lie in the ego's +-45 degree forward cone.

    Args:
        ego_x, ego_y: ground-truth ego position, m (the car knows itself).
        ego_speed: m/s. ego_heading_deg: direction of travel, degrees counter-clockwise from +x.
        reception: the emulator's :class:`roadsense.v2v.Reception` for this step.
    """
    theta = math.radians(ego_heading_deg)
    fwd_x, fwd_y = math.cos(theta), math.sin(theta)
    index: list[int] = []
    rows: list[list[float]] = []
    distance, closing, min_accel = math.inf, 0.0, 0.0
    valid = reception.valid.tolist()
    pos = reception.pos.tolist()
    speed, accel = reception.speed.tolist(), reception.accel.tolist()
    heading, age = reception.heading_deg.tolist(), reception.age_ms.tolist()
    for j, ok in enumerate(valid):
        if not ok:
            continue
        dx, dy = pos[j][0] - ego_x, pos[j][1] - ego_y
        rel_x = dx * fwd_x + dy * fwd_y
        rel_y = dy * fwd_x - dx * fwd_y
        if rel_x <= 0.0 or abs(rel_y) > rel_x:  # outside the cone (tan 45 degrees = 1)
            continue
        dheading = (heading[j] - ego_heading_deg + 180.0) % 360.0 - 180.0
        index.append(j + 1)
        rows.append([rel_x / 100.0, rel_y / 100.0, (speed[j] - ego_speed) / 30.0, dheading / 180.0,
                     accel[j] / 10.0, age[j] / STALE_MS])
        # Running extremes by comparison, picking what min()/max() would: three builtin calls per peer cost 0.2 us.
        gap, slower_by = math.hypot(rel_x, rel_y) - VEHICLE_LENGTH_M, ego_speed - speed[j]
        distance = gap if gap < distance else distance
        closing = slower_by if slower_by > closing else closing
        min_accel = accel[j] if accel[j] < min_accel else min_accel
    return PeerView(index, rows, distance, closing, min_accel)


def ego_frame(speed: float, accel: float, view: PeerView, braking_signal: float) -> EgoFrame:
    """The ego features of one frame: speed in m/s, accel in m/s^2, the braking signal in [0, 1]."""
    return EgoFrame(
        speed=speed / 30.0,
        accel=accel / 10.0,
        visible_peers=len(view.index) / MAX_PEERS,
        min_peer_accel=view.min_accel / 10.0,
        braking_signal=braking_signal,
        closing_speed=view.closing_speed / 30.0,
    )


# The peer mask with the first m slots occupied, for m = 0..MAX_PEERS; fill_peer_slots() hands out copies.
_MASKS = [np.array([1.0] * m + [0.0] * (MAX_PEERS - m), np.float32) for m in range(MAX_PEERS + 1)]


def fill_peer_slots(view: PeerView, rng: random.Random) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(peers (MAX_PEERS, 6), peer_mask (MAX_PEERS,)) with the visible peers in a random slot order."""
    peers = np.zeros((MAX_PEERS, PEER_FEATURES), np.float32)
    rows = view.rows[:]
    rng.shuffle(rows)
    m = min(len(rows), MAX_PEERS)
    if m:
        peers[:m] = rows[:m]
    return peers, _MASKS[m].copy()
