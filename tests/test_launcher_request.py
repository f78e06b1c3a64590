"""The CreateTrainingJob request, run ids, job names, settings and the cost estimate: pure functions."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.aws import LaunchError
from launcher.cli import app
from launcher.cost import SPOT_TYPICAL_DISCOUNT, STARTUP_SECONDS, estimate, vcpus
from launcher.launch import LaunchOptions, plan, training_config
from launcher.layout import RunIdError, job_name, validate_run_id
from launcher.request import RequestError, request_problems
from launcher.settings import LaunchSettings, SettingsError, load_settings
from launcher.sweep import child_run_ids, grid, schedule, split_values
from roadsense.config import ConfigError, PipelineConfig
from roadsense.estimate import projected_train_steps_per_s, stage_seconds
from roadsense.metric_lines import METRIC_DEFINITIONS

IMAGE = "123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training:abc123"
ROLE = "arn:aws:iam::123456789012:role/roadsense-sagemaker"


def _request(**option_overrides: object) -> dict:
    options = LaunchOptions(run_id="cloud_prod_001", preset="smoke", sets=("seed=3",), **option_overrides)
    request, _ = plan(options, LaunchSettings(), ROLE, IMAGE, "abc123")
    return request


def test_request_carries_the_launch_settings() -> None:
    request = _request()
    assert request["ResourceConfig"]["InstanceType"] == "ml.c6i.xlarge"
    assert request["ResourceConfig"]["InstanceCount"] == 1
    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert request["RoleArn"] == ROLE
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://saferide-training-results/cloud_prod_001/output"
    # Apart from the run's prefix, under the one prefix the bucket's lifecycle rule expires (tests/test_infra.py).
    assert request["CheckpointConfig"]["S3Uri"] == "s3://saferide-training-results/checkpoints/cloud_prod_001/"
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert request["EnableManagedSpotTraining"] is False
    assert request["EnableNetworkIsolation"] is True
    assert request["Environment"]["ROADSENSE_RUN_ID"] == "cloud_prod_001"
    assert request["Environment"]["ROADSENSE_IMAGE"] == request["AlgorithmSpecification"]["TrainingImage"]
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert tags == {"roadsense:run-id": "cloud_prod_001", "roadsense:git-commit": "abc123", "roadsense:preset": "smoke"}
    assert "InputDataConfig" not in request


def test_hyperparameters_are_strings_that_round_trip() -> None:
    hyper = _request()["HyperParameters"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in hyper.items())
    assert hyper["seed"] == "3" and hyper["instance_type"] == "ml.c6i.xlarge"
    assert PipelineConfig.from_hyperparameters(hyper).train.seed == 3


def test_spot_and_dataset() -> None:
    request = _request(spot=True, dataset=Path("ds"))
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 172800}
    channel = request["InputDataConfig"][0]
    assert channel["ChannelName"] == "dataset"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == "s3://saferide-training-results/cloud_prod_001/dataset"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(TrainingJobName="cloud_prod_001"), "no underscores"),
        (lambda r: r["ResourceConfig"].update(InstanceType="c6i.xlarge"), "InstanceType"),
        (lambda r: r["HyperParameters"].update(seed=3), "must be strings"),
        (lambda r: r["HyperParameters"].update({f"k{i}": "v" for i in range(100)}), "at most 100"),
        (
            lambda r: r.update(
                EnableManagedSpotTraining=True,
                StoppingCondition={"MaxRuntimeInSeconds": 100, "MaxWaitTimeInSeconds": 50},
            ),
            "MaxWaitTimeInSeconds",
        ),
        (lambda r: r["OutputDataConfig"].update(S3OutputPath="saferide/out"), "S3 URI"),
        (lambda r: r.update(RoleArn="roadsense"), "RoleArn"),
    ],
)
def test_validation_catches_what_moto_accepts(change, message: str) -> None:
    request = _request()
    assert request_problems(request) == []
    change(request)
    assert any(message in problem for problem in request_problems(request))


def test_network_isolation_can_be_turned_off() -> None:
    assert _request(network_isolation=False)["EnableNetworkIsolation"] is False


@pytest.mark.parametrize(
    ("image", "mutable"),
    [
        (IMAGE, False),
        ("123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training:latest", True),
        ("123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training", True),  # no tag means latest
        ("123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training@sha256:" + "a" * 64, False),
        ("localhost:5000/roadsense-train", True),  # the port is not a tag
        ("localhost:5000/roadsense-train:abc", False),
    ],
)
def test_a_job_is_never_launched_by_the_mutable_tag(image: str, mutable: bool) -> None:
    problems = request_problems(
        {**_request(), "AlgorithmSpecification": {**_request()["AlgorithmSpecification"], "TrainingImage": image}}
    )
    assert any("mutable tag 'latest'" in p for p in problems) is mutable


@pytest.mark.parametrize("run_id", ["checkpoints", "codebuild"])
def test_the_buckets_own_prefixes_are_not_run_ids(run_id: str) -> None:
    with pytest.raises(RunIdError, match="reserved"):
        validate_run_id(run_id)


def test_bad_instance_type_is_refused_before_aws() -> None:
    with pytest.raises(RequestError, match="InstanceType"):
        plan(
            LaunchOptions(run_id="r1", sets=("instance_price_per_hour=1",)),
            LaunchSettings(instance_type="ml.bogus"),
            ROLE,
            IMAGE,
            "abc",
        )


@pytest.mark.parametrize("bad", ["", "_x", "a b", "a/b", "x" * 41, "run.1"])
def test_run_id_rules(bad: str) -> None:
    with pytest.raises(RunIdError):
        validate_run_id(bad)


def test_job_name_is_legal_and_unique_per_attempt() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert job_name("cloud_prod_001", now, "ab12") == "cloud-prod-001-20250102-030405-ab12"
    longest = job_name("a" * 40)
    assert re.match(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$", longest)
    assert job_name("r1") != job_name("r1")


def test_settings_precedence(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.roadsense.launch]\nbucket = "from-pyproject"\nregion = "eu-west-1"\ninstance_count = 2\n'
    )
    settings = load_settings({"instance_count": 3, "bucket": None}, env={"AWS_REGION": "il-central-1"}, cwd=tmp_path)
    assert (settings.bucket, settings.region, settings.instance_count) == ("from-pyproject", "il-central-1", 3)
    (tmp_path / "roadsense-launch.toml").write_text('bucket = "from-file"\n')
    assert load_settings(env={}, cwd=tmp_path).bucket == "from-file"
    with pytest.raises(SettingsError, match="instance_typo"):
        load_settings({"instance_typo": "x"}, env={}, cwd=tmp_path)


def test_cost_estimate_uses_roadsense_throughput_for_the_instance_vcpus() -> None:
    config = training_config("production", {}, "ml.c6i.xlarge")
    cost = estimate(config)
    assert cost is not None
    stages = stage_seconds(config, 4)  # ml.c6i.xlarge has 4 vCPUs
    # Validation runs are part of the training stage: the effective rate is below the raw one.
    assert cost.steps_per_second == pytest.approx(config.train.total_timesteps / stages["train"])
    assert cost.steps_per_second < projected_train_steps_per_s(4)["steps_per_s"]
    unvalidated = training_config("production", {"val_every": "0"}, "ml.c6i.xlarge")
    assert estimate(unvalidated).steps_per_second == pytest.approx(projected_train_steps_per_s(4)["steps_per_s"])
    assert cost.hours == pytest.approx((sum(stages.values()) + STARTUP_SECONDS) / 3600)
    assert cost.on_demand_usd == pytest.approx(cost.hours * config.cost.instance_price_per_hour)
    assert cost.spot_usd == pytest.approx(cost.on_demand_usd * (1 - SPOT_TYPICAL_DISCOUNT))
    assert estimate(config, instance_count=2).on_demand_usd == pytest.approx(2 * cost.on_demand_usd)


def test_other_instance_needs_a_price_and_scales_with_its_vcpus() -> None:
    with pytest.raises(ConfigError, match="instance_price_per_hour"):
        training_config("smoke", {}, "ml.c6i.2xlarge")
    config = training_config("production", {"instance_price_per_hour": "0.5", "val_every": "0"}, "ml.c6i.2xlarge")
    assert estimate(config).steps_per_second == pytest.approx(projected_train_steps_per_s(8)["steps_per_s"])
    assert vcpus("ml.m5.large") == 2 and vcpus("ml.c6i.24xlarge") == 96 and vcpus("ml.c6i.bogus") is None


def test_sweep_grid() -> None:
    assert split_values("[0.8,1.2],[0.9,1.1]") == ["[0.8,1.2]", "[0.9,1.1]"]
    points = grid([0, 1], ["learning_rate=1e-4,3e-4"])
    assert points == [
        {"seed": "0", "learning_rate": "1e-4"},
        {"seed": "0", "learning_rate": "3e-4"},
        {"seed": "1", "learning_rate": "1e-4"},
        {"seed": "1", "learning_rate": "3e-4"},
    ]
    assert child_run_ids("grid", 2) == ["grid-001", "grid-002"]


def test_schedule_never_runs_more_than_max_parallel() -> None:
    """The test keeps its own count of the running jobs: a job runs from its start until the second time
    it is checked. Starting a third job in the first batch (or any batch) shows in the counts."""
    running: set[int] = set()
    checks: dict[int, int] = {}
    at_start: list[int] = []  # jobs running once each job has started, itself included
    batches: list[list[int]] = []  # jobs running at each poll

    def start(item: int) -> int:
        running.add(item)
        at_start.append(len(running))
        return item

    def finished(item: int) -> bool:
        checks[item] = checks.get(item, 0) + 1
        if checks[item] == 2:
            running.remove(item)
        return item not in running

    started = schedule(range(5), start, finished, 2, sleep=lambda seconds: batches.append(sorted(running)))
    assert started == [0, 1, 2, 3, 4]
    assert batches[0] == [0, 1]  # the first batch is exactly max_parallel jobs
    assert max(at_start) == 2 and all(len(batch) <= 2 for batch in batches)
    assert running == set() and all(checks[item] == 2 for item in started)  # each ran to its end, checked no more


# --- a run longer than the job may run --------------------------------------------------------


def _overrun_options(**changes: object) -> LaunchOptions:
    return LaunchOptions(run_id="long_run", preset="smoke", sets=("total_timesteps=50000000",), **changes)


def test_a_run_longer_than_the_max_runtime_is_refused_with_both_figures_and_the_fix() -> None:
    settings = LaunchSettings(max_runtime_s=3600)
    expected = estimate(training_config("smoke", {"total_timesteps": "50000000"}, settings.instance_type))
    assert expected is not None and expected.hours > 1  # the estimate (roadsense/estimate.py) is the one being compared
    with pytest.raises(LaunchError) as refused:
        plan(_overrun_options(), settings, ROLE, IMAGE, "abc")
    message = str(refused.value)
    assert f"~{expected.hours:.1f} h" in message and "max runtime of 1.0 h" in message
    assert "--max-runtime-hours" in message and "total_timesteps" in message and "--allow-overrun" in message
    assert (
        plan(_overrun_options(allow_overrun=True), settings, ROLE, IMAGE, "abc")[0]["StoppingCondition"][
            "MaxRuntimeInSeconds"
        ]
        == 3600
    )
    plan(_overrun_options(local=True), settings, ROLE, IMAGE, "abc")  # a local run has no max runtime
    plan(_overrun_options(), LaunchSettings(max_runtime_s=int(expected.hours * 3600) + 60), ROLE, IMAGE, "abc")


def test_the_cli_refuses_an_overrun_unless_allowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # needs no AWS
    args = [
        "--run-id",
        "long_run",
        "--preset",
        "smoke",
        "--set",
        "total_timesteps=50000000",
        "--max-runtime-hours",
        "1",
        "--dry-run",
        "--json",
        "--image-uri",
        IMAGE,
        "--role-arn",
        ROLE,
    ]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert "max runtime of 1.0 h" in refused.stderr and "--allow-overrun" in refused.stderr
    allowed = CliRunner().invoke(app, ["--allow-overrun", *args])
    assert allowed.exit_code == 0, allowed.output
