"""On-policy rollouts: collected inside the env workers, assembled into one batch by the trainer.

SB3's own collection asks every worker for one step at a time: a pipe round trip and a
batch-of-n_envs forward pass per step, with the trainer and the workers taking turns on
the CPUs. Here each worker holds a copy of the policy instead. The trainer sends the
current weights, each worker runs its share of the rollout on its own (env step, actor
forward pass, Gaussian sample) and returns it as one :class:`Segment`; the trainer then
computes values and log-probabilities for the whole batch in one forward pass, normalises
the rewards, bootstraps time limits and computes GAE.

It is the same algorithm as SB3's ``collect_rollouts``: every step of a rollout is taken
with the weights of the last update, actions are stored unclipped and clipped for the env,
a time limit (not a collision) is bootstrapped with the value of the final observation, and
the rewards go through the run's ``VecNormalize`` exactly as its ``step_wait`` would
(``sb3_internals.normalize_rewards``). ``tests/test_rollout.py`` collects the same steps with
SB3's ``collect_rollouts`` and finds the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import numpy.typing as npt
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.vec_env import VecNormalize

from roadsense.arrays import Observation, Weights
from roadsense.policy.actor_critic import Layout, PolicyNet, blas_threads, gaussian_log_prob
from roadsense.training.sb3_internals import normalize_rewards

ACTION_STREAM = 1  # the action sampler's seed is (env seed, ACTION_STREAM): apart from the env's own draws


@dataclass(frozen=True)
class EpisodeEnd:
    """One finished episode, as VecMonitor would report it, plus why it ended."""

    reward: float  # sum of the raw (unnormalised) rewards
    length: int  # env steps
    scenario_id: str
    sim_error: str | None  # the simulation error that ended it, if one did


@dataclass
class Segment:
    """``T`` consecutive steps of one env, taken with one set of policy weights.

    Observations are dicts of arrays shaped ``(T, *space shape)``.
    """

    obs: Observation  # the observation each step's action was chosen from
    actions: npt.NDArray[np.float32]  # (T, action dim) as sampled, before clipping to the action space
    rewards: npt.NDArray[np.float64]  # (T,) raw env rewards
    episode_starts: npt.NDArray[np.bool_]  # (T,) obs[t] is the first observation of an episode
    dones: npt.NDArray[np.bool_]  # (T,) the episode ended with step t
    truncated_steps: npt.NDArray[np.int64]  # (k,) steps that ended an episode at a time limit (to bootstrap)
    truncated_obs: Observation  # (k, ...) the final observations of those episodes
    last_obs: Observation  # the observation after step T-1 (its value closes GAE)
    episodes: list[EpisodeEnd] = field(default_factory=list)


class RolloutCollector(gym.Wrapper[dict[str, Any], npt.NDArray[np.float32], dict[str, Any], npt.NDArray[np.float32]]):
    """Wraps the env inside a worker process and runs whole segments with a local policy copy.

    The trainer calls :meth:`collect` through ``SubprocVecEnv.env_method``, so every worker
    collects at the same time and the pipe carries one message per rollout, not per step.

    Args:
        env: the env (it lives in this worker process).
        policy_kwargs: the trainer's ``policy_kwargs``, to build an identical policy.
        seed: the env's seed; the action sampler draws from a stream derived from it.
        scenario_file: rewritten with the scenario id at every reset, so that the trainer can
            name the scenario even if this process dies with SUMO.
    """

    def __init__(self, env: gym.Env[dict[str, Any], npt.NDArray[np.float32]], policy_kwargs: dict[str, Any], seed: int,
                 scenario_file: Path | None) -> None:
        super().__init__(env)
        # The wrapper's own observation_space and action_space are plain Spaces to the type checker; these are
        # the same objects, as the Dict and Box the policy is built for.
        assert isinstance(env.observation_space, spaces.Dict) and isinstance(env.action_space, spaces.Box)
        self.observation_dict: spaces.Dict = env.observation_space
        self.action_box: spaces.Box = env.action_space
        self.policy = MultiInputActorCriticPolicy(self.observation_dict, self.action_box, lambda _: 0.0, **policy_kwargs)
        self.layout = Layout.of(self.policy)  # what the numpy actor reads the weights it is sent by
        self.seed = seed
        self.rng = np.random.default_rng([seed, ACTION_STREAM])
        self.scenario_file = scenario_file
        self._obs: Observation | None = None  # None until the first collect resets the env
        self._episode_start = True
        self._episode_reward = 0.0
        self._episode_length = 0
        self._scenario_id = ""

    def collect(self, weights: Weights, n_steps: int) -> Segment:
        """Run ``n_steps`` steps with the given policy weights; episodes carry over between calls."""
        actor = PolicyNet(self.layout, weights)
        if self._obs is None:
            self._obs = self._reset(seed=self.seed)
        low, high = self.action_box.low, self.action_box.high

        obs = {key: np.empty((n_steps, *_shape(space)), np.float32) for key, space in self.observation_dict.items()}
        actions = np.empty((n_steps, *self.action_box.shape), np.float32)
        rewards = np.empty(n_steps, np.float64)  # what SubprocVecEnv would hand VecNormalize
        episode_starts = np.empty(n_steps, bool)
        dones = np.zeros(n_steps, bool)
        truncated_steps: list[int] = []
        truncated_obs: list[Observation] = []
        episodes: list[EpisodeEnd] = []
        # Drawn for the whole segment at once: the same numbers, in the same order, as one draw per step.
        noise = np.exp(weights["log_std"]) * self.rng.standard_normal(actions.shape, np.float32)

        for t in range(n_steps):
            for key, value in self._obs.items():
                obs[key][t] = value
            episode_starts[t] = self._episode_start
            action = actor.mean({key: value[None] for key, value in self._obs.items()})[0] + noise[t]
            actions[t] = action
            next_obs, reward, terminated, truncated, info = self.env.step(np.clip(action, low, high))
            rewards[t] = reward
            self._episode_reward += float(reward)
            self._episode_length += 1
            self._episode_start = False
            if terminated or truncated:
                dones[t] = True
                if truncated and not terminated:
                    truncated_steps.append(t)
                    truncated_obs.append(next_obs)
                episodes.append(EpisodeEnd(self._episode_reward, self._episode_length, self._scenario_id,
                                           info.get("sim_error")))
                next_obs = self._reset()
            self._obs = next_obs

        return Segment(
            obs=obs, actions=actions, rewards=rewards, episode_starts=episode_starts, dones=dones,
            truncated_steps=np.asarray(truncated_steps, np.int64),
            truncated_obs={key: np.asarray([o[key] for o in truncated_obs], np.float32).reshape(-1, *_shape(space))
                           for key, space in self.observation_dict.items()},
            last_obs=self._obs, episodes=episodes,
        )

    def _reset(self, seed: int | None = None) -> Observation:
        """Start the next episode and its bookkeeping; returns its first observation."""
        obs, info = self.env.reset(seed=seed)
        self._scenario_id = info.get("scenario_id", "")
        if self.scenario_file is not None:
            self.scenario_file.write_text(self._scenario_id)
        self._episode_start = True
        self._episode_reward = 0.0
        self._episode_length = 0
        return obs


def _shape(space: spaces.Space[Any]) -> tuple[int, ...]:
    """The shape of one of the observation's Boxes (a Space's shape may be None; a Box's never is)."""
    assert space.shape is not None, f"{space} has no shape"
    return space.shape


