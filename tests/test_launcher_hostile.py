"""The launcher against a hostile shared bucket (issue 11): crafted run ids and job names,
archive bombs, links, truncated and non-tar archives, oversized or malformed records and
metrics, huge listings. Every refusal is one line on stderr, exit code 2, and nothing is
written outside the destination or left half-written.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from typer.testing import CliRunner, Result

from launcher import display
from launcher.cli import app
from launcher.compare import read_metrics
from launcher.fetch import PARTIAL_SUFFIX, ArchiveError, safe_extract, staged
from launcher.layout import RunIdError, RunLayout, job_name, validate_run_id
from launcher.remote import Limits, RemoteDataError, read_object

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "il-central-1"
BUCKET = "saferide-training-results"  # the launcher's default bucket
JOB = "r1-20250101-120000-ab12"


# --- helpers -----------------------------------------------------------------------------------


def _targz(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A real .tar.gz of ``members`` (data is used for regular files only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, b""


def _metrics_archive(path: Path, metrics: object) -> Path:
    return _targz(path, [_file("metrics.json", json.dumps(metrics).encode()), _file("model.zip", b"weights")])


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _no_partial(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(PARTIAL_SUFFIX)]


def _refused(result: Result, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr holding every fragment, and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def _config(tmp_path: Path, **settings: int) -> list[str]:
    """``--config FILE`` setting the given launch settings (the limits)."""
    path = tmp_path / "limits.toml"
    path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
    return ["--config", str(path)]


def _record(job: str = JOB, mode: str = "sagemaker", run_id: str = "r1") -> bytes:
    return json.dumps(
        {"run_id": run_id, "attempts": [{"job_name": job, "mode": mode, "launched_at": "2025-01-01T12:00:00+00:00"}]}
    ).encode()


@pytest.fixture
def bucket(moto_session: boto3.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An S3 client on the default bucket (in-process moto); the CLI runs in an empty folder."""
    monkeypatch.chdir(tmp_path)
    s3 = moto_session.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return s3


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


# --- run ids and job names -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["r1\n", "r1\r\n", "../x", "../x y", "a/b", "r1 ", "x" * 41, "", "r1\x00"])
def test_run_ids_are_checked_with_fullmatch(bad: str) -> None:
    with pytest.raises(RunIdError, match="run id"):
        validate_run_id(bad)
    with pytest.raises(RunIdError):
        RunLayout(BUCKET, bad)  # no key can be built from it


@pytest.mark.parametrize("bad", ["../../etc", "job\n", "job_1", "-job", "a" * 64])
def test_job_names_that_become_keys_are_checked(bad: str) -> None:
    with pytest.raises(RunIdError, match="job name"):
        RunLayout(BUCKET, "r1").model_key(bad)
    assert job_name("a" * 40).startswith("a" * 40)  # the longest run id still makes a legal name


@pytest.mark.parametrize(
    "command",
    [
        ["upload", "{id}", "--dataset", "ds"],
        ["status", "{id}"],
        ["logs", "{id}"],
        ["stop", "{id}"],
        ["fetch", "{id}"],
        ["sweep", "{id}", "--seeds", "0"],
        ["compare", "{id}"],
        [
            "--run-id",
            "{id}",
            "--dry-run",
            "--json",
            "--image-uri",
            "example.org/i:1",
            "--role-arn",
            "arn:aws:iam::123456789012:role/r",
        ],
    ],
)
@pytest.mark.parametrize("bad", ["../x y", "r1\n"])
def test_every_command_refuses_a_bad_run_id_before_touching_aws(bucket, command: list[str], bad: str) -> None:
    result = _invoke(*(bad if part == "{id}" else part for part in command))
    _refused(result, "run id", "letters, digits")
    # `upload '../x y'` once uploaded to s3://bucket/../x y/.
    assert bucket.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


# --- fetch: crafted records ---------------------------------------------------------------------


