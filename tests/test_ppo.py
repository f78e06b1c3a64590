"""The lean PPO update against SB3's own ``PPO.train``: same batch, same minibatch order, same result."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger

from roadsense.env.observation import observation_space
from roadsense.policy import policy_kwargs
from roadsense.policy.actor_critic import PolicyNet, blas_threads, gaussian_log_prob, openblas_thread_functions
from roadsense.training.ppo import ppo_update
from roadsense.training.rollout import RolloutBatch

LEARNING_RATE = 3e-3


class _Spaces(gym.Env):
    """Only the convoy env's spaces: SB3 builds the model from an env, the update never steps it."""

    observation_space = observation_space(1)
    action_space = spaces.Box(0.0, 1.0, (1,), np.float32)


def _model_with_a_filled_buffer(n_steps: int, batch_size: int, n_epochs: int,
                                ent_coef: float = 0.0) -> PPO:
    """An SB3 PPO whose rollout buffer holds a random but plausible rollout."""
    model = PPO("MultiInputPolicy", _Spaces(), n_steps=n_steps, batch_size=batch_size, n_epochs=n_epochs,
                learning_rate=LEARNING_RATE, ent_coef=ent_coef, policy_kwargs=policy_kwargs(16, -0.5), seed=3, device="cpu")
    model.set_logger(Logger(None, []))  # configure(None, ...) would leave a folder in /tmp
    buffer = model.rollout_buffer
    rng = np.random.default_rng(0)
    for values in buffer.observations.values():
        values[:] = rng.uniform(-1, 1, values.shape)
    buffer.observations["peer_mask"][:] = rng.random(buffer.observations["peer_mask"].shape) < 0.6
    buffer.actions[:] = rng.normal(0.3, 0.6, buffer.actions.shape)
    obs = {key: torch.from_numpy(value.reshape(-1, *value.shape[2:])) for key, value in buffer.observations.items()}
    with torch.no_grad():
        values, log_prob, _ = model.policy.evaluate_actions(obs, torch.from_numpy(buffer.actions.reshape(-1, 1)))
    buffer.values[:] = values.numpy().reshape(buffer.values.shape)
    buffer.log_probs[:] = log_prob.numpy().reshape(buffer.log_probs.shape)
    buffer.advantages[:] = rng.normal(0, 2, buffer.advantages.shape)
    buffer.returns[:] = buffer.advantages + buffer.values
    buffer.full = True
    return model


def _batch_of(model: PPO) -> RolloutBatch:
    """The SB3 buffer's samples in its own flattening order (env-major), so minibatches line up."""
    buffer = model.rollout_buffer

    def flat(array: np.ndarray) -> np.ndarray:
        return array.swapaxes(0, 1).reshape(-1, *array.shape[2:]).astype(np.float32)

    return RolloutBatch(
        obs={key: flat(value) for key, value in buffer.observations.items()},
        actions=flat(buffer.actions), old_log_prob=flat(buffer.log_probs).flatten(),
        old_values=flat(buffer.values).flatten(), advantages=flat(buffer.advantages).flatten(),
        returns=flat(buffer.returns).flatten(),
    )


