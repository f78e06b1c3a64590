"""Rollouts collected in the workers: the same data SB3's collect_rollouts would give PPO."""

from __future__ import annotations

import copy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from roadsense.env.observation import MAX_PEERS, observation_space
from roadsense.policy import policy_kwargs
from roadsense.policy.actor_critic import Layout, PolicyNet, gaussian_log_prob
from roadsense.training import rollout
from roadsense.training.rollout import (
    ACTION_STREAM,
    EpisodeEnd,
    RolloutCollector,
    Segment,
    build_batch,
    gae,
)
from roadsense.training.train import TrainingAborted, _RolloutMonitor

KWARGS = policy_kwargs(16, -0.5)


def test_gae_is_the_recursion_of_sb3_rollout_buffer() -> None:
    rng = np.random.default_rng(2)
    steps, n_envs = 64, 3
    buffer = RolloutBuffer(steps, spaces.Box(-1, 1, (1,)), spaces.Box(-1, 1, (1,)), n_envs=n_envs, gamma=0.99,
                           gae_lambda=0.95)
    buffer.rewards[:] = rng.normal(size=(steps, n_envs))
    buffer.values[:] = rng.normal(size=(steps, n_envs))
    buffer.episode_starts[:] = rng.random((steps, n_envs)) < 0.1
    last_values, last_dones = rng.normal(size=n_envs).astype(np.float32), np.array([True, False, False])
    buffer.compute_returns_and_advantage(torch.from_numpy(last_values), last_dones)

    ours = gae(buffer.rewards, buffer.values, buffer.episode_starts.astype(bool), last_values, last_dones, 0.99, 0.95)
    np.testing.assert_allclose(ours, buffer.advantages, rtol=1e-5, atol=1e-6)


@pytest.fixture
def collector(scenario_factory, make_env):
    """``collector(seed)`` -> a RolloutCollector over a real SUMO convoy with 30-step episodes."""

    def make(seed: int) -> RolloutCollector:
        env = make_env(scenario_factory(3), episode_steps=30, hazard_step=10)
        return RolloutCollector(env, KWARGS, seed, None)

    return make


def _weights(policy: MultiInputActorCriticPolicy) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in policy.state_dict().items()}


def _policy(seed: int) -> MultiInputActorCriticPolicy:
    """A policy with every weight, bias and log_std moved off SB3's initial values (zero biases, -0.5)."""
    torch.manual_seed(seed)
    policy = MultiInputActorCriticPolicy(observation_space(3), spaces.Box(0, 1, (1,), np.float32), lambda _: 1e-4,
                                         **KWARGS)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return policy


