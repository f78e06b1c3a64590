"""`roadsense run`: the whole pipeline end to end, its status file, dry run and refusals."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from roadsense import pipeline
from roadsense.artifacts.lock import LOCK_FILE, OutputLocked, output_lock
from roadsense.artifacts.status import STATUS_FILE, TEMP_MARK, RunStatus
from roadsense.cli import app
from roadsense.config import ConfigError
from roadsense.pipeline import RunPaths, run_pipeline
from tests.conftest import TINY, process_group_members, tiny_config

runner = CliRunner()


@pytest.mark.slow
def test_run_smoke_preset_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--preset", "smoke", "--output", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("model.zip", "vecnormalize.pkl", "metrics.json", "report.md", "manifest.json", "config.json",
                 "provenance.json", "status.json", "bucket_heatmap.png", "learning_curve.png", "export/policy.onnx",
                 "export/policy_int8.onnx", "export/peer_encoder.onnx", "export/policy_head.onnx",
                 "export/peer_encoder_int8.onnx", "export/policy_head_int8.onnx", "export/roadsense_policy.h",
                 "export/deploy.json"):
        assert (out / name).is_file(), name
    assert (out / "dataset" / "manifest.json").is_file()
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "succeeded" and status["error"] is None
    assert all(stage["state"] == "succeeded" for stage in status["stages"].values())
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["training"]["num_timesteps"] == 4096
    assert provenance["seeds"] == {"dataset_seed": 42, "eval_dataset_seed": 1042, "val_dataset_seed": 2042, "seed": 0,
                                   "eval_seed": 7, "val_seed": 11}
    # The smoke preset validates at 2,048 and 4,096 steps; model.zip is the better of the two.
    selection = json.loads((out / "model_selection.json").read_text())
    assert [s["num_timesteps"] for s in selection["history"]] == [2048, 4096]
    assert selection["selected_timesteps"] in (2048, 4096) and (out / "model_last.zip").is_file()
    assert provenance["model_selection"]["selected_timesteps"] == selection["selected_timesteps"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_selection"]["validation"] == selection["validation"]
    assert "## Model selection" in (out / "report.md").read_text()
    # The exported graphs ran on the evaluation's own plan, side by side with the torch model.
    assert "## Exported graphs beside the torch model" in (out / "report.md").read_text()
    assert {v["overall"]["episodes"] for v in metrics["variants"].values()} == {metrics["overall"]["episodes"]}
    assert json.loads((out / "export" / "deploy.json").read_text())["quantisation"]["calibrated_on"]["split"] == "val"
    assert set(provenance["stage_wall_s"]) >= {"dataset", "train", "export", "evaluate"}
    assert provenance["cost"]["estimated_usd"] > 0
    assert provenance["packages"]["torch"].startswith("2.13.0")
    assert json.loads((out / "manifest.json").read_text())["dataset_id"] == provenance["dataset_id"]


def test_a_failed_evaluation_keeps_the_finished_training_visible(tiny_dataset: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_evaluation(*args, **kwargs):
        raise RuntimeError("evaluation worker crashed")

    monkeypatch.setattr(pipeline, "evaluate", broken_evaluation)
    with pytest.raises(RuntimeError, match="crashed"):
        run_pipeline(RunPaths.under(tmp_path), tiny_config(total_timesteps=256), tiny_dataset)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and status["stage"] == "evaluate"
    assert "evaluation worker crashed" in status["error"]
    assert status["stages"]["train"]["state"] == "succeeded"
    assert status["stages"]["train"]["num_timesteps"] == 256
    assert (tmp_path / "model.zip").is_file()


def test_dry_run_validates_and_prints_the_plan_without_writing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--preset", "production", "--output", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["plan"]
    assert plan["total_timesteps"] == 2_000_000
    assert set(plan["expected_seconds"]) == set(pipeline.STAGES)  # every stage has an estimate
    assert plan["expected_total_seconds"] > plan["expected_seconds"]["train"] > 0
    assert not out.exists()


def test_dry_run_checks_a_given_dataset(tiny_dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(tiny_dataset, copy)
    routes = next(copy.glob("train/*/routes.rou.xml"))
    routes.write_text(routes.read_text() + "<!-- edited -->")
    result = runner.invoke(app, ["run", "--output", str(tmp_path / "run"), "--dataset", str(copy), "--dry-run"])
    assert result.exit_code == 2
    assert "routes.rou.xml" in result.output


@pytest.mark.parametrize(
    ("sets", "message"),
    [(["total_timestep=5"], "did you mean 'total_timesteps'"), (["peer_drop_prob=2"], "peer_drop_prob"),
     (["eval_count=3"], "eval_count")],
)
def test_bad_settings_exit_2_naming_the_key_and_write_nothing(tmp_path: Path, sets: list[str], message: str) -> None:
    out = tmp_path / "run"
    args = ["run", "--preset", "smoke", "--output", str(out)]
    for item in sets:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


def test_an_output_with_other_settings_is_refused(tmp_path: Path) -> None:
    tiny_config(seed=1).save(tmp_path / "config.json")
    result = runner.invoke(app, ["run", "--preset", "smoke", "--output", str(tmp_path), "--set", "seed=2"])
    assert result.exit_code == 2
    assert "change what is learned" in result.output and "seed: 1 -> 2" in result.output


# --- signals, the output lock, full disks --------------------------------------------------------


def _run_cmd(out: Path, dataset: Path, **sets: object) -> list[str]:
    """`roadsense run` on ``out`` with the tiny settings (and ``sets``), as a separate process."""
    cmd = [sys.executable, "-m", "roadsense.cli", "run", "--preset", "smoke", "--output", str(out),
           "--dataset", str(dataset)]
    for key, value in {**TINY, **sets}.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def _wait_for_status(out: Path, stage: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {stage} started"
        try:
            if json.loads((out / STATUS_FILE).read_text())["stage"] == stage:
                return
        except (OSError, ValueError):  # not written yet
            pass
        time.sleep(0.2)
    pytest.fail(f"the run did not reach {stage} within {timeout_s} s")


def _wait_gone(pgid: int) -> list[int]:
    deadline = time.monotonic() + 15
    while process_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return process_group_members(pgid)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_evaluation_exits_with_its_code_and_is_recorded(tiny_dataset: Path, tmp_path: Path,
                                                                        signum: int, code: int) -> None:
    out = tmp_path / "run"
    # Many episodes (1,500: several seconds even on a fast machine), so evaluation is still running when the signal comes.
    # SIGINT at its default, as under a terminal: a shell starts background jobs (CI runners among them) with
    # SIGINT ignored, and Python leaves an ignored SIGINT ignored.
    proc = subprocess.Popen(_run_cmd(out, tiny_dataset, total_timesteps=256, episodes_per_bucket=100),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_status(out, "evaluate", proc)
    time.sleep(1)  # the pool is up and its workers are in episodes
    os.killpg(proc.pid, signum)  # the whole group, as a terminal's Ctrl-C or `timeout` sends it
    _, err = proc.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert proc.returncode == code, err
    assert f"stopped by {name}" in err
    status = json.loads((out / STATUS_FILE).read_text())
    assert status["state"] == "stopped" and status["stage"] == "evaluate"
    assert status["stages"]["evaluate"]["signal"] == name
    assert status["stages"]["train"]["state"] == "succeeded"
    assert _wait_gone(proc.pid) == [], "an evaluation worker outlived the run"
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused_naming_the_holder(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(_run_cmd(out, tiny_dataset, total_timesteps=100_000), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_status(out, "train", first)
        second = subprocess.run(_run_cmd(out, tiny_dataset, total_timesteps=100_000), capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"in use by another run (pid {first.pid})" in second.stderr
        assert json.loads((out / STATUS_FILE).read_text())["stage"] == "train"  # the first run's, untouched
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143
    with output_lock(out):  # released with the first run
        pass


def test_the_lock_dies_with_a_killed_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from roadsense.artifacts.lock import output_lock\n"
                               f"with output_lock(Path({str(tmp_path)!r})):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputLocked, match=f"pid {holder.pid}"):
        with output_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    with output_lock(tmp_path) as lock:  # no stale lock to clear by hand
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()


def test_train_alone_also_refuses_a_folder_in_use(tmp_path: Path) -> None:
    with output_lock(tmp_path):
        result = runner.invoke(app, ["train", "--output", str(tmp_path), "--preset", "smoke"])
    assert result.exit_code == 2
    assert f"in use by another run (pid {os.getpid()})" in result.output
    assert not (tmp_path / "config.json").exists()


def test_a_refused_run_releases_the_lock_and_records_nothing(tmp_path: Path) -> None:
    tiny_config(seed=1).save(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="change what is learned"):
        run_pipeline(RunPaths.under(tmp_path), tiny_config(seed=2))
    with output_lock(tmp_path):
        pass


@pytest.mark.slow
def test_a_full_disk_during_training_is_named_recorded_and_cleaned_up(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # What a SIGKILLed run leaves behind: a checkpoint, status.json and dataset staging, half written.
    leftovers = [out / "checkpoints" / ".step_000000000256.tmp-999999", out / ".status.json.tmp-999999",
                 out / ".dataset.tmp-999999"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if "status" not in path.name else path.write_text("{")

    def small_disk() -> None:
        # Every file this run writes may grow to 100 KB: the dataset copy, logs and status.json fit, a
        # checkpoint's model.zip (about 230 KB) does not. Python ignores SIGXFSZ, so the write fails with EFBIG.
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run(_run_cmd(out, tiny_dataset), capture_output=True, text=True, timeout=300,
                          preexec_fn=small_disk)
    assert proc.returncode == 1, proc.stderr
    checkpoint = out / "checkpoints" / "step_000000000256"
    assert f"cannot write {checkpoint}: File too large" in proc.stderr
    status = json.loads((out / STATUS_FILE).read_text())
    assert status["state"] == "failed" and status["stage"] == "train"
    assert f"cannot write {checkpoint}: File too large" in status["error"]
    for path in leftovers:
        assert f"removed {path}" in proc.stderr
    temps = [p for folder in (out, out / "checkpoints") for p in folder.iterdir() if TEMP_MARK in p.name]
    assert temps == [], "a failed or killed write left its temporary files"
    assert not checkpoint.exists()


def test_status_keeps_a_failure_it_cannot_write_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    status = RunStatus(folder, ["train"])
    status.start("train")
    shutil.rmtree(folder)  # the next status.json write fails, as on a full disk or a removed output
    status.fail("train", "OSError: the real reason")
    err = capsys.readouterr().err
    assert "train failed (OSError: the real reason)" in err
    assert f"cannot write {folder / STATUS_FILE}: No such file or directory" in err


def test_a_long_error_is_kept_short_in_status(tmp_path: Path) -> None:
    status = RunStatus(tmp_path, ["train"])
    status.start("train")
    status.fail("train", "RuntimeError: the reason " + "x" * 5000)
    error = json.loads((tmp_path / STATUS_FILE).read_text())["error"]
    assert error.startswith("RuntimeError: the reason") and len(error) == 1024 and error.endswith("…")


@pytest.mark.slow
def test_a_resumed_run_refuses_learning_changes_and_applies_a_longer_total(tiny_dataset: Path, tmp_path: Path) -> None:
    paths = RunPaths.under(tmp_path / "run")
    run_pipeline(paths, tiny_config(total_timesteps=256), tiny_dataset)
    with pytest.raises(ConfigError, match=r"clip_range: 0.2 -> 0.3\)"):
        run_pipeline(paths, tiny_config(total_timesteps=512, clip_range=0.3), tiny_dataset)
    record = run_pipeline(paths, tiny_config(total_timesteps=512, episodes_per_bucket=2), tiny_dataset)
    assert record["training"] == {**record["training"], "resumed_from": 256, "num_timesteps": 512}
    saved = json.loads((paths.output / "config.json").read_text())
    assert saved["train"]["total_timesteps"] == 512 and saved["evaluation"]["episodes_per_bucket"] == 2