def test_fetch_refuses_a_job_name_that_walks_out_of_the_destination(bucket, tmp_path: Path) -> None:
    evil = "../../../escape"
    bucket.put_object(Bucket=BUCKET, Key="r1/launch.json", Body=_record(evil))
    archive = _metrics_archive(tmp_path / "src" / "model.tar.gz", {"overall": {}})
    bucket.put_object(Bucket=BUCKET, Key=f"r1/output/{evil}/output/model.tar.gz", Body=archive.read_bytes())
    before = _tree(tmp_path)
    result = _invoke("fetch", "r1", "--to", str(tmp_path / "a" / "b" / "fetched"))
    _refused(result, "launch.json", "attempts.0.job_name", "job name")
    assert _tree(tmp_path) == before  # not even the destination was created


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "(document): Invalid JSON"),
        (b"[]", "(document)"),
        (json.dumps({"run_id": "r1", "attempts": []}).encode(), "attempts"),
        (json.dumps({"run_id": "r1", "attempts": "x"}).encode(), "attempts"),
        (
            json.dumps({"run_id": "r1", "attempts": [{"job_name": 7, "mode": "local", "launched_at": "t"}]}).encode(),
            "attempts.0.job_name",
        ),
        (_record(JOB + "\n"), "attempts.0.job_name"),
        (_record(mode="docker"), "attempts.0.mode"),
        (_record(run_id="../r1"), "run_id"),
        (b" " * (1024 * 1024 + 1), "larger than 1048576 bytes"),
    ],
)
def test_fetch_refuses_a_malformed_or_oversized_launch_record(bucket, tmp_path: Path, body: bytes, field: str) -> None:
    bucket.put_object(Bucket=BUCKET, Key="r1/launch.json", Body=body)
    before = _tree(tmp_path)
    _refused(_invoke("fetch", "r1", "--to", str(tmp_path / "fetched")), "r1/launch.json", field)
    assert _tree(tmp_path) == before


def test_local_fetch_checks_the_local_record_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "launch.json").write_bytes(_record("../../x"))
    result = _invoke("--local", "--runs-dir", str(tmp_path / "runs"), "fetch", "r1", "--to", str(tmp_path / "out"))
    _refused(result, "attempts.0.job_name")
    assert not (tmp_path / "out").exists()


# --- fetch: archives ----------------------------------------------------------------------------


def _publish(
    bucket: S3Client, tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]] | None = None, raw: bytes | None = None
) -> None:
    """A run r1 whose latest job's model.tar.gz holds ``members`` (or is ``raw`` bytes)."""
    bucket.put_object(Bucket=BUCKET, Key="r1/launch.json", Body=_record())
    data = raw if raw is not None else _targz(tmp_path / "src" / "model.tar.gz", members or []).read_bytes()
    bucket.put_object(Bucket=BUCKET, Key=f"r1/output/{JOB}/output/model.tar.gz", Body=data)


def test_fetch_extracts_a_normal_archive_and_replaces_a_previous_fetch(bucket, tmp_path: Path) -> None:
    _publish(
        bucket,
        tmp_path,
        [_file("metrics.json", b"{}"), _special("tb", tarfile.DIRTYPE), _file("tb/events.out.tfevents.1.host", b"e")],
    )
    dest = tmp_path / "fetched"
    (dest / "model").mkdir(parents=True)
    (dest / "model" / "stale.txt").write_text("from an older fetch")
    result = _invoke("fetch", "r1", "--to", str(dest))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (dest / "model").iterdir()) == ["metrics.json", "tb"]
    assert (dest / "output" / JOB / "output" / "model.tar.gz").is_file()
    assert _no_partial(tmp_path)


