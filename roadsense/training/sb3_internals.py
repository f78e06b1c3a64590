"""Every place the training loop reaches into SB3 beyond its public API, in one module.

The design keeps SB3's objects as the owners of the training state (``PPO`` holds the
policy, its optimizer and the update count; ``VecNormalize`` the reward statistics), so that
``model.zip`` and ``vecnormalize.pkl`` are what SB3 itself would write. Our loop drives them
without calling ``learn`` / ``step_wait``, and for that it needs a few attributes SB3 does
not document as API. Each function below names the attribute it relies on and why no public
call does the job; ``tests/test_sb3_internals.py`` builds real SB3 objects and fails if any
of them is renamed or changes meaning, so an SB3 upgrade breaks that test, not a run.
"""

from __future__ import annotations

from multiprocessing.process import BaseProcess

import numpy as np
import numpy.typing as npt
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecNormalize


def count_update(model: PPO, n_epochs: int) -> None:
    """Record one PPO update of ``n_epochs`` epochs in ``model``, as ``PPO.train`` does.

    Relies on ``BaseAlgorithm._n_updates``: ``PPO.train`` adds one per epoch, logs it as
    ``train/n_updates`` and ``model.zip`` saves it, so a resumed run (and anyone reading the
    logs) sees the same count as with SB3's ``learn``. There is no public setter; the update
    itself runs outside ``PPO.train`` (``roadsense/training/ppo.py``).
    """
    model._n_updates += n_epochs


def n_updates(model: PPO) -> int:
    """The number of PPO epochs ``model`` has been trained for (``train/n_updates``).

    Relies on ``BaseAlgorithm._n_updates`` (see :func:`count_update`); SB3 only exposes it
    through the logger, inside ``PPO.train``.
    """
    return model._n_updates


def worker_processes(venv: VecEnv) -> list[BaseProcess]:
    """The worker processes of the ``SubprocVecEnv`` under ``venv`` (and its wrappers).

    Relies on ``SubprocVecEnv.processes``, the list of ``multiprocessing`` processes it started,
    one per env, in env order. ``VecEnv.close`` only talks to the workers through their pipes;
    when one has died that conversation fails, and the others must still be reaped (each runs
    a SUMO), which needs the process objects.

    Raises:
        TypeError: ``venv`` does not wrap a ``SubprocVecEnv`` (there are no workers to stop).
    """
    unwrapped = venv.unwrapped  # public: the innermost VecEnv under any VecEnvWrapper
    if not isinstance(unwrapped, SubprocVecEnv):
        raise TypeError(f"expected a SubprocVecEnv under {type(venv).__name__}, got {type(unwrapped).__name__}")
    return unwrapped.processes


def normalize_rewards(normalizer: VecNormalize, rewards: npt.NDArray[np.float64],
                      dones: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """``(T, n_envs)`` raw rewards -> ``(T, n_envs)`` float32 normalised, as ``T`` calls of ``step_wait`` would.

    ``dones`` ``(T, n_envs)`` bool: the episode ended with that step.

    The workers step their envs themselves, so ``VecNormalize.step_wait`` never sees the
    rewards; this repeats its reward path on the whole rollout at once. Relies on:

    - ``VecNormalize.returns`` ``(n_envs,)`` float64: each env's discounted return so far,
      which ``step_wait`` updates and zeroes at a done; no public accessor (it is not even
      pickled: ``set_venv`` and ``reset`` zero it).
    - ``VecNormalize.ret_rms``, a ``RunningMeanStd`` (``mean``, ``var`` float64 scalars,
      ``count`` float): the statistics ``vecnormalize.pkl`` saves; updated here (when the
      normaliser is training) so that a checkpoint carries on exactly where the run was.
    - the arithmetic of the private ``VecNormalize._update_reward`` and of
      ``RunningMeanStd.update`` / ``update_from_moments``, repeated operation for operation in
      the same order (so to the last bit), but on Python floats: numpy's per-call cost on
      arrays of ``n_envs`` numbers made it most of the trainer's time outside the update.

    ``gamma``, ``epsilon``, ``clip_reward``, ``norm_reward`` and ``training`` are
    ``VecNormalize``'s constructor arguments, kept as attributes of the same names.
    """
    n_envs = rewards.shape[1]
    rms = normalizer.ret_rms
    if normalizer.training:
        returns = np.empty(rewards.shape)  # the discounted return after each step, before a done resets it
        for env in range(n_envs):
            running, column = float(normalizer.returns[env]), []
            for reward, done in zip(rewards[:, env].tolist(), dones[:, env].tolist(), strict=True):
                running = running * normalizer.gamma + reward
                column.append(running)
                if done:
                    running = 0.0
            returns[:, env] = column
            normalizer.returns[env] = running
        # RunningMeanStd.update(returns[t]) for each t: the moments over the envs, then the running merge.
        mean, var, count = float(rms.mean), float(rms.var), rms.count
        variances = []
        for batch_mean, batch_var in zip(returns.mean(axis=1).tolist(), returns.var(axis=1).tolist(), strict=True):
            delta = batch_mean - mean
            tot_count = count + n_envs
            mean = mean + delta * n_envs / tot_count
            m_2 = var * count + batch_var * n_envs + delta * delta * count * n_envs / (count + n_envs)
            var = m_2 / (count + n_envs)
            count = n_envs + count
            variances.append(var)
        # SB3 annotates mean and var as arrays, but its own update_from_moments stores float64 scalars
        # (for the shape () it uses here); these are the values and types it would store.
        rms.mean, rms.var, rms.count = np.float64(mean), np.float64(var), count  # type: ignore[assignment]
        std = np.sqrt(np.asarray(variances) + normalizer.epsilon)[:, None]
    else:
        normalizer.returns[dones.any(axis=0)] = 0
        std = np.sqrt(rms.var + normalizer.epsilon)
    if not normalizer.norm_reward:
        return rewards.astype(np.float32)
    return np.clip(rewards / std, -normalizer.clip_reward, normalizer.clip_reward).astype(np.float32)
