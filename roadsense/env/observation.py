"""Turn what the ego received over the mesh into the Dict observation (domain.md, 'Observation').

Shapes: ``ego`` (6 * frame_stack,), newest frame first; ``peers`` (MAX_PEERS, 6);
``peer_mask`` (MAX_PEERS,). Peers fill the first slots in a fresh random order each step:
the policy must treat them as a set, so no slot may carry identity or distance rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

MAX_PEERS = 8
EGO_FEATURES = 6
PEER_FEATURES = 6
VEHICLE_LENGTH_M = 5.0  # SUMO's passenger car; turns front-to-front distance into a gap
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

    ``index`` are peer indices into the episode's vehicle list (1-based, 0 is the ego).
    """

    index: np.ndarray  # (m,) int
    rows: np.ndarray  # (m, 6) float32, the normalised peer features
    distance: float  # nearest received gap, m; inf when no peer is visible
    closing_speed: float  # max(ego speed - peer speed) over visible peers, m/s; -inf if none
    min_accel: float  # min reported accel over visible peers, m/s^2; +inf if none


def visible_peers(
    ego_pos: np.ndarray, ego_speed: float, ego_heading_deg: float, reception
) -> PeerView:
    """Peers whose held message is fresh and that lie in the ego's +-45 degree forward cone.

    Args:
        ego_pos: (2,) ground-truth ego position, m (the car knows itself).
        ego_speed: m/s. ego_heading_deg: SUMO angle (0 = north, clockwise), degrees.
        reception: the emulator's :class:`roadsense.v2v.Reception` for this step.
    """
    theta = np.radians(ego_heading_deg)
    fwd_x, fwd_y = np.sin(theta), np.cos(theta)
    rel = reception.pos - ego_pos
    rel_x = rel[:, 0] * fwd_x + rel[:, 1] * fwd_y
    rel_y = rel[:, 0] * -fwd_y + rel[:, 1] * fwd_x
    # In the cone: ahead, and no further sideways than forward (tan 45 degrees = 1).
    seen = reception.valid & (rel_x > 0.0) & (np.abs(rel_y) <= rel_x)
    idx = np.flatnonzero(seen)
    if idx.size == 0:
        return PeerView(idx + 1, np.zeros((0, PEER_FEATURES), np.float32), float("inf"), float("-inf"), float("inf"))
    speed = reception.speed[idx]
    accel = reception.accel[idx]
    heading = (reception.heading_deg[idx] - ego_heading_deg + 180.0) % 360.0 - 180.0
    rows = np.empty((idx.size, PEER_FEATURES), np.float32)
    rows[:, 0] = rel_x[idx] / 100.0
    rows[:, 1] = rel_y[idx] / 100.0
    rows[:, 2] = (speed - ego_speed) / 30.0
    rows[:, 3] = heading / 180.0
    rows[:, 4] = accel / 10.0
    rows[:, 5] = reception.age_ms[idx] / STALE_MS
    gap = float(np.hypot(rel_x[idx], rel_y[idx]).min()) - VEHICLE_LENGTH_M
    return PeerView(idx + 1, rows, gap, float(ego_speed - speed.min()), float(accel.min()))


def ego_frame(speed: float, accel: float, view: PeerView, braking_signal: float) -> list[float]:
    """The 6 ego features of one frame (ground truth for the ego itself)."""
    n = view.index.size
    return [
        speed / 30.0,
        accel / 10.0,
        n / MAX_PEERS,
        min(0.0, view.min_accel) / 10.0 if n else 0.0,
        braking_signal,
        max(0.0, view.closing_speed) / 30.0 if n else 0.0,
    ]


def fill_peer_slots(view: PeerView, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(peers (MAX_PEERS, 6), peer_mask (MAX_PEERS,)) with the visible peers in random slots order."""
    peers = np.zeros((MAX_PEERS, PEER_FEATURES), np.float32)
    mask = np.zeros(MAX_PEERS, np.float32)
    m = min(view.index.size, MAX_PEERS)
    if m:
        peers[:m] = view.rows[rng.permutation(view.index.size)[:m]]
        mask[:m] = 1.0
    return peers, mask
