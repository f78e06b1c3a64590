"""ConvoyEnv: the ego car (V001) at the back of a single-lane convoy, seeing peers only over the mesh.

One episode = one SUMO run of one scenario: warm-up under SUMO's car-following, then up
to ``episode_steps`` agent steps of 0.1 s. A peer ahead brakes hard at ``hazard_step``.
The action is a brake intensity in [0, 1]; at or below 0.02 SUMO drives the ego, except
that from three steps after the hazard start SUMO may no longer brake for it (the ego
holds its speed), so the policy cannot learn to leave the braking to SUMO.

Rewards use what the ego received (the mesh distance); termination uses ground truth
(SUMO's bumper-to-bumper gap < 5 m), because noisy distances made false collisions.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from roadsense.arrays import Observation
from roadsense.config import EnvConfig
from roadsense.env.hazard import HazardPlan
from roadsense.env.observation import (
    BRAKING_ACCEL,
    EGO_FEATURES,
    MAX_PEERS,
    PEER_FEATURES,
    SIGNAL_DECAY,
    PeerView,
    ego_frame,
    fill_peer_slots,
    observation_space,
    visible_peers,
)
from roadsense.env.reward import BRAKING_ACTION, DECEL_THRESHOLD, REWARD_TERM_NAMES, RewardTerms, reward_terms
from roadsense.env.scenario_source import ScenarioSource
from roadsense.scenarios.scenario import EGO_ID, Split
from roadsense.sim.backend import STEP_S, SimBackend, SimulationError, make_backend
from roadsense.v2v import MeshEmulator, Reception, load_params

MAX_DECEL = 8.0  # m/s^2 at action 1
COLLISION_GAP_M = 5.0
CF_OVERRIDE_DELAY = 3  # steps after the hazard start from which SUMO may not brake for the ego
SPAWN_STEPS = 100  # steps to wait for V001 before the scenario is declared broken
SPEED_MODE_SUMO = 31  # all of SUMO's safety checks
SPEED_MODE_COMMAND = 0  # the commanded speed is applied as is

# What step() returns: observation, reward, terminated (a collision), truncated (time limit or
# simulation error), info.
StepResult = tuple[Observation, float, bool, bool, dict[str, Any]]


# ObsType is dict[str, Any], not Observation: gymnasium types a Dict space as Space[dict[str, Space]],
# which Space[Observation] would refuse. reset() and step() are annotated with Observation.
class ConvoyEnv(gym.Env[dict[str, Any], npt.NDArray[np.float32]]):
    """Gymnasium env over real SUMO; see the module docstring.

    Args:
        scenario: a ``.sumocfg`` file, a dataset folder (with ``manifest.json``), or ``None``
            for the built-in scenario.
        split: the dataset split to draw from (``train``: seeded random choice; ``eval``: in order).
        config: environment settings; defaults to :class:`roadsense.config.EnvConfig`.

    Reset options: ``hazard_rank`` (int) forces the hazard onto the k-th peer ahead;
    ``scenario_id`` (str) runs that scenario of the dataset instead of the next one.
    """

    metadata = {"render_modes": []}

    def __init__(self, scenario: str | Path | None = None, split: Split = "train", config: EnvConfig | None = None) -> None:
        self.config = config or EnvConfig()
        self.source = ScenarioSource(scenario, split)
        params_file = self.config.emulator_params or self.source.emulator_params_file
        self.emulator = MeshEmulator(load_params(params_file), domain_randomization=self.config.domain_randomization)
        self.backend: SimBackend = make_backend(self.config.backend)
        self.observation_space: spaces.Dict = observation_space(self.config.frame_stack)
        self.action_space: spaces.Box[np.float32] = spaces.Box(0.0, 1.0, (1,), np.float32)
        # The stacked ego frames, newest first, as plain floats: one conversion per step makes the observation.
        self._ego_values = [0.0] * (self.config.frame_stack * EGO_FEATURES)
        self._ids: list[str] = []

    # ------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Observation, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if seed is not None or not self.source.seeded:
            self.source.seed(int(self.np_random.integers(2**31)))
        scenario_id, sumocfg = self.source.pick(options.get("scenario_id"))
        self.scenario_id = scenario_id
        self.backend.start(sumocfg, seed=int(self.np_random.integers(2**31)))
        api = self.backend.api
        self._vehicle = api.vehicle
        # The getters _read_states() calls for every vehicle every step, looked up once per episode.
        vehicle = self._vehicle
        self._state_getters = (vehicle.getPosition, vehicle.getSpeed, vehicle.getAcceleration, vehicle.getAngle,
                               vehicle.getLanePosition)
        self._get_time = api.simulation.getTime
        for _ in range(SPAWN_STEPS):
            self.backend.step()
            if EGO_ID in self._vehicle.getIDList():
                break
        else:
            self.backend.close()
            raise SimulationError(
                f"scenario {scenario_id}: {EGO_ID} did not appear within {SPAWN_STEPS} steps; "
                f"its route file must depart {EGO_ID} at t=0 and be sorted by depart time"
            )
        peers = sorted(v for v in self._vehicle.getIDList() if v != EGO_ID)
        self._ids = [EGO_ID, *peers]
        self._peer_lengths = [self._vehicle.getLength(v) for v in peers]
        n = len(self._ids)

        rank = options.get("hazard_rank")
        if rank is not None and not 1 <= int(rank) <= len(peers):
            self.backend.close()
            raise ValueError(f"hazard_rank={rank}: scenario {scenario_id} has {len(peers)} peers ahead (1..{len(peers)})")
        window = self.config.hazard_window
        start = int(self.np_random.integers(window[0], window[1] + 1)) if window else self.config.hazard_step
        self.hazard = HazardPlan.draw(self.np_random, start, None if rank is None else int(rank))
        self._hazard_peer: int | None = None
        self._hazard_speed = 0.0

        self.emulator.reset(np.random.default_rng(int(self.np_random.integers(2**63))), n)
        self._slot_rng = random.Random(int(self.np_random.integers(2**63)))
        for _ in range(self.config.warmup_steps):
            self.backend.step()
            self._read_states()
            self.emulator.step(self._now(), self._pos, self._speed, self._accel, self._heading)
        self._read_states()
        reception = self.emulator.step(self._now(), self._pos, self._speed, self._accel, self._heading)

        self.t = 0
        self.braking_signal = 0.0  # warm-up must not leave a signal behind
        self._speed_mode = SPEED_MODE_SUMO
        self._ego_values = [0.0] * len(self._ego_values)
        self._prev_ego_speed = self._ego_speed
        self._summary = _EpisodeSummary(scenario_id, len(peers), self.hazard)
        self._reception, self._action = reception, 0.0
        view = self._view(reception)
        return self._observe(view), {"scenario_id": scenario_id, "n_peers": len(peers), "hazard_step": start,
                                     "emulator": dict(self.emulator.episode_params)}

    def step(self, action: npt.NDArray[np.float32]) -> StepResult:
        """Apply ``action`` (brake intensity, shape (1,), clipped to [0, 1]) for one 0.1 s step."""
        a = min(1.0, max(0.0, float(np.asarray(action).item(0))))
        try:
            self._apply_hazard()
            self._apply_ego_action(a)
            self.backend.step()
            self._read_states()
            reception = self.emulator.step(self._now(), self._pos, self._speed, self._accel, self._heading)
        except Exception as exc:  # noqa: BLE001 - any SUMO failure ends this episode, visibly
            return self._end_on_error(exc)
        self.t += 1
        self._reception, self._action = reception, a  # kept for trace_point(), which only traces call

        view = self._view(reception)
        ego_speed = self._ego_speed
        decel = max(0.0, (self._prev_ego_speed - ego_speed) / STEP_S)
        self._prev_ego_speed = ego_speed
        gap = self._true_gap()
        collided = gap < COLLISION_GAP_M
        terms = reward_terms(view.distance, decel, a, self.braking_signal, view.closing_speed, ego_speed,
                             -self.config.collision_penalty if collided else 0.0)
        reward = terms.total
        truncated = self.t >= self.config.episode_steps and not collided
        self._summary.record(self, terms, reward, gap, decel, a > BRAKING_ACTION, reception)

        info: dict[str, Any] = {"reward_terms": terms._asdict(), "true_gap_m": gap, "scenario_id": self.scenario_id}
        if collided or truncated:
            info["episode_summary"] = self._summary.finish(collided, None)
            self.backend.close()
        return self._observe(view), reward, collided, truncated, info

    def close(self) -> None:
        self.backend.close()

    def trace_point(self) -> dict[str, float | int]:
        """The last step's ego state and receptions, computed only when a trace asks for them.

        ``ego_speed_mps`` (m/s, ground truth); ``action``: the brake intensity applied, in [0, 1];
        ``braking_signal`` in [0, 1]; ``messages_received``: peers whose message reached the ego
        in this step; ``hazard_message``: 1 if one of them was the hazard peer (0 before the
        hazard starts). A message arrived in this step when its age is under one step (100 ms):
        the emulator delivers within the step a message is sent (latency is a few ms), so a
        message held from an earlier step is always at least 100 ms old.
        """
        arrived = self._reception.age_ms < STEP_S * 1000.0
        hazard = self._hazard_peer
        return {
            "ego_speed_mps": self._ego_speed,
            "action": self._action,
            "braking_signal": self.braking_signal,
            "messages_received": int(arrived.sum()),
            "hazard_message": int(hazard is not None and bool(arrived[hazard - 1])),
        }

    # ------------------------------------------------------------------------------------
    def _now(self) -> float:
        now: float = self._get_time()  # s; the TraCI API is untyped
        return now

    def _read_states(self) -> None:
        position, speed, acceleration, angle, lane_position = self._state_getters
        # 90 - angle: SUMO's compass angle -> degrees counter-clockwise from +x.
        rows = [(*position(vid), speed(vid), acceleration(vid), 90.0 - angle(vid), lane_position(vid)) for vid in self._ids]
        self._ego_x, self._ego_y, self._ego_speed, self._ego_accel, self._ego_heading, _ = rows[0]
        self._lanepos = [row[5] for row in rows]  # a list: the gap check reads it every step
        state: npt.NDArray[np.float64] = np.array(rows)
        self._pos, self._speed, self._accel, self._heading = state[:, :2], state[:, 2], state[:, 3], state[:, 4]

    def _true_gap(self) -> float:
        """Ground-truth bumper-to-bumper gap from the ego to the nearest peer ahead, m."""
        ego = self._lanepos[0]
        nearest = math.inf
        for p, length in zip(self._lanepos[1:], self._peer_lengths, strict=True):  # a loop: no list, no min() call
            gap = p - length - ego
            if p > ego and gap < nearest:
                nearest = gap
        return nearest

    def _view(self, reception: Reception) -> PeerView:
        view = visible_peers(self._ego_x, self._ego_y, self._ego_speed, self._ego_heading, reception)
        if view.index and view.min_accel <= BRAKING_ACCEL:
            self.braking_signal = 1.0
        else:
            self.braking_signal *= SIGNAL_DECAY
        self._last_view = view
        return view

    def _observe(self, view: PeerView) -> Observation:
        frame = ego_frame(self._ego_speed, self._ego_accel, view, self.braking_signal)
        self._ego_values = [*frame, *self._ego_values[: -len(frame)]]
        peers, mask = fill_peer_slots(view, self._slot_rng)
        return {"ego": np.array(self._ego_values, np.float32), "peers": peers, "peer_mask": mask}

    def _apply_ego_action(self, a: float) -> None:
        vehicle = self._vehicle
        if a > BRAKING_ACTION:
            self._set_ego_mode(SPEED_MODE_COMMAND)
            vehicle.setSpeed(EGO_ID, max(0.0, self._ego_speed - MAX_DECEL * a * STEP_S))
        elif self.t >= self.hazard.start_step + CF_OVERRIDE_DELAY:
            self._set_ego_mode(SPEED_MODE_COMMAND)
            vehicle.setSpeed(EGO_ID, self._ego_speed)
        else:
            self._set_ego_mode(SPEED_MODE_SUMO)
            vehicle.setSpeed(EGO_ID, -1.0)

    def _set_ego_mode(self, mode: int) -> None:
        if mode != self._speed_mode:
            self._vehicle.setSpeedMode(EGO_ID, mode)
            self._speed_mode = mode

    def _apply_hazard(self) -> None:
        """Drive the hazard peer: brake hard, hold the reached speed, maybe release to SUMO."""
        plan, t = self.hazard, self.t
        if t < plan.start_step:
            return
        vehicle = self._vehicle
        if t == plan.start_step:
            self._hazard_peer, rank = self._pick_hazard_peer(plan.rank)
            self._hazard_speed = float(self._speed[self._hazard_peer])
            vehicle.setSpeedMode(self._ids[self._hazard_peer], SPEED_MODE_COMMAND)
            self._summary.hazard_started(self._hazard_peer, rank)
        hazard_peer = self._hazard_peer
        assert hazard_peer is not None  # picked at plan.start_step, and t >= plan.start_step here
        peer = self._ids[hazard_peer]
        if t < plan.start_step + plan.brake_steps:
            self._hazard_speed = max(0.0, self._hazard_speed - plan.decel * STEP_S)
            vehicle.setSpeed(peer, self._hazard_speed)
        elif plan.release_step is not None and t == plan.release_step:
            vehicle.setSpeedMode(peer, SPEED_MODE_SUMO)
            vehicle.setSpeed(peer, -1.0)

    def _pick_hazard_peer(self, rank: int | None) -> tuple[int, int]:
        """(peer index, its rank among the peers ahead, 1 = nearest): the forced rank or a uniform draw."""
        ego = self._lanepos[0]
        ahead = sorted((i for i in range(1, len(self._ids)) if self._lanepos[i] > ego), key=self._lanepos.__getitem__)
        if rank is None:
            rank = int(self.np_random.integers(len(ahead))) + 1
        rank = min(rank, len(ahead))
        return ahead[rank - 1], rank

    def _end_on_error(self, exc: Exception) -> StepResult:
        """A simulation error ends the episode (truncated) and says so in ``info``."""
        self.backend.close()
        message = f"scenario {self.scenario_id}: SUMO failed at step {self.t}: {exc}"
        info = {"sim_error": message, "scenario_id": self.scenario_id,
                "episode_summary": self._summary.finish(False, message)}
        obs = {"ego": np.array(self._ego_values, np.float32),
               "peers": np.zeros((MAX_PEERS, PEER_FEATURES), np.float32),
               "peer_mask": np.zeros(MAX_PEERS, np.float32)}
        return obs, 0.0, False, True, info


class _EpisodeSummary:
    """Per-episode telemetry for evaluation and the reward audit, accumulated cheaply each step."""

    def __init__(self, scenario_id: str, n_peers: int, plan: HazardPlan) -> None:
        self.scenario_id = scenario_id
        self.n_peers = n_peers
        self.plan = plan
        self.hazard_peer: int | None = None
        self.hazard_rank: int | None = None
        self.hazard_received = False
        self.reaction_step: int | None = None
        self.min_gap_post_hazard = float("inf")
        self.steps = 0
        self.steps_gap_lt_10 = 0
        self.reward = 0.0
        self.term_fired = dict.fromkeys(REWARD_TERM_NAMES, 0)

    def hazard_started(self, peer: int, rank: int) -> None:
        self.hazard_peer = peer
        self.hazard_rank = rank

    def record(self, env: ConvoyEnv, terms: RewardTerms, reward: float, gap: float, decel: float, commanded: bool,
               reception: Reception) -> None:
        self.steps += 1
        self.reward += reward
        self.steps_gap_lt_10 += gap < 10.0
        for name, value in zip(REWARD_TERM_NAMES, terms, strict=True):
            if value != 0.0:
                self.term_fired[name] += 1
        if self.hazard_peer is None:
            return
        self.min_gap_post_hazard = min(self.min_gap_post_hazard, gap)
        # A reaction is the policy's own braking: SUMO's car-following also brakes the ego in the
        # first steps after the hazard, and counting that would credit never-brake with reactions.
        if self.reaction_step is None and commanded and decel > DECEL_THRESHOLD:
            self.reaction_step = env.t - self.plan.start_step
        if not self.hazard_received:
            j = self.hazard_peer - 1
            self.hazard_received = bool(reception.valid[j] and reception.accel[j] <= BRAKING_ACCEL)

    def finish(self, collided: bool, sim_error: str | None) -> dict[str, Any]:
        return {
            "scenario_id": self.scenario_id,
            "n_peers": self.n_peers,
            "hazard_rank": self.hazard_rank,
            "hazard_started": self.hazard_peer is not None,
            "hazard_received": self.hazard_received,
            "collision": collided,
            "sim_error": sim_error,
            "steps": self.steps,
            "reward": self.reward,
            "reaction": self.reaction_step is not None,
            "reaction_time_s": None if self.reaction_step is None else self.reaction_step * STEP_S,
            "min_gap_post_hazard_m": None if self.hazard_peer is None else self.min_gap_post_hazard,
            "frac_gap_lt_10m": self.steps_gap_lt_10 / max(1, self.steps),
            "term_fired": dict(self.term_fired),
        }