@pytest.mark.filterwarnings("ignore:You have specified a mini-batch size")
@pytest.mark.parametrize("batch_size, n_epochs, ent_coef", [(64, 4, 0.0), (50, 2, 0.01)])
def test_the_update_equals_sb3_ppo_train(batch_size: int, n_epochs: int, ent_coef: float) -> None:
    # 256 samples in minibatches of 64 (equal) or 50 (the last one shorter), with and without entropy.
    model = _model_with_a_filled_buffer(256, batch_size, n_epochs, ent_coef)
    ours = copy.deepcopy(model.policy)  # its own copy of the optimizer too
    batch = _batch_of(model)
    before = [p.detach().clone() for p in ours.parameters()]

    np.random.seed(11)  # SB3 shuffles with numpy's global generator ...
    model.train()
    stats = ppo_update(ours, batch, n_epochs, batch_size, 0.2, ent_coef, LEARNING_RATE, np.random.RandomState(11))  # ... the same stream

    moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), before, strict=True))
    assert moved > 1e-3, "the update did not change the policy"
    # numpy and torch round float32 sums differently (the gradients agree to ~1e-6 of their scale, see
    # the next test), and Adam's first step, lr * g / (|g| + eps), turns that into up to ~1 % of lr where a
    # gradient element happens to cancel to ~eps. So every element to 1 % of lr, and all but one in a
    # thousand to 1e-6 (the autograd version was held to 1e-5 everywhere).
    differences = torch.cat([(theirs - mine).detach().abs().flatten()
                             for theirs, mine in zip(model.policy.parameters(), ours.parameters(), strict=True)])
    assert differences.max() < 0.01 * LEARNING_RATE
    assert (differences > 1e-6).float().mean() < 1e-3
    logged = model.logger.name_to_value
    assert stats.approx_kl == pytest.approx(float(logged["train/approx_kl"]), rel=1e-3, abs=1e-7)
    assert stats.clip_fraction == pytest.approx(logged["train/clip_fraction"], abs=1e-6)
    assert stats.policy_loss == pytest.approx(logged["train/policy_gradient_loss"], rel=1e-3, abs=1e-6)
    assert stats.value_loss == pytest.approx(logged["train/value_loss"], rel=1e-4)
    assert stats.explained_variance == pytest.approx(logged["train/explained_variance"], abs=1e-6)
    assert stats.std == pytest.approx(logged["train/std"], rel=1e-6)
    assert stats.clip_fraction > 0, "the test batch should exercise the clipping"


def test_the_update_steps_with_the_learning_rate_it_is_given() -> None:
    """Not the one in the optimizer (a checkpoint's, or the schedule's previous step): 0 moves nothing."""
    model = _model_with_a_filled_buffer(64, 64, 1, 0.0)
    batch = _batch_of(model)
    before = [p.detach().clone() for p in model.policy.parameters()]
    ppo_update(model.policy, batch, 1, 64, 0.2, 0.0, 0.0, np.random.default_rng(0))
    assert all(torch.equal(a, b) for a, b in zip(model.policy.parameters(), before, strict=True))
    assert model.policy.optimizer.param_groups[0]["lr"] == 0.0


@pytest.mark.parametrize("ent_coef", [0.0, 0.01])
def test_the_gradients_equal_sb3_autograd(ent_coef: float) -> None:
    # One minibatch of the whole batch, one optimizer step: both leave the clipped gradients in .grad.
    model = _model_with_a_filled_buffer(64, 64, 1, ent_coef)
    ours, batch = copy.deepcopy(model.policy), _batch_of(model)  # before train() flattens SB3's buffer
    model.train()
    ppo_update(ours, batch, 1, 64, 0.2, ent_coef, LEARNING_RATE, np.random.default_rng(0))
    for (name, theirs), mine in zip(model.policy.named_parameters(), ours.parameters(), strict=True):
        scale = theirs.grad.abs().max().item()
        assert scale > 0, name
        assert torch.allclose(theirs.grad, mine.grad, rtol=0, atol=1e-5 * scale), name


def test_the_forward_pass_equals_sb3_evaluate_actions() -> None:
    model = _model_with_a_filled_buffer(64, 64, 1)
    batch = _batch_of(model)
    net = PolicyNet.of(model.policy)
    values, mean, _ = net.forward(batch.obs)
    log_prob = gaussian_log_prob((batch.actions - mean) / np.exp(net.log_std), net.log_std)
    with torch.no_grad():
        sb3_values, sb3_log_prob, _ = model.policy.evaluate_actions(
            {key: torch.from_numpy(value) for key, value in batch.obs.items()}, torch.from_numpy(batch.actions))
    np.testing.assert_allclose(values, sb3_values.flatten().numpy(), atol=1e-6)
    np.testing.assert_allclose(log_prob, sb3_log_prob.numpy(), atol=1e-5)


def test_numpy_blas_is_held_to_the_trainers_thread_budget() -> None:
    # Without it OpenBLAS spreads a minibatch's products over every CPU (5 ms instead of 60 us on a busy machine).
    _, get_threads = openblas_thread_functions()
    assert get_threads is not None, "numpy's OpenBLAS was not found"
    before = get_threads()
    with blas_threads(1):
        assert get_threads() == 1
    assert get_threads() == before