def test_fetch_into_a_file_is_refused_and_the_file_kept(bucket, tmp_path: Path) -> None:
    _publish(bucket, tmp_path, [_file("metrics.json", b"{}")])
    (tmp_path / "taken").write_text("mine")
    _refused(_invoke("fetch", "r1", "--to", str(tmp_path / "taken")), "is not a folder", "--to")
    assert (tmp_path / "taken").read_text() == "mine" and _no_partial(tmp_path)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            [_file("ok.txt"), _special("l1", tarfile.SYMTYPE, "l2"), _special("l2", tarfile.SYMTYPE, "ok.txt")],
            "'l1': symlink",
        ),
        ([_file("ok.txt"), _special("hard", tarfile.LNKTYPE, "ok.txt")], "hard link"),
        ([_file("ok.txt"), _special("fifo", tarfile.FIFOTYPE)], "device or FIFO"),
        ([_file("ok.txt"), _special("dev", tarfile.CHRTYPE)], "device or FIFO"),
        ([_file("ok.txt"), _file("../escape.txt")], "'..' in the path"),
        ([_file("ok.txt"), _file("sub/../../escape.txt")], "'..' in the path"),
        ([_file("ok.txt"), _file("/tmp/abs.txt")], "absolute path"),
        ([_file("ok.txt"), _file("bad\nname")], "name part"),
        ([_file("ok.txt"), _file("..\\escape.txt")], "name part"),
        ([_file("a"), _file("a/b")], "cannot extract member 'a/b'"),
    ],
)
def test_fetch_refuses_unsafe_members_and_writes_nothing(bucket, tmp_path: Path, members, message: str) -> None:
    _publish(bucket, tmp_path, members)
    dest = tmp_path / "fetched"
    _refused(_invoke("fetch", "r1", "--to", str(dest)), "model.tar.gz", message)
    assert not dest.exists()  # ok.txt, extracted first, was never moved into place
    assert not (tmp_path / "escape.txt").exists() and _no_partial(tmp_path)


def _truncated(tmp_path: Path, cut: int) -> bytes:
    data = _targz(tmp_path / "whole.tar.gz", [_file("model.zip", os.urandom(200_000))]).read_bytes()
    return data[:cut]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: b"this is not an archive", "not a gzip-compressed tar archive"),
        (lambda tmp: gzip.compress(b"plain text, not a tar" * 100), "does not hold a valid tar archive"),
        (lambda tmp: _truncated(tmp, 100_000), "truncated"),
        (lambda tmp: _truncated(tmp, -4), "truncated"),  # only the gzip trailer's length is missing
        (lambda tmp: b"", "(empty file)"),
    ],
)
def test_fetch_refuses_non_tar_and_truncated_archives(bucket, tmp_path: Path, make, message: str) -> None:
    _publish(bucket, tmp_path, raw=make(tmp_path))
    dest = tmp_path / "fetched"
    (dest / "model").mkdir(parents=True)
    (dest / "model" / "previous.txt").write_text("kept")
    _refused(_invoke("fetch", "r1", "--to", str(dest)), f"s3://{BUCKET}/r1/output/{JOB}/output/model.tar.gz: ", message)
    assert _tree(dest) == ["model", "model/previous.txt"] and _no_partial(tmp_path)


def test_fetch_bounds_extracted_bytes_members_and_downloads(bucket, tmp_path: Path) -> None:
    dest = tmp_path / "fetched"
    bomb = [_file("zeros.bin", b"\0" * 5_000_000)]  # ~5 KB compressed
    _publish(bucket, tmp_path, bomb)
    _refused(
        _invoke(*_config(tmp_path, max_extract_bytes=1_000_000), "fetch", "r1", "--to", str(dest)),
        "more than 1000000 bytes",
        "max_extract_bytes",
    )
    spread = [_file(f"part{i}.bin", b"\0" * 300_000) for i in range(5)]  # each part under the limit, the sum over it
    _publish(bucket, tmp_path, spread)
    _refused(
        _invoke(*_config(tmp_path, max_extract_bytes=1_000_000), "fetch", "r1", "--to", str(dest)), "max_extract_bytes"
    )
    _publish(bucket, tmp_path, [_file(f"f{i}") for i in range(11)])
    _refused(
        _invoke(*_config(tmp_path, max_archive_members=10), "fetch", "r1", "--to", str(dest)),
        "more than 10 members",
        "max_archive_members",
    )
    _publish(bucket, tmp_path, raw=os.urandom(5000))
    _refused(
        _invoke(*_config(tmp_path, max_download_bytes=1000), "fetch", "r1", "--to", str(dest)),
        "larger than 1000 bytes",
        "max_download_bytes",
    )
    assert not dest.exists() and _no_partial(tmp_path)


def test_a_failed_move_into_place_undoes_the_earlier_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in ("a", "b"):
        (dest / name).write_text(f"old {name}")
    rename = Path.rename

    def failing_rename(self: Path, target: Path) -> Path:
        if self.name == "b" and self.parent.name == "new":  # the second entry cannot be moved in
            raise OSError("simulated: no space left")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
        with staged(dest) as stage:
            for name in ("a", "b"):
                (stage / name).write_text(f"new {name}")
    assert [(dest / n).read_text() for n in ("a", "b")] == ["old a", "old b"] and _no_partial(tmp_path)