@dataclass
class RolloutBatch:
    """What one PPO update learns from: ``N = n_envs * T`` samples, flattened.

    Observations are dicts of float32 arrays ``(N, ...)``; every other field is ``(N,)``
    float32 except ``actions`` ``(N, action dim)``.
    """

    obs: Observation
    actions: npt.NDArray[np.float32]
    old_log_prob: npt.NDArray[np.float32]
    old_values: npt.NDArray[np.float32]
    advantages: npt.NDArray[np.float32]
    returns: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.actions)


def build_batch(segments: list[Segment], policy: ActorCriticPolicy, normalizer: VecNormalize,
                gamma: float, gae_lambda: float) -> RolloutBatch:
    """Normalise rewards, evaluate the batch with the collecting weights, bootstrap, and compute GAE.

    ``segments`` holds one segment per env, all of the same length, collected with ``policy``'s
    current weights.
    """
    n_steps, n_envs = len(segments[0].rewards), len(segments)
    # (T, n_envs, ...) arrays, the layout of SB3's rollout buffer.
    obs = {key: np.stack([s.obs[key] for s in segments], axis=1) for key in segments[0].obs}
    actions = np.stack([s.actions for s in segments], axis=1)
    raw_rewards = np.stack([s.rewards for s in segments], axis=1)
    dones = np.stack([s.dones for s in segments], axis=1)
    episode_starts = np.stack([s.episode_starts for s in segments], axis=1)

    rewards = normalize_rewards(normalizer, raw_rewards, dones)
    flat_obs = {key: value.reshape(-1, *value.shape[2:]) for key, value in obs.items()}
    flat_actions = actions.reshape(-1, actions.shape[-1])
    # One forward pass for every observation that needs a value: the batch's, the final
    # observations of time-limited episodes (to bootstrap), and the one after the last step.
    n_samples = len(flat_actions)
    evaluated = {key: np.concatenate([flat_obs[key], *(s.truncated_obs[key] for s in segments),
                                      np.stack([s.last_obs[key] for s in segments])]) for key in flat_obs}
    net = PolicyNet.of(policy)
    with blas_threads(torch.get_num_threads()):
        all_values, mean, _ = net.forward(evaluated)
    z = (flat_actions - mean[:n_samples]) / np.exp(net.log_std)  # float32: numpy's stubs type the division float64
    log_prob = gaussian_log_prob(cast("npt.NDArray[np.float32]", z), net.log_std)
    values = all_values[:n_samples]
    bootstraps = np.split(all_values[n_samples:], np.cumsum([len(s.truncated_steps) for s in segments]))
    for env, segment in enumerate(segments):
        rewards[segment.truncated_steps, env] += gamma * bootstraps[env]
    last_values = bootstraps[n_envs]
    advantages = gae(rewards, values.reshape(n_steps, n_envs), episode_starts, last_values, dones[-1], gamma,
                     gae_lambda).reshape(-1)
    return RolloutBatch(obs=flat_obs, actions=flat_actions, old_log_prob=log_prob, old_values=values,
                        advantages=advantages, returns=advantages + values)


def gae(rewards: npt.NDArray[np.float32], values: npt.NDArray[np.float32], episode_starts: npt.NDArray[np.bool_],
        last_values: npt.NDArray[np.float32], last_dones: npt.NDArray[np.bool_], gamma: float,
        gae_lambda: float) -> npt.NDArray[np.float32]:
    """Generalised advantage estimates, ``(T, n_envs)``; the recursion of SB3's rollout buffer.

    ``episode_starts[t]`` cuts the bootstrap from step t-1 to step t; after the last step the
    rollout is closed with ``last_values`` unless the episode ended there (``last_dones``).
    """
    advantages = np.zeros_like(rewards, dtype=np.float32)
    running = np.zeros(rewards.shape[1], np.float32)
    for t in reversed(range(len(rewards))):
        if t == len(rewards) - 1:
            next_non_terminal, next_values = 1.0 - last_dones.astype(np.float32), last_values
        else:
            next_non_terminal, next_values = 1.0 - episode_starts[t + 1].astype(np.float32), values[t + 1]
        delta = rewards[t] + gamma * next_values * next_non_terminal - values[t]
        running = delta + gamma * gae_lambda * next_non_terminal * running
        advantages[t] = running
    return advantages
