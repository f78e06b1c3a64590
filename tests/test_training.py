"""Real PPO on real SUMO: train, stop, resume, and never lose a step or leave a SUMO behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stable_baselines3 import PPO
from typer.testing import CliRunner

from roadsense.cli import app
from roadsense.config import ConfigError
from roadsense.metric_lines import PUBLISHED, TRAIN_TAG, parse_line
from roadsense.training.checkpoints import latest_valid_checkpoint
from roadsense.training.train import train
from tests.conftest import TINY, children, process_group_members, tiny_config

pytestmark = pytest.mark.slow


def test_short_training_writes_a_model_that_loads_and_acts(tiny_dataset: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    result = train(tiny_dataset, tmp_path, tiny_config())
    assert result.num_timesteps == TINY["total_timesteps"]
    assert result.resumed_from == 0 and result.n_envs == 2
    for name in ("model.zip", "vecnormalize.pkl"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "logs" / "progress.csv").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "logs").iterdir())
    model = PPO.load(tmp_path / "model.zip", device="cpu")
    assert model.observation_space["peers"].shape == (8, 6)
    assert latest_valid_checkpoint(tmp_path / "checkpoints").num_timesteps == TINY["total_timesteps"]

    parsed = [parse_line(line) for line in capsys.readouterr().out.splitlines()]
    updates = [values for tag, values in filter(None, parsed) if tag == "train"]
    assert [u["timesteps"] for u in updates] == [256.0, 512.0]  # one line per PPO update
    # Exactly the published metrics: a renamed SB3 logger key, or a metric printed but not published, fails here.
    assert set(updates[-1]) == {name for tag, name in PUBLISHED if tag == TRAIN_TAG}


def test_resume_continues_from_the_checkpoint_to_the_exact_total(tiny_dataset: Path, tmp_path: Path) -> None:
    train(tiny_dataset, tmp_path, tiny_config(total_timesteps=256))
    resumed = train(tiny_dataset, tmp_path, tiny_config(total_timesteps=700), resume=True)
    assert resumed.resumed_from == 256
    # 700 is not a multiple of the 256-step rollout: the last rollout is shortened (to a multiple of n_envs).
    assert resumed.num_timesteps == 700
    assert latest_valid_checkpoint(tmp_path / "checkpoints").num_timesteps == 700
    # model.zip is the best checkpoint on the val split; the last one is published beside it.
    assert PPO.load(tmp_path / "model_last.zip", device="cpu").num_timesteps == 700


def test_linear_schedule_anneals_the_learning_rate_across_a_resume(tiny_dataset: Path, tmp_path: Path) -> None:
    """Each update steps with learning_rate * (1 - steps before it / total), also after a resume whose
    checkpointed optimizer holds the rate of the update before it; a longer total is refused, as it
    would change every remaining update's rate."""
    import csv
    import shutil

    config = tiny_config(lr_schedule="linear", learning_rate=1e-3, total_timesteps=768)
    train(tiny_dataset, tmp_path, config)
    for later in ("step_000000000512", "step_000000000768"):  # as if stopped after the first update
        shutil.rmtree(tmp_path / "checkpoints" / later)
    with pytest.raises(ConfigError, match="total_timesteps: 768 -> 1024"):
        train(tiny_dataset, tmp_path, tiny_config(lr_schedule="linear", learning_rate=1e-3, total_timesteps=1024),
              resume=True)
    resumed = train(tiny_dataset, tmp_path, config, resume=True)
    assert resumed.resumed_from == 256
    with (tmp_path / "logs" / "progress.csv").open() as f:
        logged = [float(row["train/learning_rate"]) for row in csv.DictReader(f) if row["train/learning_rate"]]
    assert logged[-2:] == pytest.approx([1e-3 * (1 - 256 / 768), 1e-3 * (1 - 512 / 768)])
    model = PPO.load(tmp_path / "model_last.zip", device="cpu")
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 3)


def test_resume_skips_a_corrupt_newest_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    train(tiny_dataset, tmp_path, tiny_config(total_timesteps=512))
    newest = latest_valid_checkpoint(tmp_path / "checkpoints")
    newest.model.write_bytes(b"truncated")
    resumed = train(tiny_dataset, tmp_path, tiny_config(total_timesteps=768), resume=True)
    assert resumed.resumed_from == 256 and resumed.num_timesteps == 768


