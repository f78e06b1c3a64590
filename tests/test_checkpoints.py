"""Checkpoints are complete or absent; damaged ones are skipped with a warning, never loaded."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from roadsense.training.checkpoints import (
    latest_valid_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def model_and_norm():
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), norm_obs=False)
    return PPO("MlpPolicy", venv, n_steps=64, batch_size=32, device="cpu", seed=0), venv


def test_save_then_load_the_newest(tmp_path: Path, model_and_norm) -> None:
    model, norm = model_and_norm
    save_checkpoint(tmp_path, model, norm, 100, milestone=False, settings={})
    save_checkpoint(tmp_path, model, norm, 200, milestone=False, settings={})
    newest = latest_valid_checkpoint(tmp_path)
    assert newest is not None and newest.num_timesteps == 200
    loaded = PPO.load(newest.model, device="cpu")
    assert loaded.policy.state_dict().keys() == model.policy.state_dict().keys()
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["truncate-model", "garbage-vecnorm", "no-state", "bad-state-json"])
def test_a_damaged_checkpoint_is_skipped_with_a_warning(tmp_path: Path, model_and_norm, damage: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    model, norm = model_and_norm
    save_checkpoint(tmp_path, model, norm, 100, milestone=False, settings={})
    newest = save_checkpoint(tmp_path, model, norm, 200, milestone=False, settings={})
    if damage == "truncate-model":
        data = newest.model.read_bytes()
        newest.model.write_bytes(data[: len(data) // 2])
    elif damage == "garbage-vecnorm":
        newest.vecnormalize.write_bytes(b"not a pickle")
    elif damage == "no-state":
        (newest.path / "state.json").unlink()
    else:
        (newest.path / "state.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        chosen = latest_valid_checkpoint(tmp_path)
    assert chosen is not None and chosen.num_timesteps == 100
    assert "skipping checkpoint" in caplog.text and newest.path.name in caplog.text


def test_an_unfinished_write_is_not_a_checkpoint(tmp_path: Path, model_and_norm) -> None:
    model, norm = model_and_norm
    (tmp_path / ".tmp-step_000000000300-123").mkdir()
    assert list_checkpoints(tmp_path) == []
    assert latest_valid_checkpoint(tmp_path) is None


def test_prune_keeps_the_newest_and_the_milestones(tmp_path: Path, model_and_norm) -> None:
    model, norm = model_and_norm
    for step in (100, 200, 300, 400, 500):
        save_checkpoint(tmp_path, model, norm, step, milestone=step == 200, settings={})
    prune_checkpoints(tmp_path, keep=2)
    kept = sorted(int(p.name.split("_")[1]) for p in list_checkpoints(tmp_path))
    assert kept == [200, 400, 500]


@pytest.mark.slow
def test_a_write_that_fails_names_the_checkpoint_and_leaves_no_temp_folder(tmp_path: Path) -> None:
    # A real failing write: a file-size limit (as a full disk, the write fails midway) in a separate process.
    script = f"""
import resource, gymnasium as gym
from pathlib import Path
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from roadsense.training.checkpoints import save_checkpoint
venv = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), norm_obs=False)
model = PPO("MlpPolicy", venv, n_steps=64, batch_size=32, device="cpu", seed=0)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # model.zip is larger; Python ignores SIGXFSZ
save_checkpoint(Path({str(tmp_path)!r}), model, venv, 300, milestone=False, settings={{}})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"roadsense.artifacts.status.WriteError: cannot write {tmp_path / 'step_000000000300'}: "
                    "File too large (errno 27); free space there or choose another folder")
    assert list(tmp_path.iterdir()) == []