def test_default_limits_refuse_20k_members(tmp_path: Path) -> None:
    archive = _targz(tmp_path / "many.tar.gz", [_file(f"f{i}", b"") for i in range(20_000)])
    with pytest.raises(ArchiveError, match="more than 10000 members"):
        safe_extract(archive, tmp_path / "out", Limits())
    assert not (tmp_path / "out").exists() and _no_partial(tmp_path)


def test_default_limits_refuse_a_member_claiming_a_gigabyte(tmp_path: Path) -> None:
    """A header that claims 1 GiB is refused before a byte of it is read (a 1 GiB bomb was accepted)."""
    info = tarfile.TarInfo("huge.bin")
    info.size = 1024**3
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.addfile(info)  # header only: the data never follows
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip.compress(raw.getvalue()))
    with pytest.raises(ArchiveError, match="max_extract_bytes"):
        safe_extract(archive, tmp_path / "out", Limits())
    assert not (tmp_path / "out").exists()


def test_a_huge_pax_header_is_bounded_by_the_decompressed_stream(tmp_path: Path) -> None:
    """tarfile reads a pax header into memory whole: the stream bound stops it, not the member sizes."""
    info = tarfile.TarInfo("small.txt")
    info.pax_headers = {"comment": "x" * 3_000_000}
    archive = tmp_path / "pax.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArchiveError, match="once decompressed"):
        safe_extract(archive, tmp_path / "out", Limits(extract_bytes=1_000_000, members=10))


def test_download_size_is_checked_before_the_body_and_while_it_streams() -> None:
    s3 = boto3.client("s3", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(s3) as stub:
        # No get_object response is queued: asking for the body would fail the test.
        stub.add_response("head_object", {"ContentLength": 10**12, "ETag": '"e"'}, {"Bucket": "b", "Key": "k"})
        with pytest.raises(RemoteDataError, match="larger than 100 bytes"):
            read_object(s3, "b", "k", 100, "max_json_bytes")
        # A server that announces 10 bytes and sends 200.
        stub.add_response("head_object", {"ContentLength": 10, "ETag": '"e"'}, {"Bucket": "b", "Key": "k"})
        stub.add_response(
            "get_object",
            {"Body": StreamingBody(io.BytesIO(b"x" * 200), 200)},
            {"Bucket": "b", "Key": "k", "IfMatch": '"e"'},
        )
        with pytest.raises(RemoteDataError, match="larger than 100 bytes"):
            read_object(s3, "b", "k", 100, "max_json_bytes")
        stub.assert_no_pending_responses()


# --- compare: sweep records and metrics ---------------------------------------------------------


def _local_sweep(runs: Path, metrics: object | bytes, sweep: object | None = None) -> None:
    """A local sweep ``grid`` with one finished child whose metrics.json is ``metrics``."""
    (runs / "grid").mkdir(parents=True)
    (runs / "grid" / "sweep.json").write_text(
        json.dumps(sweep or {"parent_run_id": "grid", "preset": "smoke", "children": {"grid-001": {"seed": "0"}}})
    )
    job = "grid-001-20250101-120000-ab12"
    (runs / "grid-001").mkdir()
    (runs / "grid-001" / "launch.json").write_bytes(_record(job, "local", "grid-001"))
    body = metrics if isinstance(metrics, bytes) else json.dumps(metrics).encode()
    _targz(runs / "grid-001" / "output" / job / "output" / "model.tar.gz", [_file("metrics.json", body)])


def _compare(runs: Path) -> Result:
    return _invoke("--local", "--runs-dir", str(runs), "compare", "grid")


def test_compare_shows_valid_metrics(tmp_path: Path) -> None:
    _local_sweep(
        tmp_path / "runs", {"overall": {"collision_rate": 0.25, "success_rate": 1, "episodes": 15, "policy": "model"}}
    )
    result = _compare(tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "25.0% (" in result.output and "seed=0" in result.output


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        ({"overall": {"collision_rate": "high"}}, "overall.collision_rate"),
        ({"overall": {"success_rate": True}}, "overall.success_rate"),
        (b'{"overall": {"collision_rate": NaN}}', "overall.collision_rate"),
        ({"overall": [0.1, 0.2]}, "overall"),
        ([1, 2], "(document)"),
        (b"{broken", "(document): Invalid JSON"),
    ],
)
def test_compare_refuses_metrics_of_the_wrong_shape(tmp_path: Path, metrics: object, field: str) -> None:
    _local_sweep(tmp_path / "runs", metrics)
    _refused(_compare(tmp_path / "runs"), "metrics.json", field)


