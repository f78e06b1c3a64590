"""How long a run should take, from measured throughput. The one place these figures live.

The figures were measured on this project's 2-core development machine (see the README's
performance section); a machine with more CPUs runs one env per CPU, so they scale per CPU.
"""

from __future__ import annotations

from roadsense.config import PipelineConfig
from roadsense.evaluation.matrix import PEER_COUNTS

# Measured on 2 CPUs: 500k-step production runs at 1,277-1,339 steps/s (checkpoints and
# logging included); evaluation of 450 episodes in 49-58 s; 65 scenarios in 0.6 s.
TRAIN_STEPS_PER_S_PER_CPU = 650.0  # PPO env steps/s incl. updates and checkpoints (production settings)
EVAL_STEPS_PER_S_PER_CPU = 1500.0  # env steps/s of one evaluation worker, policy included
GENERATE_S_PER_SCENARIO = 0.02
EPISODE_STEPS_MEAN_FRACTION = 0.8  # episodes that collide end early
VALIDATION_START_S = 3.0  # starting the evaluation pool and loading the checkpoint, per validation


def stage_seconds(config: PipelineConfig, cpus: int) -> dict[str, float]:
    """Expected wall seconds of each pipeline stage on ``cpus`` CPUs."""
    dc, ec = config.dataset, config.evaluation
    n_envs = config.train.n_envs or cpus
    buckets = sum(PEER_COUNTS)
    policies = 1 + len(ec.baselines)
    eval_steps = buckets * ec.episodes_per_bucket * policies * config.env.episode_steps * EPISODE_STEPS_MEAN_FRACTION
    eval_workers = ec.eval_workers or cpus
    eval_rate = EVAL_STEPS_PER_S_PER_CPU * min(eval_workers, cpus)
    validations = config.train.total_timesteps // ec.val_every + 1 if ec.val_every else 0
    val_steps = buckets * ec.val_episodes_per_bucket * config.env.episode_steps * EPISODE_STEPS_MEAN_FRACTION
    return {
        "dataset": (dc.train_count + dc.val_count + dc.eval_count) * GENERATE_S_PER_SCENARIO,
        "train": config.train.total_timesteps / (TRAIN_STEPS_PER_S_PER_CPU * min(n_envs, cpus))
        + validations * (VALIDATION_START_S + val_steps / eval_rate),
        "evaluate": eval_steps / eval_rate,
        "package": 5.0,
    }