def test_the_numpy_actor_is_sb3s_gaussian() -> None:
    policy = _policy(0)
    rng = np.random.default_rng(4)
    n = 40
    obs = {key: rng.uniform(-2, 2, (n, *space.shape)).astype(np.float32) for key, space in observation_space(3).items()}
    obs["peer_mask"] = (rng.random((n, 8)) < 0.5).astype(np.float32)
    obs["peer_mask"][0], obs["peer_mask"][1] = 0, 1  # an empty peer set and a full one
    actor = PolicyNet(Layout.of(policy), _weights(policy))  # what a worker builds from the weights it receives
    means = np.stack([actor.mean({key: value[i][None] for key, value in obs.items()})[0] for i in range(n)])
    actions = rng.normal(0.3, 0.6, (n, 1)).astype(np.float32)
    log_prob = gaussian_log_prob((actions - means) / np.exp(actor.log_std), actor.log_std)

    with torch.no_grad():
        sb3 = policy.get_distribution({key: torch.from_numpy(value) for key, value in obs.items()})
        sb3_log_prob = sb3.log_prob(torch.from_numpy(actions))
    np.testing.assert_allclose(means, sb3.distribution.mean.numpy(), rtol=1e-5, atol=1e-6)  # float32 round-off
    np.testing.assert_allclose(np.exp(actor.log_std), sb3.distribution.stddev[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(log_prob, sb3_log_prob.numpy(), atol=1e-5)
    assert np.ptp(means) > 0.1, "the observations should move the mean"


def test_a_worker_samples_sb3s_gaussian_from_its_own_stream(collector) -> None:
    worker = collector(4)
    policy = _policy(1)
    segment = worker.collect(_weights(policy), 50)
    with torch.no_grad():
        sb3 = policy.get_distribution({key: torch.from_numpy(value) for key, value in segment.obs.items()}).distribution
    noise = (segment.actions - sb3.mean.numpy()) / sb3.stddev.numpy()
    expected = np.random.default_rng([4, ACTION_STREAM]).standard_normal((50, 1), np.float32)
    np.testing.assert_allclose(noise, expected, atol=1e-4)


def test_a_segment_records_steps_episodes_and_time_limits(collector) -> None:
    first = collector(5)
    weights = _weights(first.policy)
    segment = first.collect(weights, 100)

    assert segment.episode_starts[0], "the first observation starts an episode"
    np.testing.assert_array_equal(segment.episode_starts[1:], segment.dones[:-1])
    assert len(segment.episodes) == segment.dones.sum() >= 3  # 30-step episodes (or shorter, on collision)
    assert sum(e.length for e in segment.episodes) == np.flatnonzero(segment.dones)[-1] + 1
    assert all(e.scenario_id and e.sim_error is None for e in segment.episodes)
    # Time limits are bootstrapped, collisions are not: each truncation keeps its final observation.
    assert set(segment.truncated_steps) <= set(np.flatnonzero(segment.dones))
    assert len(segment.truncated_obs["ego"]) == len(segment.truncated_steps) > 0
    assert (segment.actions < 0).any(), "actions are stored as sampled, before clipping to [0, 1]"

    # The next collect goes on with the running episode.
    more = first.collect(weights, 10)
    assert more.episode_starts[0] == segment.dones[-1]
    np.testing.assert_array_equal(more.obs["ego"][0], segment.last_obs["ego"])

    # New weights are used: a large bias on the mean moves every action.
    weights = dict(weights, **{"action_net.bias": np.array([5.0], np.float32)})
    assert first.collect(weights, 20).actions.mean() > 3


def test_the_same_seed_collects_the_same_segment(collector) -> None:
    a = collector(9)
    weights = _weights(a.policy)
    first = a.collect(weights, 60)
    a.env.close()
    second = collector(9).collect(weights, 60)  # a new env: libsumo allows one per process
    for key in first.obs:
        np.testing.assert_array_equal(first.obs[key], second.obs[key])
    np.testing.assert_array_equal(first.actions, second.actions)
    np.testing.assert_array_equal(first.rewards, second.rewards)


def _segment(rng: np.random.Generator, steps: int, truncated: list[int], terminated: list[int]) -> Segment:
    space = observation_space(1)
    obs = {key: rng.uniform(-1, 1, (steps, *s.shape)).astype(np.float32) for key, s in space.items()}
    dones = np.zeros(steps, bool)
    dones[truncated + terminated] = True
    return Segment(
        obs=obs, actions=rng.normal(size=(steps, 1)).astype(np.float32), rewards=rng.normal(size=steps),
        episode_starts=np.concatenate([[True], dones[:-1]]), dones=dones,
        truncated_steps=np.array(truncated, np.int64),
        truncated_obs={key: rng.uniform(-1, 1, (len(truncated), *s.shape)).astype(np.float32) for key, s in space.items()},
        last_obs={key: rng.uniform(-1, 1, s.shape).astype(np.float32) for key, s in space.items()},
    )


# Global step numbers (counted across episodes) at which each env's episodes end. Step 17 of env 0
# is both at once: a collision at the time limit, which is not bootstrapped (SB3: "truncated and
# not terminated"). Env 0's last step is a time limit; env 1 is mid-episode at the end, so its
# rollout is closed with the value of the observation after the last step.
SCRIPTS = [{"terminated": {5, 17}, "truncated": {11, 17, 23}}, {"terminated": {15}, "truncated": {3, 9}}]
T, GAMMA, GAE_LAMBDA = 24, 0.9, 0.8


class _ScriptedConvoy(gym.Env):
    """ConvoyEnv's spaces; observations and rewards from a fixed stream, episodes ending where ``SCRIPTS`` says.

    Nothing depends on the actions, so SB3's collection and ours go through the same steps.
    """

    observation_space = observation_space(3)
    action_space = spaces.Box(0.0, 1.0, (1,), np.float32)

    def __init__(self, env: int) -> None:
        self.rng = np.random.default_rng(env)
        self.terminated, self.truncated = SCRIPTS[env]["terminated"], SCRIPTS[env]["truncated"]
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        t, self.t = self.t, self.t + 1
        # float32-exact: DummyVecEnv hands VecNormalize float32 rewards, the workers float64.
        reward = float(np.float32(self.rng.normal(-1, 3)))
        return self._observation(), reward, t in self.terminated, t in self.truncated, {}

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {key: self.rng.uniform(-1, 1, space.shape).astype(np.float32)
               for key, space in self.observation_space.items()}
        obs["peer_mask"] = (self.rng.random(MAX_PEERS) < 0.5).astype(np.float32)
        return obs


class _CaptureRollout(BaseCallback):
    """A copy of SB3's rollout buffer as ``collect_rollouts`` leaves it (advantages computed), before ``PPO.train``."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        names = ("observations", "actions", "rewards", "episode_starts", "values", "returns", "advantages")
        self.buffer = {name: copy.deepcopy(getattr(buffer, name)) for name in names}


def _scripted_envs() -> VecNormalize:
    return VecNormalize(DummyVecEnv([lambda env=env: _ScriptedConvoy(env) for env in range(len(SCRIPTS))]),
                        norm_obs=False, gamma=GAMMA)


def test_a_batch_is_what_sb3s_collect_rollouts_gives_ppo(monkeypatch: pytest.MonkeyPatch) -> None:
    n_envs = len(SCRIPTS)
    # log_std -30 is a standard deviation of 1e-13: every sampled action is its mean to float32
    # precision, so SB3's torch sampler and the workers' numpy one take the same actions.
    kwargs = policy_kwargs(16, -30.0)
    model = PPO("MultiInputPolicy", _scripted_envs(), n_steps=T, batch_size=T * n_envs, n_epochs=1, gamma=GAMMA,
                gae_lambda=GAE_LAMBDA, policy_kwargs=kwargs, seed=0, device="cpu")
    model.set_logger(Logger(None, []))  # configure(None, ...) would leave a folder in /tmp
    with torch.no_grad():  # off SB3's initial weights (zero biases), so that values and means vary
        for parameter in model.policy.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    policy = copy.deepcopy(model.policy)  # the collecting weights: PPO.train moves model.policy after the rollout
    capture = _CaptureRollout()
    model.learn(T * n_envs, callback=capture)
    theirs = capture.buffer

    segments = [RolloutCollector(_ScriptedConvoy(env), kwargs, env, None).collect(_weights(policy), T)
                for env in range(n_envs)]
    gae_inputs: dict[str, np.ndarray] = {}

    def recorded_gae(rewards: np.ndarray, values: np.ndarray, episode_starts: np.ndarray, *args: object) -> np.ndarray:
        gae_inputs.update(rewards=rewards.copy(), episode_starts=episode_starts.copy())
        return gae(rewards, values, episode_starts, *args)

    monkeypatch.setattr(rollout, "gae", recorded_gae)
    ours = _scripted_envs()
    batch = build_batch(segments, policy, ours, GAMMA, GAE_LAMBDA)

    def steps(flat: np.ndarray) -> np.ndarray:
        """(N, ...) -> (T, n_envs, ...), the rollout buffer's layout."""
        return flat.reshape(T, n_envs, *flat.shape[1:])

    for key, value in theirs["observations"].items():
        np.testing.assert_array_equal(steps(batch.obs[key]), value, err_msg=key)
    np.testing.assert_allclose(steps(batch.actions), theirs["actions"], atol=1e-5)
    assert ((batch.actions < 0) | (batch.actions > 1)).any(), "some actions should lie outside the action space"
    np.testing.assert_array_equal(gae_inputs["episode_starts"], theirs["episode_starts"])
    # Normalised, and time limits (only) bootstrapped with gamma * V(final observation).
    np.testing.assert_allclose(gae_inputs["rewards"], theirs["rewards"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(steps(batch.old_values), theirs["values"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(steps(batch.returns), theirs["returns"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(steps(batch.advantages), theirs["advantages"], rtol=1e-5, atol=1e-5)
    # The normaliser goes on from the same state, to the last bit.
    sb3 = model.get_vec_normalize_env()
    assert (ours.ret_rms.mean, ours.ret_rms.var, ours.ret_rms.count) == (sb3.ret_rms.mean, sb3.ret_rms.var,
                                                                        sb3.ret_rms.count)
    np.testing.assert_array_equal(ours.returns, sb3.returns)


def _episodes(*errors: str | None) -> Segment:
    segment = _segment(np.random.default_rng(0), 4, [], [])
    segment.episodes = [EpisodeEnd(-1.0, 10, "train-000", error) for error in errors]
    return segment


def test_simulation_errors_are_counted_and_too_many_in_a_row_abort(tmp_path: Path) -> None:
    monitor = _RolloutMonitor(1000, 0, max_consecutive_errors=3, scenario_files=[tmp_path / "a", tmp_path / "b"],
                              progress=False)
    monitor.record([_episodes("boom", "boom", None), _episodes("boom", "boom")])  # env 0 recovered; env 1 at 2
    assert monitor.sim_errors == 4
    assert monitor.mean_episode("reward") == -1.0
    with pytest.raises(TrainingAborted, match="env 1: 3 simulation errors in a row, the last: bang"):
        monitor.record([_episodes(None), _episodes("bang")])
    (tmp_path / "a").write_text("train-007")
    assert monitor.current_scenarios() == ["train-007", None]
