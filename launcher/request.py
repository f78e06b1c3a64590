"""The CreateTrainingJob request: built by a pure function and validated here.

moto accepts any request, and SageMaker rejects a bad one only after the image is built,
so every rule the API enforces that a launch can break is checked before anything is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, cast

from launcher.layout import RunIdError, RunLayout, validate_job_name
from launcher.settings import LaunchSettings
from roadsense.errors import UserError
from roadsense.metric_lines import METRIC_DEFINITIONS

if TYPE_CHECKING:
    from mypy_boto3_sagemaker.literals import TrainingInstanceTypeType
    from mypy_boto3_sagemaker.type_defs import CreateTrainingJobRequestTypeDef, StoppingConditionTypeDef

CHANNEL = "dataset"  # the container reads it from /opt/ml/input/data/dataset/
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
TAG_PREFIX = "roadsense:"

_INSTANCE_TYPE = re.compile(r"^ml\.[a-z][a-z0-9-]*\.(large|medium|\d*xlarge)$")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_ENV_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,511}$")
_MAX_RUNTIME_S = 28 * 24 * 3600
MUTABLE_TAG = "latest"  # the one tag the stack's repository lets move (infra/roadsense.yaml)


class RequestError(UserError, ValueError):
    """The request breaks SageMaker's rules; the message lists every problem."""


@dataclass(frozen=True)
class JobSpec:
    """What varies between launches; everything else comes from the settings."""

    run_id: str
    job_name: str
    image_uri: str
    role_arn: str
    hyperparameters: dict[str, str]
    git_commit: str
    preset: str
    spot: bool = False
    with_dataset: bool = False
    parent_run_id: str | None = None
    # No network from the container: it needs none (inputs, checkpoints and outputs are SageMaker's
    # transfers), and a job that cannot connect out cannot leak data or fetch code.
    network_isolation: bool = True


