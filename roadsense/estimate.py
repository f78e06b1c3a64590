"""How long a run should take, from measured throughput. The one place these figures live.

The figures were measured on this project's 2-core development machine (see the README's
performance section); a machine with more CPUs runs one env per CPU, so they scale per CPU.
"""

from __future__ import annotations

import math

from roadsense.config import PipelineConfig
from roadsense.evaluation.matrix import BUCKET_COUNT
from roadsense.export.exporter import EVALUATED

# Measured on 2 CPUs, 2026-11-29 (README, "Learning result"): evaluation of 1,500 production
# episodes (model, 2 baselines, 2 ONNX graphs) in 27.4-27.6 s; 105 scenarios in 0.2 s.
EVAL_STEPS_PER_S_PER_CPU = 9000.0  # env steps/s of one evaluation worker, policy included
GENERATE_S_PER_SCENARIO = 0.01
EPISODE_STEPS_MEAN_FRACTION = 0.8  # episodes that collide end early
EXPORT_S = 2.0  # the three ONNX graphs, INT8 calibration on val episodes, parity checks
VALIDATION_START_S = 1.0  # starting the evaluation pool and loading the checkpoint, per validation


def stage_seconds(config: PipelineConfig, cpus: int) -> dict[str, float]:
    """Expected wall seconds of each pipeline stage on ``cpus`` CPUs."""
    dataset_config, train_config, eval_config = config.dataset, config.train, config.evaluation
    n_envs = train_config.n_envs or cpus
    episode_steps = config.env.episode_steps
    policies = 1 + len(eval_config.baselines) + (len(EVALUATED) if eval_config.export_onnx else 0)
    eval_steps = BUCKET_COUNT * eval_config.episodes_per_bucket * policies * episode_steps * EPISODE_STEPS_MEAN_FRACTION
    eval_workers = eval_config.eval_workers or cpus
    eval_rate = EVAL_STEPS_PER_S_PER_CPU * min(eval_workers, cpus)
    validations = train_config.total_timesteps // eval_config.val_every + 1 if eval_config.val_every else 0
    val_steps = BUCKET_COUNT * eval_config.val_episodes_per_bucket * episode_steps * EPISODE_STEPS_MEAN_FRACTION
    train_rate = projected_train_steps_per_s(min(n_envs, cpus), train_config.rollout_steps, train_config.batch_size,
                                             train_config.n_epochs)["steps_per_s"]
    scenarios = dataset_config.train_count + dataset_config.val_count + dataset_config.eval_count
    return {
        "dataset": scenarios * GENERATE_S_PER_SCENARIO,
        "train": train_config.total_timesteps / train_rate + validations * (VALIDATION_START_S + val_steps / eval_rate),
        "export": EXPORT_S if eval_config.export_onnx else 0.0,
        "evaluate": eval_steps / eval_rate,
        "package": 5.0,
    }


# -- Training throughput by instance size: a projection from per-unit costs ------------------
# Measured with `roadsense bench train` (production settings: rollout_steps 4096, batch 128, 10 epochs;
# 2 envs, built-in scenario) on the 2-vCPU development machine (AMD EPYC, one thread per core),
# medians of 8 runs interleaved with the previous code, 2026-11-29 21:04-21:07, other jobs on the
# machine. In its quietest minutes the worker step was 0.083-0.09 ms; 0.165 ms is the figure
# when each worker shares its core, which is what a c6i vCPU (one hyperthread) does when every
# vCPU runs an env.
PROJECTION_WORKER_STEP_MS = 0.165  # one worker's wall ms per env step while collecting: env, numpy actor, resets
PROJECTION_EVALUATE_GAE_S_PER_STEP = 0.015 / 4096  # trainer: batch forward pass, reward normalisation, GAE
PROJECTION_MINIBATCH_S = 0.45e-3  # trainer: one PPO minibatch of 128: forward, backward, Adam step
C6I_VCPUS = {"ml.c6i.xlarge": 4, "ml.c6i.2xlarge": 8, "ml.c6i.4xlarge": 16, "ml.c6i.8xlarge": 32}


def projected_train_steps_per_s(vcpus: int, rollout_steps: int = 4096, batch_size: int = 128,
                                n_epochs: int = 10) -> dict[str, float]:
    """A projection, not a measurement: PPO env steps/s on ``vcpus`` vCPUs, one env per vCPU.

    Model: each rollout is collected by ``vcpus`` workers in parallel, ``rollout_steps / vcpus`` steps
    each at ``PROJECTION_WORKER_STEP_MS``; then the trainer alone evaluates it
    (``PROJECTION_EVALUATE_GAE_S_PER_STEP`` per step) and runs the update
    (``n_epochs * ceil(rollout_steps / batch_size)`` minibatches at ``PROJECTION_MINIBATCH_S``) on one
    thread, which more vCPUs do not speed up. Nothing overlaps, as in ``train.py``: the workers
    wait for the new weights.

    Assumptions (none measured on a c6i): a c6i vCPU steps an env as fast as a contended vCPU of
    the development machine (both ~3.5 GHz server cores); the trainer's thread runs at the
    measured speed; the per-minibatch cost is the one at batch 128 (it grows with the batch);
    the occupied peer slots are as few as in the built-in scenario (~3 %; more peers make phi's
    share of the update larger); pipe transfers, logging, checkpoints and validation are left
    out (``stage_seconds`` adds validation). Because the update does not shrink with more envs,
    the rate flattens: from 8 vCPUs on, the trainer's ~0.16 s per rollout is most of the time. At 2
    vCPUs the model gives the measured steady state (0.50 s per 4,096-step rollout, 8,200 steps/s;
    `bench train` reports ~7,500 because its 4 rollouts also carry the start-up and the final checkpoint).

    Returns ``collect_s`` and ``learn_s`` (seconds per rollout) and ``steps_per_s``.
    """
    collect_s = rollout_steps / vcpus * PROJECTION_WORKER_STEP_MS / 1000
    learn_s = (rollout_steps * PROJECTION_EVALUATE_GAE_S_PER_STEP
               + n_epochs * math.ceil(rollout_steps / batch_size) * PROJECTION_MINIBATCH_S)
    return {"collect_s": collect_s, "learn_s": learn_s, "steps_per_s": rollout_steps / (collect_s + learn_s)}


def projection_table() -> list[dict[str, float | int | str]]:
    """``projected_train_steps_per_s`` for each ml.c6i size from xlarge to 8xlarge (production settings)."""
    return [{"instance": name, "vcpus": vcpus, **projected_train_steps_per_s(vcpus)}
            for name, vcpus in C6I_VCPUS.items()]
