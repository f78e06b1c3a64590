"""One run store, two places: list, status, fetch and compare read the same runs alike from the
bucket (in-process moto) and from a runs folder laid out like it (``--local``).

Each test builds one tree of runs in both stores and checks that the command's function gives the
same answer from each; tests/test_launcher_local.py does the same through the CLI after real
``--local`` runs.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import boto3
import pytest

from launcher import runs
from launcher.compare import compare
from launcher.display import Report
from launcher.fetch import RunNotFoundError
from launcher.remote import Limits, RemoteDataError
from launcher.store import LocalRunStore, RunStore, S3RunStore
from launcher.sweep import sweep_record
from tests.conftest import metrics_archive

REGION = "il-central-1"
BUCKET = "saferide-training-results"
LAUNCHED = "2026-11-29T20:00:00+00:00"


def _job(run_id: str) -> str:
    return f"{run_id.replace('_', '-')}-20261129-200000-ab12"


def _record(run_id: str, attempts: int = 1) -> bytes:
    attempt = {"job_name": _job(run_id), "mode": "local", "launched_at": LAUNCHED}
    return json.dumps({"run_id": run_id, "attempts": [attempt] * attempts}).encode()


def _output_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member = tarfile.TarInfo("train.log")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"log"))
    return buffer.getvalue()


def _completed(run_id: str, overall: dict[str, Any], attempts: int = 1) -> dict[str, bytes]:
    """The keys a finished local run leaves: its record and its job's two archives."""
    output = f"{run_id}/output/{_job(run_id)}/output"
    return {
        f"{run_id}/launch.json": _record(run_id, attempts),
        f"{output}/model.tar.gz": metrics_archive(overall),
        f"{output}/output.tar.gz": _output_archive(),
    }


# Two runs (one completed on its second attempt, one without results), a sweep with a finished and a
# not yet launched child, a folder that is no run id, and the bucket's own checkpoints prefix.
TREE: dict[str, bytes] = {
    **_completed("r1", {"episodes": 15, "collision_rate": 0.1, "success_rate": 0.9}, attempts=2),
    "r2/launch.json": _record("r2"),
    "grid/sweep.json": sweep_record("grid", {"grid-001": {"seed": "0"}, "grid-002": {"seed": "1"}}, "smoke").encode(),
    **_completed("grid-001", {"episodes": 15, "collision_rate": 0.2, "success_rate": 0.8}),
    "not a run/launch.json": b"{}",
    "checkpoints/r1/ckpt_1.zip": b"weights",
}


@pytest.fixture
def stores(moto_session: boto3.Session, tmp_path: Path) -> list[RunStore]:
    """The same tree of runs in the bucket and in a runs folder."""
    s3 = moto_session.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    for key, body in TREE.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        (tmp_path / "runs" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "runs" / key).write_bytes(body)
    return [S3RunStore(s3, BUCKET, Limits()), LocalRunStore(tmp_path / "runs", BUCKET, Limits())]


def _no_sagemaker() -> Any:
    raise AssertionError("local runs and sweeps need no SageMaker")


def _rows(report: Report) -> list[tuple[str, ...]]:
    return [tuple(str(cell) for cell in row) for row in report.rows]


def test_list_shows_the_same_runs(stores: list[RunStore]) -> None:
    s3_report, local_report = (runs.list_runs(store) for store in stores)
    assert (s3_report.title, local_report.title) == (f"runs in s3://{BUCKET}", f"runs in {stores[1].where}")
    rows = {row[0]: row[1:] for row in _rows(s3_report)}
    assert _rows(local_report) == _rows(s3_report)
    assert rows["r1"] == (_job("r1"), "local", LAUNCHED, "2") and rows["r2"][3] == "1"
    assert rows["grid"][0] == "(sweep: compare grid)" and rows["not a run"][0].startswith(
        "(ignored: run id 'not a run'"
    )
    assert "checkpoints" not in rows  # the bucket's own prefix, never a run


def test_list_is_bounded_alike(stores: list[RunStore]) -> None:
    for store in stores:
        store.limits = Limits(listed_runs=2)
    reports = [runs.list_runs(store) for store in stores]
    assert _rows(reports[0]) == _rows(reports[1]) and len(reports[0].rows) == 2
    assert all("only the first 2 runs are shown" in report.warning for report in reports)


def test_status_of_a_local_run_is_read_from_its_results(stores: list[RunStore]) -> None:
    for run_id, status in (("r1", "Completed"), ("r2", "Failed")):
        s3_rows, local_rows = (_rows(runs.status(store, _no_sagemaker, run_id)) for store in stores)
        assert s3_rows == local_rows and s3_rows[0][:2] == (_job(run_id), status)
    for store in stores:
        with pytest.raises(RunNotFoundError, match=f"run 'r3' has no launch record in {store.where}"):
            runs.status(store, _no_sagemaker, "r3")


def test_fetch_extracts_the_same_results(stores: list[RunStore], tmp_path: Path) -> None:
    for index, store in enumerate(stores):
        dest = tmp_path / f"fetched{index}"
        assert runs.fetch(store, _no_sagemaker, "r1", dest, None) == f"results in {dest / 'model'}"
        assert json.loads((dest / "model" / "metrics.json").read_text())["overall"]["collision_rate"] == 0.1
        assert (dest / "output-data" / "train.log").read_text() == "log"
        key = f"r2/output/{_job('r2')}/output/model.tar.gz"
        with pytest.raises(RunNotFoundError, match=f"job {_job('r2')} has no results at {store.source(key)}"):
            runs.fetch(store, _no_sagemaker, "r2", tmp_path / "none", None)
        assert not (tmp_path / "none").exists()


def test_compare_reads_the_same_sweep(stores: list[RunStore]) -> None:
    s3_report, local_report = (compare(store, _no_sagemaker, "grid") for store in stores)
    assert _rows(s3_report) == _rows(local_report)
    rows = {row[0]: row[1:] for row in _rows(s3_report)}
    assert rows["grid-001"][0] == "seed=0" and rows["grid-001"][1].startswith("20.0% (")
    assert rows["grid-002"] == ("seed=1", "", "")  # not launched yet: no results
    for store in stores:
        with pytest.raises(RunNotFoundError, match=f"'r1' is neither a sweep nor a tuning job: .* in {store.where}"):
            compare(store, _no_sagemaker, "r1")


def test_a_record_over_the_limit_is_refused_alike(stores: list[RunStore]) -> None:
    for store in stores:
        store.limits = Limits(json_bytes=10)
        with pytest.raises(RemoteDataError, match=f"{store.source('r1/launch.json')} is larger than 10 bytes"):
            runs.status(store, _no_sagemaker, "r1")


def test_a_local_record_that_is_a_link_or_grows_past_its_bound_is_refused(tmp_path: Path) -> None:
    """A runs folder is read like the bucket: a link could point out of it, and a size checked before
    the read says nothing of the bytes read after it."""
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(_record("r1"))
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "launch.json").symlink_to(outside)
    store = LocalRunStore(tmp_path / "runs", BUCKET, Limits())
    with pytest.raises(RemoteDataError, match="symbolic link"):
        runs.latest_attempt(store, "r1")
    assert runs.list_runs(store).rows[0][1].startswith("(ignored: ")

    (tmp_path / "runs" / "r1" / "launch.json").unlink()
    (tmp_path / "runs" / "r1" / "launch.json").write_bytes(_record("r1"))
    small = LocalRunStore(tmp_path / "runs", BUCKET, Limits(json_bytes=10))
    with pytest.raises(RemoteDataError, match="larger than 10 bytes"):
        runs.latest_attempt(small, "r1")