def build_request(spec: JobSpec, settings: LaunchSettings) -> CreateTrainingJobRequestTypeDef:
    """The CreateTrainingJob keyword arguments for ``spec``; validated, so safe to send."""
    layout = RunLayout(settings.bucket, spec.run_id)
    stopping: StoppingConditionTypeDef = {"MaxRuntimeInSeconds": settings.max_runtime_s}
    tags = {"run-id": spec.run_id, "git-commit": spec.git_commit, "preset": spec.preset}
    if spec.spot:
        stopping["MaxWaitTimeInSeconds"] = settings.spot_max_wait_s
    if spec.parent_run_id:
        tags["parent-run-id"] = spec.parent_run_id
    request: CreateTrainingJobRequestTypeDef = {
        "TrainingJobName": spec.job_name,
        "AlgorithmSpecification": {
            "TrainingImage": spec.image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": d["Name"], "Regex": d["Regex"]} for d in METRIC_DEFINITIONS],
        },
        "RoleArn": spec.role_arn,
        "HyperParameters": dict(spec.hyperparameters),
        "OutputDataConfig": {"S3OutputPath": layout.output_uri},
        "ResourceConfig": {
            # Any ml.* type the settings name: request_problems checks its form, SageMaker that it exists.
            "InstanceType": cast("TrainingInstanceTypeType", settings.instance_type),
            "InstanceCount": settings.instance_count,
            "VolumeSizeInGB": settings.volume_size_gb,
        },
        "StoppingCondition": stopping,
        # Checkpoints always go to S3, not only for spot: they are what --resume reuses.
        "CheckpointConfig": {"S3Uri": layout.checkpoints_uri, "LocalPath": CHECKPOINT_LOCAL_PATH},
        "EnableManagedSpotTraining": spec.spot,
        "EnableNetworkIsolation": spec.network_isolation,
        "Environment": {
            "ROADSENSE_RUN_ID": spec.run_id,
            "ROADSENSE_GIT_COMMIT": spec.git_commit,
            "ROADSENSE_IMAGE": spec.image_uri,  # the provenance names the image the job really ran
            "PYTHONUNBUFFERED": "1",  # metric lines must reach CloudWatch as they are printed
        },
        "Tags": [{"Key": TAG_PREFIX + k, "Value": v} for k, v in tags.items()],
    }
    if spec.with_dataset:
        request["InputDataConfig"] = [
            {
                "ChannelName": CHANNEL,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": layout.dataset_uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
        ]
    validate_request(request)
    return request


def request_problems(request: Mapping[str, Any]) -> list[str]:
    """Every rule of CreateTrainingJob that ``request`` breaks (empty if it is valid).

    Any mapping is checked, typed or not: the checks are for requests that break the API's types too.
    """
    problems: list[str] = []
    try:
        validate_job_name(request.get("TrainingJobName", ""))
    except RunIdError as exc:
        problems.append(f"TrainingJobName: {exc}")
    hyper = request.get("HyperParameters", {})
    if len(hyper) > 100:
        problems.append(f"HyperParameters: {len(hyper)} entries, at most 100 allowed")
    for key, value in hyper.items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(f"HyperParameters[{key!r}] = {value!r}: keys and values must be strings")
        elif len(key) > 256 or len(value) > 2500:
            problems.append(f"HyperParameters[{key!r}]: key <= 256 and value <= 2500 characters")
    algorithm = request.get("AlgorithmSpecification", {})
    image = algorithm.get("TrainingImage", "")
    if not image or len(image) > 255 or re.search(r"\s", image):
        problems.append(f"TrainingImage {image!r}: a registry path of at most 255 characters without spaces")
    elif mutable_image(image):
        problems.append(
            f"TrainingImage {image!r}: the mutable tag '{MUTABLE_TAG}'; launch by a commit tag or an @sha256 digest "
            "(an ECR :latest is resolved to its digest)"
        )
    metrics = algorithm.get("MetricDefinitions", [])
    if len(metrics) > 40:
        problems.append(f"MetricDefinitions: {len(metrics)}, at most 40 allowed")
    for metric in metrics:
        if len(metric["Regex"]) > 500 or len(metric["Name"]) > 255:
            problems.append(f"MetricDefinitions {metric['Name']!r}: name <= 255 and regex <= 500 characters")
        try:
            re.compile(metric["Regex"])
        except re.error as exc:
            problems.append(f"MetricDefinitions {metric['Name']!r}: regex does not compile ({exc})")
    if not _ROLE_ARN.match(request.get("RoleArn", "")):
        problems.append(f"RoleArn {request.get('RoleArn')!r}: expected arn:aws:iam::<account>:role/<name>")
    resources = request.get("ResourceConfig", {})
    if not _INSTANCE_TYPE.match(resources.get("InstanceType", "")):
        problems.append(
            f"InstanceType {resources.get('InstanceType')!r}: expected ml.<family>.<size>, e.g. ml.c6i.xlarge"
        )
    if resources.get("InstanceCount", 0) < 1:
        problems.append("InstanceCount: at least 1")
    problems += _stopping_problems(request)
    uris = [
        request.get("OutputDataConfig", {}).get("S3OutputPath", ""),
        request.get("CheckpointConfig", {}).get("S3Uri", ""),
    ]
    uris += [c["DataSource"]["S3DataSource"]["S3Uri"] for c in request.get("InputDataConfig", [])]
    problems += [f"S3 URI {uri!r}: expected s3://<bucket>/<key>" for uri in uris if not _S3_URI.match(uri)]
    environment = request.get("Environment", {})
    if len(environment) > 100:
        problems.append(f"Environment: {len(environment)} entries, at most 100 allowed")
    problems += [
        f"Environment key {k!r}: letters, digits and '_', not starting with a digit"
        for k in environment
        if not _ENV_KEY.match(k)
    ]
    problems += [
        f"Environment[{k!r}]: value must be a string of <= 512 characters"
        for k, v in environment.items()
        if not isinstance(v, str) or len(v) > 512
    ]
    tags = request.get("Tags", [])
    if len(tags) > 50:
        problems.append(f"Tags: {len(tags)}, at most 50 allowed")
    problems += [
        f"Tag {t['Key']!r}: key <= 128 and value <= 256 characters"
        for t in tags
        if len(t["Key"]) > 128 or len(t["Value"]) > 256
    ]
    return problems


def mutable_image(image_uri: str) -> bool:
    """True if ``image_uri`` names its image by the mutable tag ``latest`` (or by no tag, which means it)."""
    name = image_uri.rsplit("/", 1)[-1]
    if "@" in name:
        return False
    _, sep, tag = name.partition(":")
    return not sep or tag == MUTABLE_TAG


def _stopping_problems(request: Mapping[str, Any]) -> list[str]:
    stopping = request.get("StoppingCondition", {})
    runtime = stopping.get("MaxRuntimeInSeconds", 0)
    problems = []
    if not 1 <= runtime <= _MAX_RUNTIME_S:
        problems.append(f"MaxRuntimeInSeconds {runtime}: 1..{_MAX_RUNTIME_S} (28 days)")
    wait = stopping.get("MaxWaitTimeInSeconds")
    if request.get("EnableManagedSpotTraining"):
        if wait is None or wait < runtime:
            problems.append(
                f"MaxWaitTimeInSeconds {wait}: spot training needs it, and >= MaxRuntimeInSeconds ({runtime})"
            )
        if "CheckpointConfig" not in request:
            problems.append("CheckpointConfig: spot training needs checkpoints in S3, or an interruption loses the run")
    elif wait is not None:
        problems.append("MaxWaitTimeInSeconds: only allowed with EnableManagedSpotTraining")
    return problems


def validate_request(request: Mapping[str, Any]) -> None:
    problems = request_problems(request)
    if problems:
        raise RequestError("invalid training job request: " + "; ".join(problems))