def test_metrics_json_and_its_archive_are_bounded(tmp_path: Path) -> None:
    archive = _targz(tmp_path / "model.tar.gz", [_file("metrics.json", b" " * 2_000_000 + b"{}")])
    with pytest.raises(ArchiveError, match="metrics.json is larger than 1048576 bytes"):
        read_metrics(archive, Limits())
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(ArchiveError, match="not a gzip-compressed tar archive"):
        read_metrics(tmp_path / "junk.tar.gz", Limits())


@pytest.mark.parametrize(
    ("sweep", "field"),
    [
        ({"parent_run_id": "grid", "preset": "smoke", "children": {"../x": {}}}, "children"),
        (
            {"parent_run_id": "grid", "preset": "smoke", "children": {"someone-else-001": {}}},
            "is not a child of 'grid'",
        ),
        ({"parent_run_id": "grid", "preset": "smoke", "children": ["grid-001"]}, "children"),
        ({"parent_run_id": "grid", "preset": "smoke", "children": {"grid-001": {"seed": 0}}}, "children.grid-001.seed"),
        (
            {"parent_run_id": "grid", "preset": "smoke", "children": {f"grid-{i:04d}": {} for i in range(1000)}},
            "children",
        ),
    ],
)
def test_compare_refuses_a_crafted_sweep_record(tmp_path: Path, sweep: object, field: str) -> None:
    _local_sweep(tmp_path / "runs", {"overall": {}}, sweep)
    _refused(_compare(tmp_path / "runs"), "sweep.json", field)


def test_compare_from_s3_bounds_what_it_downloads(bucket, tmp_path: Path) -> None:
    bucket.put_object(Bucket=BUCKET, Key="grid/sweep.json", Body=b" " * 2000 + b"{}")
    _refused(
        _invoke(*_config(tmp_path, max_json_bytes=1000), "compare", "grid"),
        f"s3://{BUCKET}/grid/sweep.json",
        "larger than 1000 bytes",
    )


# --- list: a bucket others write to ---------------------------------------------------------------


def test_list_shows_junk_prefixes_without_reading_them(bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(display.console, "width", 400)  # one table row per line
    bucket.put_object(Bucket=BUCKET, Key="../evil/launch.json", Body=_record())
    bucket.put_object(Bucket=BUCKET, Key="[red]r2\x1b[31m/launch.json", Body=_record())
    bucket.put_object(Bucket=BUCKET, Key="r1/launch.json", Body=b"{not json")
    bucket.put_object(Bucket=BUCKET, Key="r3/launch.json", Body=_record("r3-20250101-120000-ab12", run_id="r3"))
    result = _invoke("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("r3-20250101-120000-ab12" in line for line in lines)
    assert sum("(ignored:" in line for line in lines) == 3  # '..', the markup/escape name and r1's broken record
    assert "\x1b" not in result.stdout and "[red]r2" in result.stdout  # shown as text: no markup, no terminal escapes


def test_list_reads_a_bounded_number_of_runs(bucket, tmp_path: Path) -> None:
    for index in range(5):
        bucket.put_object(
            Bucket=BUCKET,
            Key=f"run{index}/launch.json",
            Body=_record(f"run{index}-20250101-120000-ab12", run_id=f"run{index}"),
        )
    result = _invoke(*_config(tmp_path, max_listed_runs=2), "list")
    assert result.exit_code == 0, result.output
    assert sum("run" in line and "-20250101-" in line for line in result.stdout.splitlines()) == 2
    assert "only the first 2 runs are shown" in result.stderr and "max_listed_runs" in result.stderr


def test_error_lines_stay_one_line_whatever_the_message_holds(capsys: pytest.CaptureFixture[str]) -> None:
    display.error_line("error: job 'a\nb' said \x1b[2J[bold]hi[/]")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b[2J" not in err and "\\x1b" in err and "[bold]hi[/]" in err
