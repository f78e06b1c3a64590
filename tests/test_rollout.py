"""Rollouts collected in the workers: the same data SB3's collect_rollouts would give PPO."""

from __future__ import annotations

import copy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from roadsense.env.observation import observation_space
from roadsense.policy import policy_kwargs
from roadsense.policy.actor_critic import Layout, PolicyNet, gaussian_log_prob
from roadsense.training.rollout import (
    ACTION_STREAM,
    EpisodeEnd,
    RolloutCollector,
    Segment,
    build_batch,
    gae,
    normalize_rewards,
)
from roadsense.training.train import TrainingAborted, _RolloutMonitor

KWARGS = policy_kwargs(16, -0.5)


class _ScriptedRewards(gym.Env):
    """Pays the scripted rewards in order and ends an episode where ``dones`` says."""

    observation_space = spaces.Box(-1, 1, (1,), np.float32)
    action_space = spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.rewards, self.dones, self.t = rewards, dones, 0

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        reward, done = float(self.rewards[self.t]), bool(self.dones[self.t])
        self.t += 1
        return np.zeros(1, np.float32), reward, done, False, {}


@pytest.mark.parametrize("training", [True, False])
def test_reward_normalisation_is_vecnormalize_step_by_step(training: bool) -> None:
    rng = np.random.default_rng(1)
    # float32 values: DummyVecEnv hands VecNormalize float32 rewards, the workers float64.
    rewards = rng.normal(-2, 5, (300, 2)).astype(np.float32).astype(np.float64)
    dones = rng.random((300, 2)) < 0.03

    def normalizer(env_rewards: list[np.ndarray], env_dones: list[np.ndarray]) -> VecNormalize:
        envs = [lambda r=r, d=d: _ScriptedRewards(r, d) for r, d in zip(env_rewards, env_dones)]
        vec = VecNormalize(DummyVecEnv(envs), norm_obs=False, gamma=0.99)
        # A normaliser that has seen a rollout already (a resumed run's vecnormalize.pkl).
        vec.ret_rms.update(rng.normal(-30, 20, 50))
        vec.returns[:] = rng.normal(-10, 5, 2)
        vec.training = training
        return vec

    reference = normalizer([rewards[:, 0], rewards[:, 1]], [dones[:, 0], dones[:, 1]])
    ours = normalizer([rewards[:, 0]] * 2, [dones[:, 0]] * 2)
    ours.ret_rms, ours.returns = copy.deepcopy(reference.ret_rms), reference.returns.copy()
    reference.reset()  # DummyVecEnv's reset; VecNormalize's also zeroes its returns, so restore them
    reference.returns = ours.returns.copy()
    expected = np.array([reference.step(np.zeros((2, 1), np.float32))[1] for _ in range(300)])

    # The same operations in the same order: equal to the last bit.
    np.testing.assert_array_equal(normalize_rewards(ours, rewards, dones), expected)
    # The checkpointed state goes on the same.
    assert (ours.ret_rms.mean, ours.ret_rms.var, ours.ret_rms.count) == (
        reference.ret_rms.mean, reference.ret_rms.var, reference.ret_rms.count)
    np.testing.assert_array_equal(ours.returns, reference.returns)


def test_gae_is_the_recursion_of_sb3_rollout_buffer() -> None:
    rng = np.random.default_rng(2)
    T, n_envs = 64, 3
    buffer = RolloutBuffer(T, spaces.Box(-1, 1, (1,)), spaces.Box(-1, 1, (1,)), n_envs=n_envs, gamma=0.99,
                           gae_lambda=0.95)
    buffer.rewards[:] = rng.normal(size=(T, n_envs))
    buffer.values[:] = rng.normal(size=(T, n_envs))
    buffer.episode_starts[:] = rng.random((T, n_envs)) < 0.1
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


def _segment(rng: np.random.Generator, T: int, truncated: list[int], terminated: list[int]) -> Segment:
    space = observation_space(1)
    obs = {key: rng.uniform(-1, 1, (T, *s.shape)).astype(np.float32) for key, s in space.items()}
    dones = np.zeros(T, bool)
    dones[truncated + terminated] = True
    return Segment(
        obs=obs, actions=rng.normal(size=(T, 1)).astype(np.float32), rewards=rng.normal(size=T),
        episode_starts=np.concatenate([[True], dones[:-1]]), dones=dones,
        truncated_steps=np.array(truncated, np.int64),
        truncated_obs={key: rng.uniform(-1, 1, (len(truncated), *s.shape)).astype(np.float32) for key, s in space.items()},
        last_obs={key: rng.uniform(-1, 1, s.shape).astype(np.float32) for key, s in space.items()},
    )


def test_the_batch_bootstraps_time_limits_only() -> None:
    rng = np.random.default_rng(3)
    policy = MultiInputActorCriticPolicy(observation_space(1), spaces.Box(0, 1, (1,), np.float32), lambda _: 1e-4,
                                         **KWARGS)
    segments = [_segment(rng, 40, truncated=[9], terminated=[25]), _segment(rng, 40, truncated=[], terminated=[])]
    normalizer = VecNormalize(DummyVecEnv([lambda: _ScriptedRewards(np.zeros(1), np.zeros(1))] * 2), norm_obs=False)
    batch = build_batch(segments, policy, normalizer, gamma=0.9, gae_lambda=1.0)

    assert len(batch) == 80
    with torch.no_grad():
        bootstrap = policy.predict_values({k: torch.from_numpy(v) for k, v in segments[0].truncated_obs.items()})
        values = policy.predict_values({k: torch.from_numpy(v) for k, v in segments[0].obs.items()}).flatten()
    # The batch is step-major (T, n_envs) flattened: env 0's steps are the even samples.
    env0_returns = batch.returns.reshape(40, 2)[:, 0]
    env0_values = batch.old_values.reshape(40, 2)[:, 0]
    np.testing.assert_allclose(env0_values, values.numpy(), atol=1e-6)
    # With lambda = 1 the return at a time limit is the normalised reward + gamma * V(final obs); at a collision, the reward.
    rewards = normalize_rewards(VecNormalize(DummyVecEnv([lambda: _ScriptedRewards(np.zeros(1), np.zeros(1))] * 2),
                                             norm_obs=False), np.stack([s.rewards for s in segments], 1),
                                np.stack([s.dones for s in segments], 1))[:, 0]
    assert env0_returns[9].item() == pytest.approx(rewards[9] + 0.9 * bootstrap.item(), rel=1e-5)
    assert env0_returns[25].item() == pytest.approx(rewards[25], rel=1e-5)


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
