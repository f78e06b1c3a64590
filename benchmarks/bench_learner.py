"""The trainer's share of a rollout, without envs: build_batch and the PPO update on a synthetic rollout.

Production shapes (n_steps 4096 over 2 envs, batch 128, 10 epochs, peer_hidden 32,
frame_stack 3), random but plausible observations, one torch thread as in training.
Prints one JSON line of medians over ``--repeats`` runs (seconds per rollout and ms per
minibatch). Runs against whichever ``roadsense`` is first on PYTHONPATH, so the same
script times two trees A/B.

    PYTHONPATH=. python benchmarks/bench_learner.py [--repeats 5] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from roadsense.config import TrainConfig
from roadsense.env.observation import observation_space
from roadsense.policy import policy_kwargs
from roadsense.training.ppo import ppo_update
from roadsense.training.rollout import Segment, build_batch

N_ENVS = 2


def _segment(rng: np.random.Generator, space: spaces.Dict, steps: int, peer_fill: float) -> Segment:
    """``steps`` steps of one env with 200-step episodes, every other one ending at the time limit;
    each peer slot is occupied with probability ``peer_fill``."""
    obs = {key: rng.uniform(-1, 1, (steps, *s.shape)).astype(np.float32) for key, s in space.items()}
    obs["peer_mask"] = (rng.random(obs["peer_mask"].shape) < peer_fill).astype(np.float32)
    dones = np.zeros(steps, bool)
    dones[199::200] = True
    truncated = np.flatnonzero(dones)[::2]
    return Segment(obs=obs, actions=rng.normal(0.3, 0.6, (steps, 1)).astype(np.float32),
                   rewards=rng.normal(-1, 3, steps), episode_starts=np.concatenate([[True], dones[:-1]]), dones=dones,
                   truncated_steps=truncated,
                   truncated_obs={key: value[truncated] for key, value in obs.items()},
                   last_obs={key: value[-1] for key, value in obs.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--peer-fill", type=float, default=0.5,
                        help="share of occupied peer slots (the built-in scenario's rollouts: ~0.03)")
    args = parser.parse_args()
    train_config = TrainConfig()
    torch.set_num_threads(train_config.torch_threads)
    space = observation_space(3)
    policy = MultiInputActorCriticPolicy(space, spaces.Box(0, 1, (1,), np.float32), lambda _: train_config.learning_rate,
                                         **policy_kwargs(train_config.peer_hidden, train_config.log_std_init))
    normalizer = VecNormalize(DummyVecEnv([lambda: _Spaces(space)] * N_ENVS), norm_obs=False, gamma=train_config.gamma)
    rng = np.random.default_rng(0)
    segments = [_segment(rng, space, train_config.rollout_steps // N_ENVS, args.peer_fill) for _ in range(N_ENVS)]
    minibatches = train_config.n_epochs * math.ceil(train_config.rollout_steps / args.batch_size)
    build_s, update_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        batch = build_batch(segments, policy, normalizer, train_config.gamma, train_config.gae_lambda)
        t1 = time.perf_counter()
        ppo_update(policy, batch, train_config.n_epochs, args.batch_size, train_config.clip_range, train_config.ent_coef,
                   train_config.learning_rate, rng)
        t2 = time.perf_counter()
        build_s.append(t1 - t0)
        update_s.append(t2 - t1)
    print(json.dumps({"evaluate_gae_s": round(float(np.median(build_s)), 4),
                      "update_s": round(float(np.median(update_s)), 4),
                      "minibatch_ms": round(1000 * float(np.median(update_s)) / minibatches, 3),
                      "update_s_all": [round(s, 3) for s in update_s]}))


class _Spaces(gym.Env):
    """Stands in for an env inside VecNormalize, which only reads its spaces."""

    def __init__(self, space: spaces.Dict) -> None:
        self.observation_space = space
        self.action_space = spaces.Box(0, 1, (1,), np.float32)


if __name__ == "__main__":
    main()