@pytest.mark.parametrize("to", ["pid", "group"])
def test_sigterm_checkpoints_stops_every_sumo_and_resumes(tiny_dataset: Path, tmp_path: Path, to: str) -> None:
    # "group" is what `timeout`, systemd and supervisors send: the env workers get it too and must leave
    # the stop to the trainer, which checkpoints and then ends them.
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "roadsense.cli", "train", "--dataset", str(tiny_dataset), "--output", str(out),
           "--preset", "smoke", "--total-timesteps", "100000", "--n-envs", "2",
           "--set", "rollout_steps=256", "--set", "checkpoint_every=256", "--set", "episode_steps=150",
           "--set", "hazard_step=60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    seen_update = False
    for line in proc.stdout:  # wait until PPO is mid-training
        if line.startswith("[train] timesteps=512"):
            seen_update = True
            break
        assert time.monotonic() < deadline, "training did not start in time"
    assert seen_update, "training ended before an update was logged"
    if to == "pid":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)  # start_new_session: the trainer leads its own group
    stopped_at = time.monotonic()
    rest, _ = proc.communicate(timeout=60)
    assert time.monotonic() - stopped_at < 30
    assert proc.returncode == 143, rest
    assert "checkpoint saved" in rest

    deadline = time.monotonic() + 15
    while process_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process_group_members(proc.pid) == [], "a worker (and its libsumo SUMO) outlived the trainer"

    checkpoint = latest_valid_checkpoint(out / "checkpoints")
    assert checkpoint is not None and checkpoint.num_timesteps >= 512 and checkpoint.num_timesteps % 256 == 0
    PPO.load(checkpoint.model, device="cpu")
    resumed = train(tiny_dataset, out, tiny_config(total_timesteps=checkpoint.num_timesteps + 256), resume=True)
    assert resumed.resumed_from == checkpoint.num_timesteps
    assert resumed.num_timesteps == checkpoint.num_timesteps + 256


def test_a_dead_env_worker_is_reported_with_its_scenarios(tiny_dataset: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "roadsense.cli", "train", "--dataset", str(tiny_dataset), "--output",
           str(tmp_path), "--preset", "smoke", "--total-timesteps", "100000", "--n-envs", "2",
           "--set", "rollout_steps=256", "--set", "episode_steps=150", "--set", "hazard_step=60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("[train] timesteps=256"):
            break
    # The env workers are the forkserver's children (as SUMO runs in-process, killing one is a SUMO crash).
    workers = [w for server in children(proc.pid) for w in children(server)]
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, rest
    assert "env worker died" in rest and "train-000" in rest


def test_a_diverged_policy_stops_training() -> None:
    import gymnasium as gym
    import torch

    from roadsense.training.train import TrainingAborted, _check_finite

    model = PPO("MlpPolicy", gym.make("Pendulum-v1"), n_steps=64, batch_size=32, device="cpu")
    _check_finite(model)  # a fresh policy is fine
    with torch.no_grad():
        model.policy.log_std.fill_(float("nan"))
    with pytest.raises(TrainingAborted, match="log_std is not finite"):
        _check_finite(model)


def _train_cli(dataset: Path, out: Path, *args: str) -> object:
    sets = [item for key, value in TINY.items() for item in ("--set", f"{key}={value}")]
    return CliRunner().invoke(app, ["train", "--dataset", str(dataset), "--output", str(out), "--preset", "smoke",
                                    *sets, *args])


def test_cli_resume_refuses_learning_changes_and_applies_the_others(tiny_dataset: Path, tmp_path: Path) -> None:
    assert _train_cli(tiny_dataset, tmp_path, "--total-timesteps", "256").exit_code == 0
    refused = _train_cli(tiny_dataset, tmp_path, "--resume", "--set", "learning_rate=0.001", "--set", "gamma=0.9")
    assert refused.exit_code == 2
    assert "gamma: 0.99 -> 0.9; learning_rate: 0.0002 -> 0.001" in refused.output
    assert latest_valid_checkpoint(tmp_path / "checkpoints").num_timesteps == 256  # nothing trained
    # A longer run on one env: the rollout is rollout_steps long whatever n_envs is.
    longer = _train_cli(tiny_dataset, tmp_path, "--resume", "--total-timesteps", "768", "--n-envs", "1")
    assert longer.exit_code == 0, longer.output
    last = PPO.load(tmp_path / "model_last.zip", device="cpu")
    assert last.num_timesteps == 768 and last.n_steps == TINY["rollout_steps"]


def test_a_renamed_key_points_to_its_new_name() -> None:
    with pytest.raises(ConfigError, match="'n_steps' was renamed 'rollout_steps'"):
        tiny_config(n_steps=256)
