"""The launcher against moto (in-process) and botocore's Stubber for what moto does not do (CodeBuild, job states)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from typer.testing import CliRunner

from launcher import aws, display, jobs, stack, sweep
from launcher.cli import app
from launcher.fetch import ArchiveError, RunNotFoundError, fetch_job, safe_extract
from launcher.launch import LaunchOptions, launch
from launcher.layout import RunLayout
from launcher.remote import Limits, RemoteDataError
from launcher.settings import LaunchSettings, load_settings
from launcher.store import S3RunStore
from launcher.upload import upload_dataset, upload_tree
from roadsense.evaluation.stats import wilson_interval
from roadsense.scenarios.dataset import DatasetError
from tests.conftest import metrics_archive, push_test_image, tag_test_image_latest

REGION = "il-central-1"
BUCKET = "saferide-training-results"


@pytest.fixture
def moto_env(moto_session: boto3.Session):
    session = moto_session
    session.client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    role = session.client("iam").create_role(RoleName="roadsense-sagemaker", AssumeRolePolicyDocument="{}")["Role"][
        "Arn"
    ]
    return session, role


def _settings(role: str, **changes: object) -> LaunchSettings:
    image = "123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training:abc"
    return LaunchSettings(**{"role_arn": role, "image_uri": image, **changes})


def _dataset(folder: Path) -> Path:
    folder.mkdir()
    (folder / "train.xml").write_text("<routes/>")
    digest = hashlib.sha256(b"<routes/>").hexdigest()
    (folder / "manifest.json").write_text(json.dumps({"files": {"train.xml": digest}}))
    return folder


def test_preflight_errors_are_one_line_with_a_fix(moto_env) -> None:
    session, role = moto_env
    with pytest.raises(aws.LaunchError, match="does not exist. Fix: deploy the infrastructure"):
        aws.preflight(session, _settings(role, bucket="no-such-bucket"), check_image=False)
    with pytest.raises(aws.LaunchError, match="role .* does not exist"):
        aws.preflight(session, _settings("arn:aws:iam::123456789012:role/missing"), check_image=False)
    with pytest.raises(aws.LaunchError, match="not in ECR"):
        aws.preflight(session, _settings(role), check_image=True)
    push_test_image(session)
    assert aws.preflight(session, _settings(role), check_image=True).role_arn == role


def test_bucket_in_another_region_is_named(moto_env) -> None:
    session, role = moto_env
    with pytest.raises(aws.LaunchError, match=f"bucket .* is in {REGION}"):
        aws.preflight(boto3.Session(region_name="eu-west-1"), _settings(role, region="eu-west-1"), check_image=False)


def test_no_credentials_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.exceptions

    assert "no AWS credentials found. Fix: aws configure" in str(
        aws.translate(botocore.exceptions.NoCredentialsError())
    )
    not_found = botocore.exceptions.ClientError(
        {"Error": {"Code": "ValidationException", "Message": "Could not find job 'j'."}}, "DescribeTrainingJob"
    )
    assert str(aws.translate(not_found)).startswith("AWS rejected the request: Could not find job 'j'. Fix:")


def test_launch_creates_job_and_record_and_refuses_a_duplicate(moto_env, tmp_path: Path) -> None:
    session, role = moto_env
    push_test_image(session)
    settings = _settings(role)
    options = LaunchOptions(run_id="cloud_prod_001", preset="smoke")
    first = launch(options, settings)
    described = session.client("sagemaker").describe_training_job(TrainingJobName=first.job_name)
    assert described["ResourceConfig"]["InstanceType"] == "ml.c6i.xlarge"
    assert described["HyperParameters"]["preset"] == "smoke"
    s3 = session.client("s3")
    record = json.loads(s3.get_object(Bucket=BUCKET, Key="cloud_prod_001/launch.json")["Body"].read())
    assert record["attempts"][0]["job_name"] == first.job_name
    assert record["attempts"][0]["request"]["RoleArn"] == role

    with pytest.raises(aws.LaunchError, match="already holds a run"):
        launch(options, settings)
    s3.put_object(Bucket=BUCKET, Key="checkpoints/cloud_prod_001/ckpt_1.zip", Body=b"x")
    # Another run, with the same leading characters.
    s3.put_object(Bucket=BUCKET, Key="checkpoints/cloud_prod_0010/ckpt_1.zip", Body=b"x")
    resumed = launch(LaunchOptions(run_id="cloud_prod_001", preset="smoke", resume=True), settings)
    assert resumed.job_name != first.job_name
    # --resume sends the prefix the checkpoints are under, with its slash (not also cloud_prod_0010's).
    assert resumed.request["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/checkpoints/cloud_prod_001/"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/cloud_prod_001/")["KeyCount"] == 1
    launch(LaunchOptions(run_id="cloud_prod_001", preset="smoke", force=True), settings)
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/cloud_prod_001/")["KeyCount"] == 0
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/cloud_prod_0010/")["KeyCount"] == 1
    record = json.loads(s3.get_object(Bucket=BUCKET, Key="cloud_prod_001/launch.json")["Body"].read())
    assert len(record["attempts"]) == 3
    # moto reports the job Completed at once but writes no results: fetch names where it looked.
    with pytest.raises(RunNotFoundError, match=f"no results at s3://{BUCKET}/cloud_prod_001/output/.*/model.tar.gz"):
        fetch_job(S3RunStore(s3, BUCKET, Limits()), "cloud_prod_001", record["attempts"][-1]["job_name"], tmp_path)


def test_force_refuses_a_crafted_checkpoint_key_before_deleting_anything(moto_env) -> None:
    session, role = moto_env
    push_test_image(session)
    s3 = session.client("s3")
    for key in ("checkpoints/r5/ckpt_1.zip", "checkpoints/r5/../../other_run/launch.json"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    with pytest.raises(RemoteDataError, match=r"'\.\.' segment under checkpoints/r5/"):
        launch(LaunchOptions(run_id="r5", preset="smoke", force=True), _settings(role))
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/r5/")["KeyCount"] == 2  # nothing deleted
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="r5/").get("KeyCount") == 0  # no job recorded


def test_checkpoints_alone_make_a_run_id_taken(moto_env) -> None:
    # A new job on the id would silently resume from them: the launch asks for --resume or --force.
    session, role = moto_env
    push_test_image(session)
    session.client("s3").put_object(Bucket=BUCKET, Key="checkpoints/r6/ckpt_1.zip", Body=b"x")
    with pytest.raises(aws.LaunchError, match="already holds a run"):
        launch(LaunchOptions(run_id="r6", preset="smoke"), _settings(role))


def test_latest_is_launched_by_its_digest(moto_env) -> None:
    session, role = moto_env
    push_test_image(session)
    repo = "123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training"
    digest = tag_test_image_latest(session)
    for given in (f"{repo}:latest", repo):
        launched = launch(LaunchOptions(run_id=f"pin{len(given)}", preset="smoke"), _settings(role, image_uri=given))
        sent = session.client("sagemaker").describe_training_job(TrainingJobName=launched.job_name)
        assert sent["AlgorithmSpecification"]["TrainingImage"] == f"{repo}@{digest}"
        assert launched.request["Environment"]["ROADSENSE_IMAGE"] == f"{repo}@{digest}"
    # A commit tag is immutable in the repository: sent as given.
    assert (
        launch(LaunchOptions(run_id="pin_tag", preset="smoke"), _settings(role)).request["AlgorithmSpecification"][
            "TrainingImage"
        ]
        == f"{repo}:abc"
    )
    with pytest.raises(aws.LaunchError, match="mutable tag 'latest' and is not in ECR"):
        launch(
            LaunchOptions(run_id="pin_other", preset="smoke"),
            _settings(role, image_uri="docker.io/library/python:latest"),
        )


def test_upload_skips_unchanged_objects(moto_env, tmp_path: Path) -> None:
    session, _ = moto_env
    folder = _dataset(tmp_path / "ds")
    (folder / "big.bin").write_bytes(b"\0" * (6 * 1024 * 1024))  # multipart above the 5 MiB threshold
    s3 = session.client("s3")
    first = upload_tree(s3, folder, BUCKET, "r1/dataset/", show_progress=False, multipart_threshold=5 * 1024 * 1024)
    assert sorted(first.uploaded) == ["r1/dataset/big.bin", "r1/dataset/manifest.json", "r1/dataset/train.xml"]
    (folder / "train.xml").write_text("<routes></routes>")
    second = upload_tree(s3, folder, BUCKET, "r1/dataset/", show_progress=False, multipart_threshold=5 * 1024 * 1024)
    assert second.uploaded == ["r1/dataset/train.xml"]
    assert sorted(second.skipped) == ["r1/dataset/big.bin", "r1/dataset/manifest.json"]


def test_a_dataset_that_fails_verification_is_refused(tmp_path: Path, moto_env) -> None:
    # The pipeline's own check (roadsense.scenarios.dataset) refuses it, before anything is sent.
    session, role = moto_env
    s3 = session.client("s3")
    with pytest.raises(DatasetError, match="does not verify"):
        # A manifest, but not one roadsense wrote.
        upload_dataset(s3, _dataset(tmp_path / "ds"), RunLayout(BUCKET, "r2"))
    for local in (False, True):
        with pytest.raises(DatasetError):
            launch(
                LaunchOptions(run_id="r2", preset="smoke", dataset=tmp_path / "ds", local=local),
                _settings(role, runs_dir=tmp_path / "runs"),
            )
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="r2/")["KeyCount"] == 0 and not (tmp_path / "runs").exists()


def _tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "link", "reason"),
    [
        ("../escape.txt", tarfile.REGTYPE, "", "'..'"),
        ("/etc/evil", tarfile.REGTYPE, "", "absolute"),
        ("link", tarfile.SYMTYPE, "../../etc/passwd", "symlink"),
        ("hard", tarfile.LNKTYPE, "../outside", "hard link"),
        ("dev", tarfile.CHRTYPE, "", "device"),
    ],
)
def test_fetch_refuses_unsafe_members(tmp_path: Path, name: str, kind: bytes, link: str, reason: str) -> None:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    archive = _tar(tmp_path / "model.tar.gz", member, b"x" if kind == tarfile.REGTYPE else b"")
    with pytest.raises(ArchiveError, match=reason):
        safe_extract(archive, tmp_path / "out", Limits())
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_keeps_normal_members(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "model.tar.gz", tarfile.TarInfo("metrics.json"), b"{}")
    assert safe_extract(archive, tmp_path / "out", Limits()) == ["metrics.json"]
    assert (tmp_path / "out" / "metrics.json").read_text() == "{}"


def _describe(status: str, secondary: str, reason: str = "") -> dict:
    response = {
        "TrainingJobName": "job-1",
        "TrainingJobArn": "arn:aws:sagemaker:il-central-1:123456789012:training-job/job-1",
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "ResourceConfig": {"VolumeSizeInGB": 30},
        "StoppingCondition": {},
        "CreationTime": datetime(2025, 1, 1, tzinfo=timezone.utc),
    }
    if reason:
        response["FailureReason"] = reason
    return response


def _log_page(messages: list[str], token: str) -> dict:
    return {"events": [{"timestamp": 1, "message": m, "ingestionTime": 1} for m in messages], "nextForwardToken": token}


def test_follow_reports_transitions_logs_and_failure_reason() -> None:
    sagemaker = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y")
    logs = boto3.client("logs", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(sagemaker) as sagemaker_stub, Stubber(logs) as logs_stub:
        sagemaker_stub.add_response("describe_training_job", _describe("InProgress", "Starting"))
        logs_stub.add_client_error("describe_log_streams", "ResourceNotFoundException")
        sagemaker_stub.add_response("describe_training_job", _describe("InProgress", "Training"))
        logs_stub.add_response("describe_log_streams", {"logStreams": [{"logStreamName": "job-1/algo-1-1"}]})
        logs_stub.add_response(
            "get_log_events", _log_page(["[train] timesteps=1024 total_timesteps=4096 fps=700"], "t1")
        )
        logs_stub.add_response("get_log_events", _log_page([], "t1"))
        sagemaker_stub.add_response(
            "describe_training_job", _describe("Failed", "Failed", "sim errors: SUMO crashed 20 times")
        )
        logs_stub.add_response("describe_log_streams", {"logStreams": [{"logStreamName": "job-1/algo-1-1"}]})
        logs_stub.add_response("get_log_events", _log_page(["Traceback: boom"], "t2"))
        logs_stub.add_response("get_log_events", _log_page([], "t2"))
        lines, statuses = [], []
        final = jobs.follow_job(
            sagemaker, logs, "job-1", lines.append, lambda s: statuses.append(s.secondary_status), sleep=lambda s: None
        )
        sagemaker_stub.assert_no_pending_responses()
    assert statuses == ["Starting", "Training", "Failed"]
    assert lines == ["[train] timesteps=1024 total_timesteps=4096 fps=700", "Traceback: boom"]
    assert final.status == "Failed" and final.failure_reason == "sim errors: SUMO crashed 20 times"


def test_stop_calls_stop_only_for_a_running_job() -> None:
    sagemaker = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(sagemaker) as stub:
        stub.add_response("describe_training_job", _describe("InProgress", "Training"))
        stub.add_response("stop_training_job", {}, {"TrainingJobName": "job-1"})
        stub.add_response("describe_training_job", _describe("Stopping", "Stopping"))
        assert jobs.stop_job(sagemaker, "job-1").status == "Stopping"
        stub.add_response("describe_training_job", _describe("Completed", "Completed"))
        assert jobs.stop_job(sagemaker, "job-1").status == "Completed"
        stub.assert_no_pending_responses()


def test_quota_error_is_translated() -> None:
    sagemaker = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(sagemaker) as stub:
        stub.add_client_error(
            "create_training_job",
            "ResourceLimitExceeded",
            "account-level service limit 'ml.c6i.xlarge for training job usage' is 0",
        )
        with pytest.raises(Exception) as caught:
            sagemaker.create_training_job(
                TrainingJobName="j",
                RoleArn="arn:aws:iam::123456789012:role/r",
                AlgorithmSpecification={"TrainingInputMode": "File"},
                OutputDataConfig={"S3OutputPath": "s3://b/o"},
                ResourceConfig={"InstanceType": "ml.c6i.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
                StoppingCondition={"MaxRuntimeInSeconds": 60},
            )
    message = str(aws.translate(caught.value))
    assert "quota" in message and "Service Quotas" in message


# --- the infra stack's outputs as defaults ------------------------------------------------

STACK_ROLE = "arn:aws:iam::123456789012:role/roadsense-sagemaker"  # the role moto_env creates


def _deploy_stack(session: boto3.Session, name: str = "roadsense") -> None:
    """A stack with the four outputs the launcher reads (moto's CloudFormation skips CodeBuild
    projects, so the real template would give no project output; test_infra checks that the
    real template has these outputs)."""
    outputs = {
        stack.OUTPUT_BUCKET: {"Ref": "Bucket"},
        stack.OUTPUT_ROLE_ARN: STACK_ROLE,
        stack.OUTPUT_REPOSITORY_URI: "123456789012.dkr.ecr.il-central-1.amazonaws.com/team/stack-repo",
        stack.OUTPUT_PROJECT: "stack-project",
    }
    template = {
        "Resources": {"Bucket": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "stack-bucket"}}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    session.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))


def test_stack_outputs_fill_only_what_no_flag_env_or_file_sets(moto_env, tmp_path: Path) -> None:
    session, _ = moto_env
    # No stack: the built-in defaults.
    assert aws.with_stack_defaults(load_settings(env={}, cwd=tmp_path)) == LaunchSettings()
    _deploy_stack(session)

    from_stack = aws.with_stack_defaults(load_settings(env={}, cwd=tmp_path))
    assert (from_stack.bucket, from_stack.role_arn, from_stack.ecr_repository, from_stack.codebuild_project) == (
        "stack-bucket",
        STACK_ROLE,
        "team/stack-repo",
        "stack-project",
    )
    other_stack = aws.with_stack_defaults(load_settings({"stack_name": "absent"}, env={}, cwd=tmp_path))
    assert other_stack.bucket == "saferide-training-results" and other_stack.role_arn is None
    (tmp_path / "roadsense-launch.toml").write_text('bucket = "file-bucket"\ncodebuild_project = "file-project"\n')
    from_file = aws.with_stack_defaults(load_settings(env={}, cwd=tmp_path))
    assert (from_file.bucket, from_file.codebuild_project, from_file.role_arn) == (
        "file-bucket",
        "file-project",
        STACK_ROLE,
    )
    from_env = aws.with_stack_defaults(load_settings(env={"ROADSENSE_LAUNCH_BUCKET": "env-bucket"}, cwd=tmp_path))
    assert from_env.bucket == "env-bucket"
    from_flag = aws.with_stack_defaults(
        load_settings({"bucket": "flag-bucket"}, env={"ROADSENSE_LAUNCH_BUCKET": "env-bucket"}, cwd=tmp_path)
    )
    assert from_flag.bucket == "flag-bucket"


def test_dry_run_takes_bucket_and_role_from_the_stack(
    moto_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, _ = moto_env
    _deploy_stack(session)
    monkeypatch.chdir(tmp_path)  # no config file
    result = CliRunner().invoke(
        app, ["--run-id", "r1", "--preset", "smoke", "--dry-run", "--json", "--image-uri", "example.org/roadsense:1"]
    )
    assert result.exit_code == 0, result.output
    request = json.loads(result.output)
    assert request["RoleArn"] == STACK_ROLE
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://stack-bucket/r1/output"


# --- build --codebuild --------------------------------------------------------------------


class _StubbedSession:
    """Stands in for the boto3 session: hands out the given (stubbed) clients, and has credentials."""

    def __init__(self, clients: dict[str, object]) -> None:
        self._clients = clients

    def client(self, service: str, **_: object) -> object:
        return self._clients[service]

    def get_credentials(self) -> object:
        return object()


def _stubbed_build(monkeypatch: pytest.MonkeyPatch, final_build: dict) -> CliRunner:
    """``build --codebuild --tag abc123`` against stubs: the stack names the project, CodeBuild ends with
    ``final_build``."""
    keys = {"region_name": REGION, "aws_access_key_id": "x", "aws_secret_access_key": "y"}
    cloudformation, codebuild = boto3.client("cloudformation", **keys), boto3.client("codebuild", **keys)
    cfn_stub, build_stub = Stubber(cloudformation), Stubber(codebuild)
    cfn_stub.add_response(
        "describe_stacks",
        {
            "Stacks": [
                {
                    "StackName": "roadsense",
                    "CreationTime": datetime(2025, 1, 1, tzinfo=timezone.utc),
                    "StackStatus": "CREATE_COMPLETE",
                    "Outputs": [{"OutputKey": stack.OUTPUT_PROJECT, "OutputValue": "stack-project"}],
                }
            ]
        },
        {"StackName": "roadsense"},
    )
    build_stub.add_response(
        "start_build", {"build": {"id": "stack-project:1"}}, {"projectName": "stack-project", "sourceVersion": "abc123"}
    )
    build_stub.add_response(
        "batch_get_builds", {"builds": [{"id": "stack-project:1", **final_build}]}, {"ids": ["stack-project:1"]}
    )
    monkeypatch.setattr(
        aws,
        "make_session",
        lambda settings: _StubbedSession({"cloudformation": cloudformation, "codebuild": codebuild}),
    )
    with cfn_stub, build_stub:
        result = CliRunner().invoke(app, ["build", "--codebuild", "--tag", "abc123"])
        cfn_stub.assert_no_pending_responses()
        build_stub.assert_no_pending_responses()
    return result


def test_build_codebuild_starts_the_stack_project_and_prints_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training:abc123"
    result = _stubbed_build(
        monkeypatch,
        {
            "currentPhase": "COMPLETED",
            "buildStatus": "SUCCEEDED",
            "exportedEnvironmentVariables": [{"name": "IMAGE_URI", "value": uri}],
        },
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == uri


def test_build_codebuild_failure_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _stubbed_build(
        monkeypatch,
        {
            "currentPhase": "COMPLETED",
            "buildStatus": "FAILED",
            "phases": [
                {
                    "phaseType": "BUILD",
                    "phaseStatus": "FAILED",
                    "contexts": [{"statusCode": "COMMAND_EXECUTION_ERROR", "message": "docker build exit 1"}],
                }
            ],
            "logs": {"deepLink": "https://console.example/log"},
        },
    )
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert "FAILED in BUILD (docker build exit 1)" in result.stderr and "https://console.example/log" in result.stderr


def _compare_rows(output: str) -> dict[str, list[str]]:
    """compare's table as run id (or "run id" for the header) -> its cells (run id, settings, metrics...)."""
    # rich draws the header's column borders with a heavier line than the body's.
    rows = (
        [cell.strip() for cell in re.split("[│┃]", line)[1:-1]]
        for line in output.splitlines()
        if re.search("[│┃]", line)
    )
    return {cells[0]: cells for cells in rows if cells and cells[0]}


