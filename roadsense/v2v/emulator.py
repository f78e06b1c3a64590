"""The ESP-NOW V2V mesh as the ego car (vehicle index 0) experiences it, one 0.1 s env step at a time.

Every step each car broadcasts one message: its own state plus sensor noise, drawn once at the
source (the same noisy sample travels every hop). A message reaches the ego directly or through
relays; the ego keeps the earliest-arriving copy and holds the latest message per peer until a
newer one arrives or it grows older than ``staleness_ms``.

Links. Within one step the radio channel between two cars does not change, so each directed
link ``(a, b)`` gets one loss draw and one latency draw per step, shared by everything ``a``
sends to ``b`` in that step (its own message and the ones it relays):

* Loss by distance bin (``loss_bin_upper_m`` / ``loss_prob``; 0-20 m 5.8 %, 20-50 m 11.6 %).
  Beyond ``max_range_m`` (the last bin edge) nothing arrives, and a vehicle with NaN position
  (it left the simulation) neither sends nor receives.
* Latency per hop ``max(latency_min_ms, N(latency_base_ms, latency_jitter_ms))``; ages add up
  over hops. Latency is a few ms, so a message sent in a step arrives in that step.
* Relays: node ``a`` (not the ego) forwards source ``j``'s message if ``j`` lies inside ``a``'s
  forward cone (+-``relay_cone_half_angle_deg`` around ``a``'s heading, judged on true
  positions). The ego gets the earliest copy over all paths ``j -> relays -> ego`` of at most
  ``max_hops`` links through distinct relays (ties go to fewer hops).

Burst model. The measured reference (docs/design.md, "Burst losses") gives, besides the bin rates, "after a loss the next is lost with
p = 1 - 1/1.606, loss multiplier 2.5, capped at 0.186". Read literally these disagree: a
probability capped at 0.186 cannot be 0.377 (= 1 - 1/1.606, the continuation probability of
a burst with mean length 1.606). We implement the parameterised rule, as a two-state chain
per directed link ``(a, b)``, advanced once per step (every car sends every step):

* after a step in which the link delivered (and at episode start) it loses with the bin
  probability ``p`` of its current distance;
* after a step in which it lost, it loses with ``p_burst = min(p * burst_loss_multiplier,
  burst_loss_cap)``.

With the defaults, P(loss | previous lost) is 0.145 (0-20 m) and 0.186 (20-50 m); the
long-run loss rate of a link is ``p / (1 - p_burst + p)`` (6.3 % and 12.5 %), slightly above
the bin rate because bursts add losses. Both conditional probabilities equal parameters, so
tests can check them directly. The literal reading (P = 0.377 after a loss) is the same model
with ``burst_loss_cap = 0.377`` and a large multiplier. A step beyond range counts as a loss,
so a link coming back into range starts in the burst state for one step.

Domain randomisation (``domain_randomization=True``) draws once per episode, uniformly in the
ranges of ``params.randomization``: base latency, jitter, GPS noise, and ``loss_rate``. The
drawn ``loss_rate`` is the loss probability of the nearest bin; every bin probability and the
burst cap are scaled by the same factor ``loss_rate / loss_prob[0]`` (so 20-50 m stays twice
as lossy as 0-20 m and bursts keep their shape), each clipped to 1. The default range
U(0.029, 0.25) is thus 0.5x to 4.3x the measured channel. Without randomisation the measured
values are used as they are.

Speed. The env calls :meth:`MeshEmulator.step` every simulation step, so a step is a fixed
handful of numpy calls on arrays of at most 9 nodes, with no per-message Python objects; at
that size a call costs its overhead, not its arithmetic, so step() makes no call it can avoid
(views are made once per episode, the heading rotation is reused while headings stay the
same). The paths a message can take to the ego are enumerated once per vehicle count as index
arrays, so routing is one gather and one matrix product. Random numbers are drawn from the
episode's generator in blocks of ``BLOCK_STEPS`` steps, always in the same order, so a seed
fixes every message.

Conventions: positions in metres in the world frame; ``heading_deg`` is the direction of travel
in degrees counter-clockwise from the world +x axis (SUMO's compass angle ``a`` is ``90 - a``).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from roadsense.v2v.params import EspNowParams

BLOCK_STEPS = 256
# Columns of a message as the ego holds it: the (noisy) state the source reported, then how
# many links it travelled and when (ms of sim time) the source sampled it.
X, Y, SPEED, ACCEL, HEADING, HOPS, ORIGIN_MS = range(7)
N_STATE = 5


@functools.cache
def _routes(n: int, max_hops: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """Every route source -> distinct relays -> ego (index 0) of at most ``max_hops`` links, for ``n`` vehicles.

    A route's latency is the sum of entries of the per-step vector built in step():
    ``[link_ms.ravel() (n*n), relay_ms.ravel() (n*n), 0.0]``, where ``relay_ms[j, r]`` is 0 if
    relay r forwards source j and inf otherwise. Each route is a row of indices into it, padded
    with the trailing 0.0. Routes are grouped by source (peer 1..n-1), the same count each,
    fewest hops first so that argmin breaks ties towards fewer hops. Returns (the index rows,
    the hop count of each route of one source).

    Cached (read-only arrays): every episode with the same vehicle count has the same routes,
    and enumerating them costs as much as 5 (n = 6) to 20 (n = 9) steps.
    """
    zero = 2 * n * n
    width = 2 * max_hops - 1
    rows: list[list[int]] = []
    hops: list[int] = []
    for source in range(1, n):
        others = [r for r in range(1, n) if r != source]
        for n_relays in range(min(max_hops, n - 1)):
            for relays in itertools.permutations(others, n_relays):
                nodes = (source, *relays, 0)
                row = [a * n + b for a, b in itertools.pairwise(nodes)]
                row += [n * n + source * n + r for r in relays]
                rows.append(row + [zero] * (width - len(row)))
                if source == 1:
                    hops.append(n_relays + 1)
    path_index = np.array(rows, dtype=np.intp).reshape(-1, width)
    path_hops = np.array(hops, dtype=np.int64)
    path_index.flags.writeable = path_hops.flags.writeable = False
    return path_index, path_hops


@dataclass(slots=True)
class Reception:
    """What the ego holds after a step, one entry per peer (vehicle index 1..n-1), shape (n-1,).

    Entries where ``valid`` is False are meaningless (never received, or stale).
    """

    valid: npt.NDArray[np.bool_]  # bool: a message is held and its age <= staleness_ms
    pos: npt.NDArray[np.float64]  # (n-1, 2) reported position, m, world frame
    speed: npt.NDArray[np.float64]  # reported speed, m/s
    accel: npt.NDArray[np.float64]  # reported acceleration, m/s^2
    heading_deg: npt.NDArray[np.float64]  # reported heading, degrees (not wrapped)
    age_ms: npt.NDArray[np.float64]  # now - the time the source sampled its state, ms
    hops: npt.NDArray[np.int64]  # int: links the held message travelled (1 = direct)


class MeshEmulator:
    """ESP-NOW mesh seen from the ego; see the module docstring for the model."""

    def __init__(self, params: EspNowParams, max_peers: int = 8, domain_randomization: bool = True) -> None:
        if domain_randomization and params.loss_prob[0] <= 0.0:
            raise ValueError("domain randomisation scales loss by loss_rate / loss_prob[0]; loss_prob[0] must be > 0")
        self.params = params
        self.max_peers = max_peers
        self.domain_randomization = domain_randomization
        self.episode_params: dict[str, float] = {}
        self._edges = np.asarray(params.loss_bin_upper_m, dtype=float)
        self._cos_cone = math.cos(math.radians(params.relay_cone_half_angle_deg))
        self._rng: np.random.Generator | None = None
        self._block_pos = BLOCK_STEPS

    def reset(self, rng: np.random.Generator, n_vehicles: int) -> None:
        """Start an episode with ``n_vehicles`` (ego + peers): draw its randomisation from ``rng``, forget links and messages."""
        if not 1 <= n_vehicles <= self.max_peers + 1:
            raise ValueError(f"n_vehicles={n_vehicles} must be the ego plus 0..max_peers={self.max_peers} peers")
        p = self.params
        if self.domain_randomization:
            r = p.randomization
            lows, highs = zip(r.latency_base_ms, r.loss_rate, r.latency_jitter_ms, r.gps_noise_m, strict=True)
            latency_base, loss_rate, jitter, gps = rng.uniform(lows, highs)
            loss_scale = loss_rate / p.loss_prob[0]
        else:
            latency_base, loss_rate, jitter, gps = p.latency_base_ms, p.loss_prob[0], p.latency_jitter_ms, p.gps_noise_m
            loss_scale = 1.0
        self.episode_params = {
            "latency_base_ms": float(latency_base),
            "loss_rate": float(loss_rate),
            "latency_jitter_ms": float(jitter),
            "gps_noise_m": float(gps),
        }
        loss = np.minimum(np.asarray(p.loss_prob) * loss_scale, 1.0)
        burst = np.minimum(np.minimum(loss * p.burst_loss_multiplier, p.burst_loss_cap * loss_scale), 1.0)
        # One bin past the last edge, where searchsorted puts distances beyond max range and NaN.
        self._loss_prob = np.append(loss, 1.0)
        self._burst_loss_prob = np.append(burst, 1.0)
        self._noise_std = np.array([gps, gps, p.speed_noise_mps, p.accel_noise_mps2, p.heading_noise_deg])

        n = n_vehicles
        self._rng = rng
        self._n = n
        self._block_pos = BLOCK_STEPS
        self._staleness_ms = p.staleness_ms
        # step() writes through views of these buffers made here, once per episode: with at most 9
        # rows a numpy call costs its overhead, not its arithmetic, and making a view is a call.
        self._state = np.empty((n, N_STATE))  # true state, this step
        self._state_pos, self._state_speed = self._state[:, X : Y + 1], self._state[:, SPEED]
        self._state_accel, self._state_heading = self._state[:, ACCEL], self._state[:, HEADING]
        # Positions as complex numbers x + iy, a view that follows self._state; as a column and a row.
        z = self._state_pos.view(np.complex128)[:, 0]
        self._z_column, self._z_row = z[:, None], z[None, :]
        # exp(-i heading) of every car and the headings' bytes it was computed for; step() recomputes
        # it only when they change (b"" matches no headings, so the first step computes it).
        self._rotation_headings = b""
        self._rotation = np.empty(n, np.complex128)
        self._sent = np.empty((n, ORIGIN_MS + 1))  # the messages sent this step, one row per car
        self._sent_state, self._sent_by_peers = self._sent[:, :N_STATE], self._sent[1:]
        self._sent_hops, self._sent_origin_ms = self._sent[1:, HOPS], self._sent[1:, ORIGIN_MS]
        # Never heard from: origin -inf makes the age inf, so the peer is invalid until a message arrives.
        self._held = np.full((n - 1, ORIGIN_MS + 1), np.nan)
        self._held[:, ORIGIN_MS] = -np.inf
        self._held[:, HOPS] = 0
        self._link_lost = np.zeros((n, n), dtype=bool)  # [sender, receiver]: lost in the previous step

        self._path_index, self._path_hops = _routes(n, p.max_hops)
        self._paths_per_source = max(len(self._path_hops), 1)  # 1 without peers keeps the (0, K) reshape valid
        self._first_path = np.arange(n - 1) * len(self._path_hops)
        # The per-step vector the route indices point into: [link_ms (n*n), relay_ms (n*n), 0.0].
        self._route_values = np.zeros(2 * n * n + 1)
        self._link_ms = self._route_values[: n * n].reshape(n, n)
        self._relay_ms = self._route_values[n * n : 2 * n * n].reshape(n, n)
        self._ones = np.ones(self._path_index.shape[1])

    def step(
        self,
        now_s: float,
        pos: npt.NDArray[np.float64],
        speed: npt.NDArray[np.float64],
        accel: npt.NDArray[np.float64],
        heading_deg: npt.NDArray[np.float64],
    ) -> Reception:
        """Every car broadcasts its state at time ``now_s`` (s); return what the ego holds afterwards.

        ``pos`` is (n, 2) in m (NaN rows: vehicle gone); ``speed`` m/s, ``accel`` m/s^2 and
        ``heading_deg`` are (n,); index 0 is the ego, the order is fixed for the episode.
        """
        if self._block_pos == BLOCK_STEPS:
            self._refill()
        k = self._block_pos
        self._block_pos += 1
        n = self._n

        self._state_pos[...] = pos
        self._state_speed[...] = speed
        self._state_accel[...] = accel
        self._state_heading[...] = heading_deg
        np.add(self._state, self._noise[k], out=self._sent_state)

        offset = self._z_column - self._z_row  # [j, a] = pos_j - pos_a
        dist = np.abs(offset)
        # Relay a forwards source j when j is inside a's forward cone: rotating pos_j - pos_a by
        # -heading_a puts a's heading on the real axis, where the cone is real >= cos(half) * |.|.
        # The rotation (a complex exp) changes only when a heading does, on a straight road never.
        headings = heading_deg.tobytes()
        if headings != self._rotation_headings:
            self._rotation_headings = headings
            self._rotation = np.exp(heading_deg * (-1j * math.pi / 180.0))
        along = (offset * self._rotation).real
        self._relay_ms.fill(np.inf)
        np.copyto(self._relay_ms, 0.0, where=along >= self._cos_cone * dist)

        bin_index = self._edges.searchsorted(dist)  # [a, b]; beyond max range or NaN -> the never-delivers bin
        loss_prob = np.where(self._link_lost, self._burst_loss_prob[bin_index], self._loss_prob[bin_index])
        lost = self._uniform[k] < loss_prob
        self._link_lost = lost
        np.copyto(self._link_ms, self._latency_ms[k])
        np.copyto(self._link_ms, np.inf, where=lost)

        # Latency of every route (inf where a link is lost or a relay refuses), then the earliest per source.
        route_ms = self._route_values[self._path_index] @ self._ones
        best = route_ms.reshape(n - 1, self._paths_per_source).argmin(axis=1)
        latency_ms = route_ms[self._first_path + best]
        now_ms = now_s * 1000.0
        self._sent_hops[...] = self._path_hops[best]
        np.subtract(now_ms, latency_ms, out=self._sent_origin_ms)

        # A new message replaces the held one; the copy keeps earlier Receptions unchanged.
        np.copyto(self._held, self._sent_by_peers, where=np.isfinite(latency_ms)[:, None])
        held = self._held.copy()
        age_ms = now_ms - held[:, ORIGIN_MS]
        return Reception(
            valid=age_ms <= self._staleness_ms,
            pos=held[:, X : Y + 1],
            speed=held[:, SPEED],
            accel=held[:, ACCEL],
            heading_deg=held[:, HEADING],
            age_ms=age_ms,
            hops=held[:, HOPS].astype(np.int64),
        )

    def _refill(self) -> None:
        """Draw the random numbers of the next BLOCK_STEPS steps (fixed order, so the seed fixes them)."""
        if self._rng is None:
            raise RuntimeError("MeshEmulator.step() called before reset()")
        rng, n, ep = self._rng, self._n, self.episode_params
        shape = (BLOCK_STEPS, n, n)  # [step, sender, receiver]
        self._uniform = rng.random(shape)
        latency = ep["latency_base_ms"] + ep["latency_jitter_ms"] * rng.standard_normal(shape)
        self._latency_ms = np.maximum(latency, self.params.latency_min_ms)
        self._noise = rng.standard_normal((BLOCK_STEPS, n, 5)) * self._noise_std
        self._block_pos = 0
