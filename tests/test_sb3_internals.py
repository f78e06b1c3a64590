"""The SB3 internals our training loop relies on (roadsense/training/sb3_internals.py), on real SB3 objects.

If an SB3 upgrade renames one of them or changes what it means, these tests fail, not a run.
"""

from __future__ import annotations

import copy
from multiprocessing.process import BaseProcess
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from roadsense.parallel import START_METHOD
from roadsense.training.sb3_internals import count_update, n_updates, normalize_rewards, worker_processes
from roadsense.training.vec import close_vec_env

WORKER_GONE = (EOFError, BrokenPipeError, ConnectionResetError)


def _cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


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


def test_the_update_count_is_ppo_trains_saved_in_the_model(tmp_path: Path) -> None:
    model = PPO("MlpPolicy", _cartpole(), n_steps=16, batch_size=16, n_epochs=3, seed=0, device="cpu")
    model.set_logger(Logger(None, []))  # configure(None, ...) would leave a folder in /tmp
    model.learn(16)  # one rollout, one PPO.train: one count per epoch
    assert n_updates(model) == 3 == model.logger.name_to_value["train/n_updates"]

    count_update(model, 3)  # our loop's update, counted the same way
    assert n_updates(model) == 6
    model.save(tmp_path / "model.zip")
    assert n_updates(PPO.load(tmp_path / "model.zip", device="cpu")) == 6, "a resumed run goes on counting"


def test_the_optimizer_has_the_learning_rate_without_ppo_train(tmp_path: Path) -> None:
    # PPO.train sets the rate from its schedule (the private _update_learning_rate) before every update;
    # our update steps the optimizer directly, so the configured constant rate must already be there,
    # in a new model and in a loaded one.
    model = PPO("MlpPolicy", _cartpole(), learning_rate=3e-4, device="cpu")
    assert [group["lr"] for group in model.policy.optimizer.param_groups] == [3e-4]
    model.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip", device="cpu")
    assert [group["lr"] for group in loaded.policy.optimizer.param_groups] == [3e-4]


def test_the_worker_processes_are_the_subproc_workers_in_env_order() -> None:
    venv = VecNormalize(SubprocVecEnv([_cartpole] * 2, start_method=START_METHOD))  # found under a wrapper
    try:
        processes = worker_processes(venv)
        assert len(processes) == 2 and all(isinstance(p, BaseProcess) and p.is_alive() for p in processes)
        processes[0].kill()
        processes[0].join()
        venv.env_method("reset", indices=[1])  # env 1's worker is the other process ...
        with pytest.raises(WORKER_GONE):
            venv.env_method("reset", indices=[0])  # ... and env 0's the one that was killed
    finally:
        close_vec_env(venv)  # a dead worker breaks SB3's close; every process is stopped all the same
    assert not any(p.is_alive() for p in processes)


def test_a_vec_env_without_workers_is_refused() -> None:
    with pytest.raises(TypeError, match="expected a SubprocVecEnv under VecNormalize, got DummyVecEnv"):
        worker_processes(VecNormalize(DummyVecEnv([_cartpole])))


def test_vecnormalize_keeps_the_state_normalize_rewards_reads() -> None:
    vec = VecNormalize(DummyVecEnv([_cartpole] * 3), norm_obs=False, gamma=0.9, epsilon=1e-6, clip_reward=7.0)
    assert isinstance(vec.returns, np.ndarray) and vec.returns.shape == (3,) and vec.returns.dtype == np.float64
    assert isinstance(vec.ret_rms, RunningMeanStd) and vec.ret_rms.mean.shape == () == vec.ret_rms.var.shape
    assert (vec.gamma, vec.epsilon, vec.clip_reward, vec.norm_reward, vec.training) == (0.9, 1e-6, 7.0, True, True)

    # step_wait: returns = returns * gamma + reward, ret_rms updated with them, zeroed at a done.
    vec.reset()
    vec.step(np.zeros(3, np.int64))
    np.testing.assert_array_equal(vec.returns, [1.0, 1.0, 1.0])  # CartPole pays 1 per step
    assert vec.ret_rms.count == pytest.approx(1e-4 + 3)  # RunningMeanStd starts at epsilon = 1e-4
    vec.step(np.zeros(3, np.int64))
    np.testing.assert_array_equal(vec.returns, [1.9, 1.9, 1.9])


@pytest.mark.parametrize("training", [True, False])
def test_reward_normalisation_is_vecnormalize_step_by_step(training: bool) -> None:
    rng = np.random.default_rng(1)
    # float32 values: DummyVecEnv hands VecNormalize float32 rewards, the workers float64.
    rewards = rng.normal(-2, 5, (300, 2)).astype(np.float32).astype(np.float64)
    dones = rng.random((300, 2)) < 0.03

    def normalizer(env_rewards: list[np.ndarray], env_dones: list[np.ndarray]) -> VecNormalize:
        envs = [lambda r=r, d=d: _ScriptedRewards(r, d) for r, d in zip(env_rewards, env_dones, strict=True)]
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


def test_the_statistics_normalize_rewards_updates_are_what_vecnormalize_saves(tmp_path: Path) -> None:
    vec = VecNormalize(DummyVecEnv([_cartpole] * 2), norm_obs=False)
    rewards = np.random.default_rng(2).normal(0, 3, (50, 2))
    normalize_rewards(vec, rewards, np.zeros((50, 2), bool))
    vec.save(str(tmp_path / "vecnormalize.pkl"))
    loaded = VecNormalize.load(str(tmp_path / "vecnormalize.pkl"), DummyVecEnv([_cartpole] * 2))
    assert (loaded.ret_rms.mean, loaded.ret_rms.var, loaded.ret_rms.count) == (
        vec.ret_rms.mean, vec.ret_rms.var, vec.ret_rms.count)
    assert vec.returns.any() and not loaded.returns.any(), "the running returns are not saved: a resume starts at 0"
