"""The SageMaker contract: `roadsense-container train` against a temporary /opt/ml."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roadsense.adapters.sagemaker import SageMakerPaths, _Tee, main
from roadsense.training.checkpoints import latest_valid_checkpoint
from roadsense.training.train import train
from tests.conftest import process_group_members, tiny_config

PACKAGE = ("model.zip", "metrics.json", "report.md", "manifest.json", "config.json", "provenance.json")


def _job(root: Path, hyperparameters: object, dataset: Path | None = None) -> SageMakerPaths:
    paths = SageMakerPaths(root)
    paths.hyperparameters.parent.mkdir(parents=True)
    text = hyperparameters if isinstance(hyperparameters, str) else json.dumps(hyperparameters)
    paths.hyperparameters.write_text(text)
    if dataset is not None:
        shutil.copytree(dataset, paths.dataset_channel)
    return paths


def _hyper(**overrides: object) -> dict[str, str]:
    return tiny_config(**overrides).to_hyperparameters()


def _run(paths: SageMakerPaths, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("ROADSENSE_SM_ROOT", str(paths.root))
    return main(["train"])


@pytest.mark.slow
def test_a_job_with_string_hyperparameters_writes_the_package(tiny_dataset: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _job(tmp_path, _hyper(), tiny_dataset)
    assert _run(paths, monkeypatch) == 0
    for name in PACKAGE:
        assert (paths.model / name).is_file(), name
    assert not paths.failure.exists()
    assert latest_valid_checkpoint(paths.checkpoints).num_timesteps == 512
    log = (paths.output_data / "training.log").read_text()
    assert "[train] timesteps=512" in log and "[eval] " in log
    plan = json.loads(next(line for line in log.splitlines() if line.startswith("plan: "))[len("plan: "):])
    assert plan["expected_total_seconds"] > 0 and set(plan["expected_seconds"]) >= {"train", "evaluate"}
    assert (paths.output_data / "logs" / "progress.csv").is_file()
    assert json.loads((paths.model / "config.json").read_text())["train"]["total_timesteps"] == 512


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"total_timesteps": 512}, "must be strings"),
        ({"total_timestep": "512"}, "did you mean 'total_timesteps'"),
        ({"preset": "giant"}, "preset"),
        ({"peer_drop_prob": "7"}, "peer_drop_prob"),
    ],
)
def test_bad_hyperparameters_fail_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                hyperparameters: object, message: str) -> None:
    paths = _job(tmp_path, hyperparameters)
    assert _run(paths, monkeypatch) == 2
    reason = paths.failure.read_text()
    assert message in reason and len(reason) <= 1024
    assert not (paths.model / "model.zip").exists()


def test_a_tampered_dataset_channel_fails_naming_the_file(tiny_dataset: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _job(tmp_path, _hyper(), tiny_dataset)
    routes = next(paths.dataset_channel.glob("eval/*/routes.rou.xml"))
    routes.write_text(routes.read_text().replace('depart="0', 'depart="5'))
    assert _run(paths, monkeypatch) == 2
    assert "routes.rou.xml" in paths.failure.read_text()
    assert not paths.checkpoints.exists() or not any(paths.checkpoints.iterdir())


def test_an_empty_dataset_channel_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _job(tmp_path, _hyper())
    paths.dataset_channel.mkdir(parents=True)
    assert _run(paths, monkeypatch) == 2
    assert "channel" in paths.failure.read_text() and "empty" in paths.failure.read_text()


def test_only_train_is_a_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["serve"]) == 2
    assert "usage: roadsense-container train" in capsys.readouterr().err


@pytest.mark.slow
def test_a_restarted_job_resumes_from_its_checkpoints(tiny_dataset: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _job(tmp_path, _hyper(total_timesteps=768), tiny_dataset)
    # As after a spot interruption: S3 restored the checkpoints of the first attempt.
    train(tiny_dataset, tmp_path / "first-attempt", tiny_config(total_timesteps=256),
          checkpoint_dir=paths.checkpoints)
    assert _run(paths, monkeypatch) == 0
    provenance = json.loads((paths.model / "provenance.json").read_text())
    assert provenance["training"]["resumed_from"] == 256
    assert provenance["training"]["num_timesteps"] == 768


@pytest.mark.slow
def test_sigterm_mid_training_then_a_restart_finishes_the_same_total(tiny_dataset: Path, tmp_path: Path) -> None:
    paths = _job(tmp_path, _hyper(total_timesteps=1536), tiny_dataset)
    env = {**os.environ, "ROADSENSE_SM_ROOT": str(paths.root)}
    cmd = [sys.executable, "-c", "import sys; from roadsense.adapters.sagemaker import main; sys.exit(main())", "train"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith("[train] timesteps=512"):
            break
    else:
        pytest.fail("the job ended before training was under way")
    proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    proc.communicate(timeout=60)
    assert time.monotonic() - stopped < 30
    assert proc.returncode == 143
    assert "SIGTERM" in paths.failure.read_text()
    deadline = time.monotonic() + 15
    while process_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process_group_members(proc.pid) == []
    saved = latest_valid_checkpoint(paths.checkpoints).num_timesteps
    assert 512 <= saved < 1536

    restart = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert restart.returncode == 0, restart.stdout[-2000:]
    assert not paths.failure.exists()
    provenance = json.loads((paths.model / "provenance.json").read_text())
    assert provenance["training"] == {**provenance["training"], "resumed_from": saved, "num_timesteps": 1536}


def test_the_failure_reason_comes_first_and_a_huge_value_is_cut(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _job(tmp_path, {"total_timesteps": "9" * 3000 + "x"})
    assert _run(paths, monkeypatch) == 2
    reason = paths.failure.read_text()
    assert reason.startswith("bad input: hyperparameters: total_timesteps: Input should be a valid integer")
    assert "…" in reason and len(reason) < 300


@pytest.mark.parametrize("value", ["true", "NaN", "Infinity"])
def test_a_bool_or_non_finite_hyperparameter_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          value: str) -> None:
    paths = _job(tmp_path, {"total_timesteps": value})
    assert _run(paths, monkeypatch) == 2
    assert paths.failure.read_text().startswith("bad input: hyperparameters: total_timesteps: ")


def test_the_log_copy_ends_at_once_though_a_helper_holds_the_pipe(tmp_path: Path) -> None:
    log = tmp_path / "training.log"
    helper = None
    try:
        with _Tee(log):
            print("written before the end", flush=True)
            # Inherits fds 1 and 2 as the forkserver and the resource tracker do, and outlives the block.
            helper = subprocess.Popen(["sleep", "60"])
            ending = time.monotonic()
        ended_in = time.monotonic() - ending
    finally:
        if helper is not None:
            helper.kill()
            helper.wait()
    assert ended_in < 3, f"the log copy waited {ended_in:.1f} s for a helper process"
    assert "written before the end" in log.read_text()


@pytest.mark.slow
def test_a_job_restored_from_checkpoints_refuses_settings_that_change_the_learning(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `roadsense-launch --resume` with other hyperparameters gives: an empty model folder,
    # the first attempt's checkpoints restored from S3.
    paths = _job(tmp_path, _hyper(total_timesteps=768, learning_rate=1e-3, gae_lambda=0.9), tiny_dataset)
    train(tiny_dataset, tmp_path / "first-attempt", tiny_config(total_timesteps=256), checkpoint_dir=paths.checkpoints)
    assert _run(paths, monkeypatch) == 2
    reason = paths.failure.read_text()
    assert reason.startswith("bad input: checkpoint ")
    assert "gae_lambda: 0.95 -> 0.9; learning_rate: 0.0002 -> 0.001" in reason