def test_compare_shows_intervals_and_marks_runs_that_differ_beyond_the_noise(
    moto_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, _ = moto_env
    monkeypatch.setattr(display.console, "width", 250)  # room for every column
    # compare needs no infra stack; asking moto for one that is not there costs seconds.
    monkeypatch.setattr(aws, "with_stack_defaults", lambda settings: settings)
    runs = {
        # Written with the intervals: 0 of 300 collisions, 294 of 300 behavioural successes (the best of both).
        "lr-001": {
            "episodes": 300,
            "collision_rate": 0.0,
            "collision_rate_ci95": list(wilson_interval(0.0, 300)),
            "behavioral_success_rate": 0.98,
            "behavioral_success_rate_ci95": list(wilson_interval(0.98, 300)),
            "mean_reaction_time_s": 1.234,
        },
        # Older metrics.json files without _ci95 keys: the intervals come from the rate and the episodes.
        "lr-002": {
            "episodes": 300,
            "collision_rate": 5 / 300,
            "behavioral_success_rate": 0.97,
            "mean_reaction_time_s": 1.5,
        },
        "lr-003": {
            "episodes": 300,
            "collision_rate": 1 / 300,
            "behavioral_success_rate": 0.90,
            "mean_reaction_time_s": 1.1,
        },
        "lr-004": None,  # still running: no results yet
        "lr-005": {"collision_rate": 0.02},  # no episode count: the rate alone, never marked
    }
    children = {child: {"learning_rate": str(i)} for i, child in enumerate(runs)}
    files = {"lr/sweep.json": sweep.sweep_record("lr", children, "smoke").encode()}
    for child, overall in runs.items():
        if overall is not None:
            attempt = {"job_name": f"{child}-job", "mode": "local", "launched_at": "2026-11-29T20:00:00+00:00"}
            files[f"{child}/launch.json"] = json.dumps({"run_id": child, "attempts": [attempt]}).encode()
            files[f"{child}/output/{child}-job/output/model.tar.gz"] = metrics_archive(overall)
    s3 = session.client("s3")
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(body)

    for local in ([], ["--local"]):  # from S3, and from a runs dir laid out like the bucket
        result = CliRunner().invoke(app, [*local, "--runs-dir", str(tmp_path), "compare", "lr"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        rows = _compare_rows(result.output)
        assert rows["run id"][2:] == ["collision_rate", "behavioral_success_rate", "mean_reaction_time_s"]
        assert rows["lr-001"][2:] == ["0.0% (0.0-1.3)", "98.0% (95.7-99.1)", "1.234"]
        # 5 of 300 collisions against 0 of 300 is beyond the noise; 97 % against 98 % success is not.
        assert rows["lr-002"][2:] == ["1.7% (0.7-3.8) *", "97.0% (94.4-98.4)", "1.5"]
        assert rows["lr-003"][2:] == ["0.3% (0.1-1.9)", "90.0% (86.1-92.9) *", "1.1"]
        assert rows["lr-004"][2:] == ["", "", ""]
        assert rows["lr-005"][2:] == ["2.0%", "", ""]
        assert "* differs from the best run in its column" in " ".join(result.output.split())
