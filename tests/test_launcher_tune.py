"""Tuning jobs: ranges checked against the config, the request built from the launcher's own, and
status/compare/fetch over the children.

moto 5.2 creates and describes tuning jobs (it echoes the config and the training job definition,
and botocore checks the request's shape on the way), so creation runs against moto. It does not
implement ListTrainingJobsForHyperParameterTuningJob and invents its BestTrainingJob, so the
children are given with botocore's Stubber on the SageMaker client, while S3 stays moto.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from typer.testing import CliRunner

from launcher import aws, display
from launcher.cli import app
from launcher.launch import LaunchOptions, plan
from launcher.settings import LaunchSettings
from launcher.tune import (
    OBJECTIVES,
    ParamRange,
    TuningOptions,
    parse_range,
    ranges_from_file,
    tuning_job_name,
    tuning_request,
)
from roadsense.config import ConfigError
from roadsense.metric_lines import METRIC_DEFINITIONS
from tests.conftest import metrics_archive, push_test_image, tag_test_image_latest

REGION = "il-central-1"
BUCKET = "saferide-training-results"
REPO = "123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training"
IMAGE = f"{REPO}:abc"
ROLE = "arn:aws:iam::123456789012:role/roadsense-sagemaker"
LR = ParamRange("learning_rate", 1e-5, 1e-3, integer=False, log=True)
EPOCHS = ParamRange("n_epochs", 3, 12, integer=True, log=False)


def _training(**changes: Any) -> dict[str, Any]:
    request, _ = plan(
        LaunchOptions(run_id="tune_1", preset="smoke", **changes), LaunchSettings(), ROLE, IMAGE, "abc123"
    )
    return request


# --- ranges -----------------------------------------------------------------------------------------


def test_the_range_type_comes_from_the_config_field() -> None:
    assert parse_range("learning_rate=1e-5:1e-3:log", "smoke", {}) == LR
    assert parse_range("n_epochs=3:12", "smoke", {}) == EPOCHS
    assert EPOCHS.to_api() == {"Name": "n_epochs", "MinValue": "3", "MaxValue": "12", "ScalingType": "Linear"}
    assert LR.to_api()["ScalingType"] == "Logarithmic" and float(LR.to_api()["MinValue"]) == 1e-5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "learnin_rate=1e-5:1e-3",
            "--range 'learnin_rate=1e-5:1e-3': unknown config key 'learnin_rate'; did you mean 'learning_rate'",
        ),
        ("backend=1:2", "backend is not a number setting"),
        ("hazard_window=1:2", "hazard_window is not a number setting"),  # a pair is not searchable
        ("n_epochs=3:7.5", "bounds of n_epochs must be finite int numbers"),
        ("n_epochs=true:9", "bounds of n_epochs must be finite int numbers"),
        ("gamma=NaN:0.99", "bounds of gamma must be finite float numbers"),
        ("gamma=0.99:0.9", "low must be below high"),
        ("ent_coef=0:0.1:log", "a log scale needs low > 0"),
        ("peer_drop_prob=0.1:1.5", "peer_drop_prob: Input should be less than 1"),  # the config's own bound
        ("batch_size=64:8192", "batch_size=8192 must be <= rollout_steps"),  # with the preset's other settings
        ("n_epochs=3", "expected key=low:high or key=low:high:log"),
        ("n_epochs=3:9:linear", "expected key=low:high or key=low:high:log"),
    ],
)
def test_bad_ranges_are_refused_naming_the_range_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_range(text, "smoke", {})


def test_a_ranges_file(tmp_path: Path) -> None:
    path = tmp_path / "ranges.toml"
    path.write_text('[ranges]\nlearning_rate = "1e-5:1e-3:log"\nn_epochs = "3:12"\n')
    assert [parse_range(t, "smoke", {}, str(path)) for t in ranges_from_file(path)] == [LR, EPOCHS]
    path.write_text("n_epochs = [3, 12]\n")
    with pytest.raises(ConfigError, match='n_epochs must be a string "low:high"'):
        ranges_from_file(path)


# --- the request --------------------------------------------------------------------------------------


def test_the_children_run_the_launchers_request_with_the_tuned_keys_searched() -> None:
    training = _training()
    request = tuning_request(training, TuningOptions((LR, EPOCHS)), "tune-1-abcdef0123")
    definition = request["TrainingJobDefinition"]
    # The same request, field by field, but for what a tuning job takes elsewhere (name, tags) or
    # varies (the tuned hyperparameters), and the shared checkpoint prefix (no spot: see tune.py).
    assert {k: v for k, v in definition.items() if k != "StaticHyperParameters"} == {
        k: v for k, v in training.items() if k not in ("TrainingJobName", "HyperParameters", "Tags", "CheckpointConfig")
    }
    assert definition["StaticHyperParameters"] == {
        k: v for k, v in training["HyperParameters"].items() if k not in ("learning_rate", "n_epochs")
    }
    assert (
        definition["EnableNetworkIsolation"] is True
        and definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    )
    config = request["HyperParameterTuningJobConfig"]
    objective = config["HyperParameterTuningJobObjective"]
    assert objective == {"Type": "Maximize", "MetricName": "val:behavioral_success_rate"}
    assert objective["MetricName"] in {
        d["Name"] for d in METRIC_DEFINITIONS
    }  # a published metric, so the logs carry it
    assert config["ParameterRanges"]["IntegerParameterRanges"] == [EPOCHS.to_api()]
    assert config["ParameterRanges"]["ContinuousParameterRanges"] == [LR.to_api()]
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    assert request["Tags"] == training["Tags"]


def test_spot_children_keep_checkpoints_and_the_spot_settings_the_validator_wants() -> None:
    training = _training(spot=True)
    definition = tuning_request(training, TuningOptions((LR,)), "t-1")["TrainingJobDefinition"]
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["CheckpointConfig"] == training["CheckpointConfig"]
    assert (
        definition["StoppingCondition"]["MaxWaitTimeInSeconds"]
        >= definition["StoppingCondition"]["MaxRuntimeInSeconds"]
    )


@pytest.mark.parametrize(
    ("options", "changes", "message"),
    [
        (TuningOptions((LR,), objective="eval"), {}, "early stopping needs an objective reported during training"),
        (TuningOptions((LR,), objective="val"), {"sets": ("val_every=0",)}, "val_every is 0"),
        (TuningOptions((LR,), objective="train"), {}, "objective 'train': choose val or eval"),
        (TuningOptions(()), {}, "no ranges"),
        (TuningOptions((LR, LR)), {}, "ranges given twice: learning_rate"),
        (TuningOptions((LR,), max_jobs=4, max_parallel_jobs=5), {}, "--max-parallel-jobs 5: 1..--max-jobs (4)"),
        (TuningOptions((LR,), max_jobs=0), {}, "--max-jobs 0"),
    ],
)
def test_a_search_that_cannot_work_is_refused(options: TuningOptions, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        tuning_request(_training(**changes), options, "t-1")


def test_eval_objective_without_early_stopping_is_allowed() -> None:
    request = tuning_request(_training(), TuningOptions((LR,), objective="eval", early_stopping=False), "t-1")
    assert (
        request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] == OBJECTIVES["eval"]
    )


def test_tuning_job_names_fit_the_32_character_limit() -> None:
    name = tuning_job_name("a_very_long_parent_run_id_of_forty_chars")
    assert len(name) <= 32 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}", name)
    assert tuning_job_name("p") != tuning_job_name("p")


# --- against moto, and Stubber for the children ------------------------------------------------------


@pytest.fixture
def moto_env(moto_session: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> boto3.Session:
    session = moto_session
    session.client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    session.client("iam").create_role(RoleName="roadsense-sagemaker", AssumeRolePolicyDocument="{}")
    push_test_image(session)
    monkeypatch.setattr(aws, "with_stack_defaults", lambda settings: settings)  # no stack needed
    monkeypatch.setattr(display.console, "width", 250)
    return session


ARGS = ["--preset", "smoke", "--image-uri", IMAGE, "--role-arn", ROLE]


def test_tune_creates_the_tuning_job_and_its_record(moto_env: boto3.Session) -> None:
    result = CliRunner().invoke(
        app,
        [
            *ARGS,
            "--spot",
            "tune",
            "lr_search",
            "--range",
            "learning_rate=1e-5:1e-3:log",
            "--range",
            "n_epochs=3:12",
            "--max-jobs",
            "6",
            "--max-parallel-jobs",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(moto_env.client("s3").get_object(Bucket=BUCKET, Key="lr_search/tuning.json")["Body"].read())
    name = record["tuning_job_name"]
    assert record["parent_run_id"] == "lr_search" and name.startswith("lr-search-")
    described = moto_env.client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    config = described["HyperParameterTuningJobConfig"]
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 3}
    assert config["HyperParameterTuningJobObjective"]["MetricName"] == "val:behavioral_success_rate"
    definition = described["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert definition["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/lr_search/output"
    assert definition["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/checkpoints/lr_search/"
    assert definition["EnableManagedSpotTraining"] is True and definition["EnableNetworkIsolation"] is True
    assert (
        "learning_rate" not in definition["StaticHyperParameters"]
        and definition["StaticHyperParameters"]["preset"] == "smoke"
    )
    again = CliRunner().invoke(app, [*ARGS, "tune", "lr_search", "--range", "n_epochs=3:12"])
    assert again.exit_code == 2 and "already holds a run" in again.stderr


def test_tune_refuses_bad_input_in_one_line_before_aws(moto_env: boto3.Session) -> None:
    for args, message in (
        (["tune", "t1", "--range", "learnin_rate=1:2"], "did you mean 'learning_rate'"),
        (["tune", "t1", "--range", "n_epochs=3:9", "--objective", "eval"], "--no-early-stopping"),
        (["--local", "tune", "t1", "--range", "n_epochs=3:9"], "drop --local"),
    ):
        result = CliRunner().invoke(app, [*ARGS, *args])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.output
    assert moto_env.client("sagemaker").list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"] == []


def test_tune_latest_image_goes_out_by_digest_in_a_dry_run(moto_env: boto3.Session) -> None:
    digest = tag_test_image_latest(moto_env)
    result = CliRunner().invoke(
        app,
        [
            "--preset",
            "smoke",
            "--image-uri",
            f"{REPO}:latest",
            "--role-arn",
            ROLE,
            "--dry-run",
            "tune",
            "t2",
            "--range",
            "n_epochs=3:9",
        ],
    )
    assert result.exit_code == 0, result.output
    request = json.loads(result.stdout)
    assert request["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] == f"{REPO}@{digest}"
    assert moto_env.client("sagemaker").list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"] == []


class _Session:
    """moto for everything but SageMaker, whose client is stubbed."""

    def __init__(self, moto: boto3.Session, sagemaker: Any) -> None:
        self._moto, self._sagemaker = moto, sagemaker

    def client(self, service: str, **kwargs: Any) -> Any:
        return self._sagemaker if service == "sagemaker" else self._moto.client(service, **kwargs)

    def get_credentials(self) -> Any:
        return self._moto.get_credentials()


NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
CHILDREN = [
    {
        "TrainingJobName": "lr-search-0a1b2c3d4e-001-aaaa1111",
        "TrainingJobArn": "arn:aws:sagemaker:il-central-1:123456789012:training-job/c1",
        "CreationTime": NOW,
        "TrainingJobStatus": "Completed",
        "TunedHyperParameters": {"learning_rate": "0.0002"},
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "val:behavioral_success_rate", "Value": 0.96},
    },
    {
        "TrainingJobName": "lr-search-0a1b2c3d4e-002-bbbb2222",
        "TrainingJobArn": "arn:aws:sagemaker:il-central-1:123456789012:training-job/c2",
        "CreationTime": NOW,
        "TrainingJobStatus": "Failed",
        "TunedHyperParameters": {"learning_rate": "0.0009"},
        "FailureReason": "AlgorithmError: hazard",
    },
    {
        "TrainingJobName": "lr-search-0a1b2c3d4e-003-cccc3333",
        "TrainingJobArn": "arn:aws:sagemaker:il-central-1:123456789012:training-job/c3",
        "CreationTime": NOW,
        "TrainingJobStatus": "Completed",
        "TunedHyperParameters": {"learning_rate": "0.00003"},
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "val:behavioral_success_rate", "Value": 0.99},
    },
]
TUNING = "lr-search-0a1b2c3d4e"
LIST_PARAMS = {"HyperParameterTuningJobName": TUNING, "SortBy": "FinalObjectiveMetricValue", "SortOrder": "Descending"}


def _describe_tuning(best: dict[str, Any] | None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "HyperParameterTuningJobName": TUNING,
        "HyperParameterTuningJobArn": "arn:aws:sagemaker:il-central-1:123456789012:hyper-parameter-tuning-job/t",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "ResourceLimits": {"MaxParallelTrainingJobs": 2},
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "val:behavioral_success_rate"},
        },
        "HyperParameterTuningJobStatus": "InProgress",
        "CreationTime": NOW,
        "TrainingJobStatusCounters": {},
        "ObjectiveStatusCounters": {},
    }
    if best:
        response["BestTrainingJob"] = best
    return response


@pytest.fixture
def tuned(moto_env: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> tuple[boto3.Session, Stubber]:
    """A tuning parent ``lr_search`` in moto's S3 (tuning.json, two children's results) and a stubbed SageMaker."""
    s3 = moto_env.client("s3")
    s3.put_object(
        Bucket=BUCKET,
        Key="lr_search/tuning.json",
        Body=json.dumps(
            {"parent_run_id": "lr_search", "tuning_job_name": TUNING, "launched_at": "2026-01-01T00:00:00+00:00"}
        ).encode(),
    )
    for child, rate in ((CHILDREN[0], 0.96), (CHILDREN[2], 0.99)):
        key = f"lr_search/output/{child['TrainingJobName']}/output/model.tar.gz"
        s3.put_object(
            Bucket=BUCKET,
            Key=key,
            Body=metrics_archive({"episodes": 300, "behavioral_success_rate": rate, "collision_rate": 1 - rate}),
        )
    sagemaker = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y")
    monkeypatch.setattr(aws, "make_session", lambda settings: _Session(moto_env, sagemaker))
    return moto_env, Stubber(sagemaker)


def test_status_lists_the_children_best_first(tuned: tuple[boto3.Session, Stubber]) -> None:
    _, stub = tuned
    stub.add_response(
        "describe_hyper_parameter_tuning_job", _describe_tuning(None), {"HyperParameterTuningJobName": TUNING}
    )
    stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job",
        {"TrainingJobSummaries": CHILDREN[:2], "NextToken": "n"},
        LIST_PARAMS,
    )
    stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job",
        {"TrainingJobSummaries": CHILDREN[2:]},
        {**LIST_PARAMS, "NextToken": "n"},
    )
    with stub:
        result = CliRunner().invoke(app, ["status", "lr_search"])
        stub.assert_no_pending_responses()
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "lr-search-0a1b2c3d4e-0" in line]
    # Both pages, best first.
    assert [re.search(r"-00\d-", line).group() for line in lines] == ["-003-", "-001-", "-002-"]
    assert "0.99" in lines[0] and "learning_rate=3e-05" not in lines[0] and "learning_rate=0.00003" in lines[0]
    assert "AlgorithmError: hazard" in lines[2] and "InProgress" in result.output


def test_compare_reads_each_completed_childs_metrics(tuned: tuple[boto3.Session, Stubber]) -> None:
    _, stub = tuned
    stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": CHILDREN}, LIST_PARAMS
    )
    with stub:
        result = CliRunner().invoke(app, ["compare", "lr_search"])
        stub.assert_no_pending_responses()
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "lr-search-0a1b2c3d4e-0" in line}
    assert (
        "learning_rate=0.00003" in rows[CHILDREN[2]["TrainingJobName"]]
        and "99.0%" in rows[CHILDREN[2]["TrainingJobName"]]
    )
    assert "96.0%" in rows[CHILDREN[0]["TrainingJobName"]]
    assert "%" not in rows[CHILDREN[1]["TrainingJobName"]]  # failed: no results


def test_fetch_takes_the_best_child_or_the_one_named(tuned: tuple[boto3.Session, Stubber], tmp_path: Path) -> None:
    _, stub = tuned
    best = {
        k: CHILDREN[2][k]
        for k in (
            "TrainingJobName",
            "TrainingJobArn",
            "CreationTime",
            "TrainingJobStatus",
            "TunedHyperParameters",
            "FinalHyperParameterTuningJobObjectiveMetric",
        )
    }
    stub.add_response(
        "describe_hyper_parameter_tuning_job", _describe_tuning(best), {"HyperParameterTuningJobName": TUNING}
    )
    stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": CHILDREN}, LIST_PARAMS
    )
    stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": CHILDREN}, LIST_PARAMS
    )
    with stub:
        fetched = CliRunner().invoke(app, ["fetch", "lr_search", "--to", str(tmp_path / "best")])
        chosen = CliRunner().invoke(
            app, ["fetch", "lr_search", "--to", str(tmp_path / "one"), "--job", CHILDREN[0]["TrainingJobName"]]
        )
        stranger = CliRunner().invoke(app, ["fetch", "lr_search", "--to", str(tmp_path / "x"), "--job", "other-job"])
        stub.assert_no_pending_responses()
    assert fetched.exit_code == 0, fetched.output
    assert (
        json.loads((tmp_path / "best" / "model" / "metrics.json").read_text())["overall"]["behavioral_success_rate"]
        == 0.99
    )
    assert "the best of tuning job" in fetched.output
    assert (
        chosen.exit_code == 0
        and json.loads((tmp_path / "one" / "model" / "metrics.json").read_text())["overall"]["behavioral_success_rate"]
        == 0.96
    )
    assert (
        stranger.exit_code == 2 and "is not a child of tuning job" in stranger.stderr and not (tmp_path / "x").exists()
    )


def test_fetch_job_applies_only_to_a_tuning_parent(moto_env: boto3.Session) -> None:
    result = CliRunner().invoke(app, ["fetch", "plain_run", "--job", "j-1"])
    assert result.exit_code == 2 and "not a tuning job's parent" in result.stderr
