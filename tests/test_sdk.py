"""The SDK path (``launcher/sdk.py``, the ``[sdk]`` extra) sends the launcher's request, and the
hyperparameter strings each SDK path produces decode to the same config.

The SDK's CreateTrainingJob is captured on its way out (a botocore ``before-parameter-build``
handler on the boto3 session the SDK's clients are made from) and sent to in-process moto. The SDK
lives in a venv of its own (``make test-sdk``, part of ``make test``), where these tests must run:
there ROADSENSE_SDK_TESTS=required turns a missing SDK into a failure. In the main venv they
skip; the tests that check the SDK stays optional run in both.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from launcher import aws
from launcher.launch import LaunchOptions, launch, plan
from launcher.layout import validate_job_name
from launcher.request import request_problems
from launcher.settings import LaunchSettings
from roadsense.config import PipelineConfig

REGION = "il-central-1"
BUCKET = "saferide-training-results"
IMAGE = "123456789012.dkr.ecr.il-central-1.amazonaws.com/roadsense-training:abc"
REPO = Path(__file__).resolve().parent.parent

# Typed values as a notebook would give them, and the config they mean.
TYPED: dict[str, Any] = {"preset": "smoke", "backend": "traci", "baselines": ["rule-based"], "emulator_params": None,
                         "domain_randomization": False, "sigma_range": (0.1, 0.2), "total_timesteps": 5000, "learning_rate": 3e-4}


def _require_sdk() -> None:
    """Skip without the SDK, unless this is the SDK's venv (``make test-sdk``), where it must be there."""
    if os.environ.get("ROADSENSE_SDK_TESTS") == "required":
        import sagemaker.train  # noqa: F401 - an ImportError here fails the test
    else:
        pytest.importorskip("sagemaker.train")


def _expected() -> PipelineConfig:
    return PipelineConfig.from_overrides("smoke", {k: v for k, v in TYPED.items() if k != "preset"})


# --- optional: never imported unless asked for -------------------------------------------------------


def test_the_cli_and_the_sdk_module_do_not_import_the_sdk() -> None:
    code = "import sys, launcher.cli, launcher.sdk; sys.exit('sagemaker' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_missing_extra_is_one_line_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher import sdk

    monkeypatch.setitem(sys.modules, "sagemaker.train", None)  # what an install without the extra looks like to import
    with pytest.raises(aws.LaunchError, match=r"the sagemaker SDK is not installed .*Fix: pip install 'roadsense\[sdk\]'"):
        sdk.model_trainer("r1", settings=LaunchSettings(role_arn="arn:aws:iam::123456789012:role/r", image_uri=IMAGE))


def test_the_extra_is_pinned_and_not_in_the_default_install() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("sagemaker")]
    assert [d for d in project["optional-dependencies"]["sdk"] if d.startswith("sagemaker==")]


# --- the hyperparameter strings of each SDK path --------------------------------------------------------


def test_model_trainer_strings_decode_to_the_typed_config() -> None:
    _require_sdk()
    from sagemaker.train.utils import safe_serialize  # what ModelTrainer applies to each value

    sent = {key: safe_serialize(value) for key, value in TYPED.items()}
    assert sent["preset"] == "smoke" and sent["emulator_params"] == "null" and sent["sigma_range"] == "[0.1, 0.2]"
    assert PipelineConfig.from_hyperparameters(sent) == _expected()


def test_tuner_static_strings_decode_to_the_typed_config() -> None:
    _require_sdk()
    from sagemaker.core.common_utils import to_string  # what HyperparameterTuner applies to static values

    sent = {key: to_string(value) for key, value in TYPED.items()}
    # The literal spellings tests/test_config.py checks without the SDK:
    assert (sent["baselines"], sent["emulator_params"], sent["domain_randomization"], sent["sigma_range"]) == (
        "['rule-based']", "None", "False", "(0.1, 0.2)")
    assert PipelineConfig.from_hyperparameters(sent) == _expected()


