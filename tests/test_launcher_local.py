"""``--local`` end to end: results laid out as in S3, published to a moto server, fetched back.

The fast test fakes the container with a tiny script (the ROADSENSE_CONTAINER_CMD hook);
the slow one runs the real adapter, roadsense-container, with the smoke preset.
"""

from __future__ import annotations

import json
import sys
import sysconfig
import tarfile
import urllib.request
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

from launcher import display
from launcher.cli import app
from launcher.local import container_command

REGION = "il-central-1"
BUCKET = "saferide-training-results"

FAKE_CONTAINER = """
import json, os, pathlib, sys
root = pathlib.Path(os.environ["ROADSENSE_SM_ROOT"])
hyper = json.loads((root / "input/config/hyperparameters.json").read_text())
resumed = sorted(p.name for p in (root / "checkpoints").iterdir())
print("[train] timesteps=2048 total_timesteps=4096 fps=900", flush=True)
if hyper["seed"] == "13":
    (root / "output/failure").write_text("simulated failure")
    sys.exit(2)
(root / "checkpoints" / f"ckpt_{len(resumed)}.zip").write_text("weights")
# metrics.json as roadsense writes it: the policy's "overall" section beside the finer ones.
collision = 0.1 * (int(hyper["seed"]) + 1)
(root / "model/metrics.json").write_text(json.dumps({
    "policy": "model", "overall": {"collision_rate": collision, "success_rate": 1 - collision, "episodes": 15},
    "per_bucket": {"n1_k1": {"collision_rate": 1.0}}, "resumed_from": resumed,
}))
(root / "output/data/train.log").write_text("log")
print("[eval] collision_rate=0.1 success_rate=0.9", flush=True)
"""


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch):
    server = ThreadedMotoServer(port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # Every moto server in this process shares moto's state: start each test from an empty account.
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
    for var in ("AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    yield s3
    server.stop()


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_local_run_publishes_and_fetches(moto_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "fake_container.py"
    script.write_text(FAKE_CONTAINER)
    monkeypatch.setenv("ROADSENSE_CONTAINER_CMD", f"{sys.executable} {script}")
    runs = tmp_path / "runs"
    result = _invoke("--run-id", "local_001", "--preset", "smoke", "--local", "--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    record = json.loads((runs / "local_001" / "launch.json").read_text())
    job = record["attempts"][0]["job_name"]
    assert (runs / "local_001" / "output" / job / "output" / "model.tar.gz").is_file()
    # The job worked in the run's stand-in for SageMaker's /opt/ml, which is never published.
    assert (runs / "local_001" / "sagemaker" / "model" / "metrics.json").is_file()
    keys = {o["Key"] for o in moto_server.list_objects_v2(Bucket=BUCKET, Prefix="local_001/")["Contents"]}
    assert keys == {
        "local_001/launch.json",
        f"local_001/output/{job}/output/model.tar.gz",
        f"local_001/output/{job}/output/output.tar.gz",
    }
    # Where a cloud run's checkpoints live (and expire): a cloud --resume would continue from them.
    checkpoints = {o["Key"] for o in moto_server.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/")["Contents"]}
    assert checkpoints == {"checkpoints/local_001/ckpt_0.zip"}

    assert _invoke("--run-id", "local_001", "--local", "--runs-dir", str(runs)).exit_code == 2  # duplicate
    assert (
        _invoke("--run-id", "local_001", "--preset", "smoke", "--local", "--resume", "--runs-dir", str(runs)).exit_code
        == 0
    )

    fetched = tmp_path / "fetched"
    assert _invoke("fetch", "local_001", "--to", str(fetched)).exit_code == 0
    metrics = json.loads((fetched / "model" / "metrics.json").read_text())
    assert metrics["resumed_from"] == ["ckpt_0.zip"]  # the second attempt started from the first's checkpoint
    assert (fetched / "output-data" / "train.log").read_text() == "log"

    # A published local run has no SageMaker job: status comes from its results, logs says where the log is.
    status = _invoke("status", "local_001")
    assert status.exit_code == 0 and "Completed" in status.output and "ran locally" in status.output
    logs = _invoke("logs", "local_001")
    assert logs.exit_code == 2 and "ran on a local machine" in logs.output and "fetch local_001" in logs.output


def _table_rows(output: str, marker: str) -> list[str]:
    """The lines of a printed table that hold ``marker``, without the table's borders."""
    return [" ".join(line.replace("│", " ").split()) for line in output.splitlines() if marker in line]


def test_list_status_fetch_and_compare_read_local_and_s3_runs_alike(
    moto_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local sweep is published to the bucket as it runs: each command shows the same from either store."""
    script = tmp_path / "fake_container.py"
    script.write_text(FAKE_CONTAINER)
    monkeypatch.setenv("ROADSENSE_CONTAINER_CMD", f"{sys.executable} {script}")
    monkeypatch.setattr(display.console, "width", 250)  # room for every column
    runs = str(tmp_path / "runs")
    swept = _invoke("--local", "--preset", "smoke", "--runs-dir", runs, "sweep", "grid", "--seeds", "0,1")
    assert swept.exit_code == 0, swept.output
    seen: dict[str, list[object]] = {}
    for store in ([], ["--local"]):  # the bucket, then --runs-dir
        result = _invoke(*store, "--runs-dir", runs, "compare", "grid")
        assert result.exit_code == 0, result.output
        rows = {line.split()[0]: line for line in _table_rows(result.output, "grid-00")}
        # Each rate with its 95 % interval over the 15 episodes (this metrics.json has no _ci95 keys).
        assert all(cell in rows["grid-001"] for cell in ("seed=0", "10.0% (2.3-34.0)", "90.0% (66.0-97.7)"))
        assert all(cell in rows["grid-002"] for cell in ("seed=1", "20.0% (7.0-45.2)", "80.0% (54.8-93.0)"))
        header = next(line for line in result.output.splitlines() if "run id" in line)
        # The overall metrics, not the per-bucket ones.
        assert [c.strip() for c in header.split("┃")[3:-1]] == ["collision_rate", "success_rate"]
        listed = _invoke(*store, "--runs-dir", runs, "list").output
        status = _invoke(*store, "--runs-dir", runs, "status", "grid-002").output
        fetched = tmp_path / f"fetched{len(store)}"
        assert _invoke(*store, "--runs-dir", runs, "fetch", "grid-002", "--to", str(fetched)).exit_code == 0
        seen.setdefault("compare", []).append(sorted(rows.values()))
        seen.setdefault("list", []).append(_table_rows(listed, "grid"))
        seen.setdefault("status", []).append(_table_rows(status, "grid-002"))
        seen.setdefault("fetch", []).append(json.loads((fetched / "model" / "metrics.json").read_text()))
        assert "neither a sweep nor a tuning job" in _invoke(*store, "--runs-dir", runs, "compare", "grid-001").output
    assert {command: views[0] == views[1] for command, views in seen.items()} == dict.fromkeys(seen, True)
    listed_rows = seen["list"][0]
    # In S3's order: "grid-001/" < "grid/".
    assert len(listed_rows) == 3 and listed_rows[2] == "grid (sweep: compare grid) 0"
    assert sum(" local " in row for row in listed_rows) == 2
    assert "Completed" in seen["status"][0][0] and "ran locally (--local)" in seen["status"][0][0]
    assert seen["fetch"][0]["overall"]["collision_rate"] == 0.2


def test_local_failure_reason_and_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "fake_container.py"
    script.write_text(FAKE_CONTAINER)
    monkeypatch.setenv("ROADSENSE_CONTAINER_CMD", f"{sys.executable} {script}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: results stay local
    result = CliRunner().invoke(
        app, ["--run-id", "bad", "--preset", "smoke", "--set", "seed=13", "--local", "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "simulated failure" in result.output


def test_dry_run_json_needs_no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    result = _invoke(
        "--run-id",
        "cloud_prod_001",
        "--dry-run",
        "--json",
        "--spot",
        "--image-uri",
        "123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training:abc",
        "--role-arn",
        "arn:aws:iam::123456789012:role/roadsense-sagemaker",
    )
    assert result.exit_code == 0, result.output
    request = json.loads(result.output)
    assert request["EnableManagedSpotTraining"] is True
    assert request["TrainingJobName"].startswith("cloud-prod-001-")


def test_the_adapter_is_found_beside_the_interpreter_when_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a virtualenv that is not activated
    argv, _ = container_command("roadsense-container", tmp_path, {})
    assert argv == [str(Path(sysconfig.get_path("scripts")) / "roadsense-container"), "train"]


@pytest.mark.slow
def test_real_adapter_local_run_end_to_end(moto_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real container adapter (SUMO + PPO, smoke preset) through --local, then fetch from 'S3'."""
    monkeypatch.delenv("ROADSENSE_CONTAINER_CMD", raising=False)
    runs = tmp_path / "runs"
    result = _invoke("--run-id", "e2e_smoke", "--preset", "smoke", "--local", "--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    fetched = tmp_path / "fetched"
    assert _invoke("fetch", "e2e_smoke", "--to", str(fetched)).exit_code == 0
    metrics = json.loads((fetched / "model" / "metrics.json").read_text())
    assert metrics
    with tarfile.open(next((runs / "e2e_smoke" / "output").glob("*/output/model.tar.gz"))) as tar:
        assert "model.zip" in tar.getnames()