def test_json_encoded_strings_decode_to_the_typed_config() -> None:
    sent = {key: json.dumps(value) for key, value in TYPED.items()}  # every value JSON, strings quoted
    assert sent["preset"] == '"smoke"'
    assert PipelineConfig.from_hyperparameters(sent) == _expected()


# --- the request the SDK sends ----------------------------------------------------------------------------


@pytest.fixture
def sdk_env(moto_session: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> tuple[boto3.Session, LaunchSettings, list[dict[str, Any]]]:
    """moto with the bucket, role and image; the SDK's CreateTrainingJob requests land in the returned list."""
    _require_sdk()
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")  # the SDK calls iam:SimulatePrincipalPolicy, which moto lacks
    session = moto_session
    session.client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    role = session.client("iam").create_role(RoleName="roadsense-sagemaker", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    ecr = session.client("ecr")
    ecr.create_repository(repositoryName="roadsense-training")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {}, "layers": []})
    ecr.put_image(repositoryName="roadsense-training", imageManifest=manifest, imageTag="abc")
    sent: list[dict[str, Any]] = []
    sdk_session = boto3.Session(region_name=REGION)
    sdk_session.events.register("before-parameter-build.sagemaker.CreateTrainingJob",
                                lambda params, **_: sent.append(copy.deepcopy(params)))
    # launcher.sdk makes its sagemaker Session on the launcher's boto3 session: hand it the listening one.
    monkeypatch.setattr(aws, "make_session", lambda settings: sdk_session)
    return session, LaunchSettings(role_arn=role, image_uri=IMAGE), sent


def _differences(sdk: dict[str, Any], launcher: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {key: (sdk.get(key), launcher.get(key)) for key in sorted(set(sdk) | set(launcher))
            if key != "TrainingJobName" and sdk.get(key) != launcher.get(key)}


@pytest.mark.parametrize("spot", [False, True])
def test_the_sdk_sends_the_launchers_request_field_by_field(sdk_env, spot: bool) -> None:
    from launcher.sdk import model_trainer

    session, settings, sent = sdk_env
    trainer = model_trainer("sdk_run_1", preset="smoke", sets=["seed=3"], spot=spot, settings=settings)
    trainer.train(wait=False, logs=False)
    assert len(sent) == 1
    sdk_request = sent[0]
    launched = launch(LaunchOptions(run_id="sdk_run_1", preset="smoke", sets=("seed=3",), spot=spot), settings)
    assert _differences(sdk_request, launched.request) == {}
    # Only the name differs: the SDK names its jobs <run id with dashes>-<time>, also a legal job name.
    assert validate_job_name(sdk_request["TrainingJobName"]).startswith("sdk-run-1-")
    assert request_problems(sdk_request) == []  # spot settings, checkpoints, metrics: valid for the launcher's validator
    assert sdk_request["EnableNetworkIsolation"] is True and sdk_request["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/checkpoints/sdk_run_1/"
    assert session.client("sagemaker").describe_training_job(TrainingJobName=sdk_request["TrainingJobName"])["TrainingJobStatus"]


def test_a_dataset_channel_and_no_isolation_are_carried_over(sdk_env) -> None:
    from sagemaker.core.helper.session_helper import Session

    from launcher.sdk import trainer_for_request

    _, settings, sent = sdk_env
    options = LaunchOptions(run_id="sdk_run_2", preset="smoke", dataset=Path("ds"), spot=True, network_isolation=False)
    request, _ = plan(options, settings, settings.role_arn or "", IMAGE, "abc123")
    trainer_for_request(request, Session(boto_session=aws.make_session(settings))).train(wait=False, logs=False)
    assert _differences(sent[0], request) == {}
    assert sent[0]["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/sdk_run_2/dataset"


def test_the_sdk_path_runs_the_launchers_preflight(sdk_env) -> None:
    from launcher.sdk import model_trainer

    _, settings, sent = sdk_env
    with pytest.raises(aws.LaunchError, match="not in ECR"):
        model_trainer("sdk_run_3", preset="smoke", settings=settings.model_copy(update={"image_uri": IMAGE.replace(":abc", ":nope")}))
    assert sent == []
