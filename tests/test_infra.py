"""The infrastructure: templates (lint + security properties), the infra CLI, CodeBuild, buildspec.

moto's CloudFormation ignores versioning, public access blocks, lifecycle rules and bucket
policies and skips CodeBuild projects and budgets, so those properties are asserted on the
template itself; moto then shows that the stack creates and that the launcher reads its
outputs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode
from moto.cloudformation.models import cloudformation_backends
from typer.testing import CliRunner

from launcher import codebuild, infra, stack
from launcher.cli import app
from launcher.launch import LaunchOptions, plan
from launcher.layout import CHECKPOINTS_PREFIX, RunLayout
from launcher.settings import LaunchSettings

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
BUILDSPEC = REPO / "buildspec.yml"
SOURCE_REPO = "https://github.com/saferide/roadsense"
ACCOUNT = "123456789012"  # moto's default account

# Each template is linted in the region it is deployed to (launcher/infra.py).
LINT_REGIONS = {"roadsense.yaml": "il-central-1", "budget.yaml": infra.BUDGET_REGION}
# Actions with no resource-level permissions: the only ones allowed Resource "*".
STAR_RESOURCE_ACTIONS = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
# Variables CodeBuild itself sets in every build.
CODEBUILD_VARIABLES = {"AWS_DEFAULT_REGION", "CODEBUILD_RESOLVED_SOURCE_VERSION"}


def load_template(name: str) -> dict[str, Any]:
    template, problems = decode(str(INFRA / name))
    assert not problems, problems
    return template


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template("roadsense.yaml")


def resources_of(template: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [r["Properties"] for r in template["Resources"].values() if r["Type"] == resource_type]


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def as_text(value: Any) -> str:
    """A Ref/GetAtt/Sub value as the ${...} text it stands for, for comparing resources."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return "${" + value["Ref"] + "}"
    if "Fn::GetAtt" in value:
        return "${" + ".".join(value["Fn::GetAtt"]) + "}"
    if "Fn::Sub" in value:
        return value["Fn::Sub"]
    raise AssertionError(f"unexpected intrinsic {value}")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(template: dict[str, Any], logical_id: str) -> list[dict[str, Any]]:
    role = template["Resources"][logical_id]["Properties"]
    return [s for policy in role.get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]


def granted(statements: list[dict[str, Any]]) -> dict[str, set[str]]:
    """{action: resources} over the Allow statements."""
    actions: dict[str, set[str]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            actions.setdefault(action, set()).update(as_text(r) for r in as_list(statement["Resource"]))
    return actions


# --- cfn-lint ---------------------------------------------------------------------------


def test_every_template_is_linted() -> None:
    assert {p.name for p in INFRA.glob("*.yaml")} | {p.name for p in INFRA.glob("*.yml")} == set(LINT_REGIONS)


@pytest.mark.parametrize("name", sorted(LINT_REGIONS))
def test_cfn_lint_is_clean(name: str) -> None:
    matches = lint_file(INFRA / name, ManualArgs(regions=[LINT_REGIONS[name]]))
    assert [str(m) for m in matches] == []


def test_budget_cannot_live_in_the_training_region() -> None:
    """Why the budget is a separate us-east-1 stack: il-central-1 has no AWS::Budgets::Budget."""
    matches = lint_file(INFRA / "budget.yaml", ManualArgs(regions=["il-central-1"]))
    assert any(m.rule.id == "E3006" for m in matches)


# --- security properties of the template -----------------------------------------------


def test_repository_scans_expires_and_keeps_commit_tags_immutable(template: dict[str, Any]) -> None:
    repo = only(resources_of(template, "AWS::ECR::Repository"))
    assert repo["ImageScanningConfiguration"]["ScanOnPush"] is True
    assert repo["ImageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert repo["ImageTagMutabilityExclusionFilters"] == [
        {"ImageTagMutabilityExclusionFilterType": "WILDCARD", "ImageTagMutabilityExclusionFilterValue": "latest"}
    ]
    keep = template["Parameters"]["ImagesToKeep"]["Default"]
    policy = json.loads(repo["LifecyclePolicy"]["LifecyclePolicyText"]["Fn::Sub"].replace("${ImagesToKeep}", str(keep)))
    selection = only(policy["rules"])["selection"]
    assert selection == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep}


def test_bucket_is_versioned_encrypted_and_private(template: dict[str, Any]) -> None:
    bucket = only(resources_of(template, "AWS::S3::Bucket"))
    assert template["Parameters"]["BucketName"]["Default"] == "saferide-training-results"
    assert bucket["BucketName"] == {"Ref": "BucketName"}
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    encryption = only(bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"])
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    flags = bucket["PublicAccessBlockConfiguration"]
    assert flags == {"BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}


def test_bucket_policy_denies_plain_http(template: dict[str, Any]) -> None:
    policy = only(resources_of(template, "AWS::S3::BucketPolicy"))
    assert policy["Bucket"] == {"Ref": "ResultsBucket"}
    deny = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    statement = only([s for s in deny if s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"])
    assert statement["Principal"] == "*" and statement["Action"] == "s3:*"
    assert {as_text(r) for r in statement["Resource"]} == {"${ResultsBucket.Arn}", "${ResultsBucket.Arn}/*"}


def test_bucket_expires_checkpoints_and_old_versions(template: dict[str, Any]) -> None:
    rules = only(resources_of(template, "AWS::S3::Bucket"))["LifecycleConfiguration"]["Rules"]
    assert all(r["Status"] == "Enabled" for r in rules)
    checkpoints = only([r for r in rules if "checkpoints/" in r.get("Prefix", "")])
    assert checkpoints["ExpirationInDays"] == {"Ref": "CheckpointExpiryDays"}
    noncurrent = only([r for r in rules if "NoncurrentVersionExpiration" in r])
    assert noncurrent["NoncurrentVersionExpiration"]["NoncurrentDays"] == {"Ref": "NoncurrentVersionExpiryDays"}
    assert "Prefix" not in noncurrent  # the whole bucket


def test_no_wildcard_actions_and_star_resources_only_where_aws_requires(template: dict[str, Any]) -> None:
    roles = [k for k, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role"]
    assert set(roles) == {"SageMakerExecutionRole", "CodeBuildRole"}
    assert not [t for t in template["Resources"].values() if t["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")]
    text = (INFRA / "roadsense.yaml").read_text()
    comments = [line for line in text.splitlines() if line.strip().startswith("#")]
    for role in roles:
        assert "ManagedPolicyArns" not in template["Resources"][role]["Properties"]
        statements = role_statements(template, role)
        assert statements and not [s for s in statements if "NotAction" in s or "NotResource" in s]
        for action, resources in granted(statements).items():
            assert "*" not in action, f"{role}: wildcard action {action}"
            if "*" in resources:
                assert action in STAR_RESOURCE_ACTIONS, f"{role}: {action} on Resource '*'"
                assert any(action in line for line in comments), f"{action} needs a comment saying why '*'"


def test_training_role_reaches_only_its_bucket_repository_and_logs(template: dict[str, Any]) -> None:
    actions = granted(role_statements(template, "SageMakerExecutionRole"))
    bucket = "${ResultsBucket.Arn}"
    for action, resources in actions.items():
        service = action.split(":")[0]
        if service == "s3":
            assert all(r.startswith(bucket) for r in resources), (action, resources)
        if service == "logs":
            assert all("log-group:/aws/sagemaker/TrainingJobs:" in r for r in resources), (action, resources)
    # Reads only what SageMaker downloads for a job (the dataset channel, the checkpoints it restores),
    # writes only where SageMaker writes (the job output, the checkpoints): the launcher's layout.
    layout = RunLayout("b", "RUN")
    assert actions["s3:GetObject"] == {f"{bucket}/*/dataset/*", f"{bucket}/{CHECKPOINTS_PREFIX}*"}
    assert actions["s3:PutObject"] == {f"{bucket}/*/output/*", f"{bucket}/{CHECKPOINTS_PREFIX}*"}
    assert layout.dataset_key.replace("RUN", "*") + "*" == "*/dataset/*" and layout.output_uri.endswith("RUN/output")
    assert "s3:DeleteObject" not in actions
    assert actions["ecr:BatchGetImage"] == {"${ImageRepository.Arn}"}
    assert "ecr:PutImage" not in actions  # pull only
    metrics = only([s for s in role_statements(template, "SageMakerExecutionRole") if s["Action"] == "cloudwatch:PutMetricData"])
    assert metrics["Condition"]["StringEquals"]["cloudwatch:namespace"] == "/aws/sagemaker/TrainingJobs"


def test_roles_trust_only_their_service_in_this_account(template: dict[str, Any]) -> None:
    for role, service in (("SageMakerExecutionRole", "sagemaker.amazonaws.com"), ("CodeBuildRole", "codebuild.amazonaws.com")):
        trust = only(template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Statement"])
        assert trust["Principal"] == {"Service": service}
        assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    trust = only(template["Resources"]["SageMakerExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"])
    assert as_text(trust["Condition"]["ArnLike"]["aws:SourceArn"]) == (
        "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:training-job/*")


def test_checkpoints_live_where_the_lifecycle_rule_expires_them(template: dict[str, Any]) -> None:
    # S3 lifecycle prefixes are literal: the launcher's checkpoint URI, for --resume as for a first
    # launch, must start with the rule's prefix, and nothing else of a run may (it would expire).
    rules = only(resources_of(template, "AWS::S3::Bucket"))["LifecycleConfiguration"]["Rules"]
    expiring = only([r["Prefix"] for r in rules if "ExpirationInDays" in r])
    assert expiring == CHECKPOINTS_PREFIX
    layout = RunLayout("saferide-training-results", "cloud_prod_001")
    for resume in (False, True):
        options = LaunchOptions(run_id="cloud_prod_001", preset="smoke", resume=resume)
        request, _ = plan(options, LaunchSettings(), "arn:aws:iam::123456789012:role/r",
                          "123456789012.dkr.ecr.il-central-1.amazonaws.com/r:abc", "abc")
        key = request["CheckpointConfig"]["S3Uri"].removeprefix("s3://saferide-training-results/")
        assert key.startswith(expiring) and key == layout.checkpoints_key
    kept = [layout.launch_key, layout.dataset_key, layout.model_key("j"), layout.sweep_key, layout.tuning_key, layout.output_data_key("j")]
    assert not [k for k in kept if k.startswith(expiring)]


def test_codebuild_is_privileged_uses_buildspec_and_its_own_role(template: dict[str, Any]) -> None:
    project = only(resources_of(template, "AWS::CodeBuild::Project"))
    assert project["Environment"]["PrivilegedMode"] is True
    assert project["Source"]["BuildSpec"] == "buildspec.yml"
    assert project["ServiceRole"] == {"Fn::GetAtt": ["CodeBuildRole", "Arn"]}
    variables = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert variables["IMAGE_REPO_URI"] == {"Fn::GetAtt": ["ImageRepository", "RepositoryUri"]}
    actions = granted(role_statements(template, "CodeBuildRole"))
    assert actions["ecr:PutImage"] == {"${ImageRepository.Arn}"}
    assert actions["s3:PutObject"] == {"${ResultsBucket.Arn}/codebuild/*"}  # the image-uri artifact only
    assert project["Artifacts"]["Path"] == "codebuild"


def test_budget_is_monthly_with_email_alerts() -> None:
    budget_template = load_template("budget.yaml")
    resource = only(resources_of(budget_template, "AWS::Budgets::Budget"))
    assert resource["Budget"]["TimeUnit"] == "MONTHLY"
    assert resource["Budget"]["BudgetLimit"] == {"Amount": {"Ref": "BudgetAmountUsd"}, "Unit": "USD"}
    assert {"BudgetAmountUsd", "AlertEmail"} <= set(budget_template["Parameters"])
    notifications = resource["NotificationsWithSubscribers"]
    assert notifications
    for notification in notifications:
        assert notification["Subscribers"] == [{"SubscriptionType": "EMAIL", "Address": {"Ref": "AlertEmail"}}]


def test_outputs_the_launcher_reads_are_present(template: dict[str, Any]) -> None:
    assert set(stack.OUTPUT_KEYS) <= set(template["Outputs"])
    assert template["Outputs"][stack.OUTPUT_PROJECT]["Value"] == {"Ref": "BuildProject"}


# --- moto: stack create and the infra CLI ----------------------------------------------


@pytest.fixture
def aws(moto_session: boto3.Session) -> boto3.Session:
    return moto_session


def test_stack_creates_under_moto_and_outputs_are_read(aws: boto3.Session) -> None:
    assert stack.stack_outputs(aws) == {}
    aws.client("cloudformation").create_stack(
        StackName="roadsense",
        TemplateBody=(INFRA / "roadsense.yaml").read_text(),
        Parameters=[{"ParameterKey": "SourceRepositoryUrl", "ParameterValue": SOURCE_REPO}],
        Capabilities=["CAPABILITY_IAM"],
    )
    outputs = stack.stack_outputs(aws)
    assert outputs[stack.OUTPUT_BUCKET] == "saferide-training-results"
    assert outputs[stack.OUTPUT_REPOSITORY_URI] == f"{ACCOUNT}.dkr.ecr.il-central-1.amazonaws.com/roadsense-training"
    role_name = outputs[stack.OUTPUT_ROLE_ARN].rsplit("/", 1)[1]
    assert "sagemaker.amazonaws.com" in json.dumps(aws.client("iam").get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"])
    repository = only(aws.client("ecr").describe_repositories()["repositories"])
    assert repository["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert aws.client("s3").get_bucket_location(Bucket="saferide-training-results")["LocationConstraint"] == "il-central-1"


def invoke(*args: str, settings: tuple[str, ...] = ()):
    """``roadsense-launch [settings...] infra args...``."""
    result = CliRunner().invoke(app, [*settings, "infra", *args])
    # An expected failure ends in SystemExit with its exit code; anything else would be a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_deploy_twice_status_and_delete(aws: boto3.Session) -> None:
    first = invoke("deploy", "--source-repo", SOURCE_REPO, "--alert-email", "ops@example.com", "--budget-usd", "50")
    assert first.exit_code == 0, first.output
    assert "roadsense: CREATE_COMPLETE" in first.output and "roadsense-budget: CREATE_COMPLETE" in first.output
    aws.client("s3").head_bucket(Bucket="saferide-training-results")
    budget = aws.client("cloudformation", region_name="us-east-1").describe_stacks(StackName="roadsense-budget")["Stacks"][0]
    assert {p["ParameterKey"]: p["ParameterValue"] for p in budget["Parameters"]} == {
        "AlertEmail": "ops@example.com", "BudgetAmountUsd": "50"}

    # Same template, no options: every parameter keeps its value, so nothing changes.
    second = invoke("deploy")
    assert second.exit_code == 0, second.output
    assert "roadsense: no changes" in second.output and "roadsense-budget: no changes" in second.output

    status = invoke("status")
    assert status.exit_code == 0, status.output
    assert "roadsense (il-central-1): CREATE_COMPLETE" in status.output
    assert "roadsense-budget (us-east-1): CREATE_COMPLETE" in status.output

    deleted = invoke("delete", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert stack.stack_outputs(aws) == {}
    assert stack.stack_outputs(boto3.Session(region_name="us-east-1"), "roadsense-budget") == {}
    aws.client("s3").head_bucket(Bucket="saferide-training-results")  # DeletionPolicy: Retain

    gone = invoke("status")
    assert gone.exit_code == 2 and "does not exist" in gone.output


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_status_prints_outputs(aws: boto3.Session) -> None:
    # moto fills Outputs only for create_stack (not for an executed change set).
    aws.client("cloudformation").create_stack(
        StackName="roadsense",
        TemplateBody=(INFRA / "roadsense.yaml").read_text(),
        Parameters=[{"ParameterKey": "SourceRepositoryUrl", "ParameterValue": SOURCE_REPO}],
        Capabilities=["CAPABILITY_IAM"],
    )
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert "roadsense-budget (us-east-1): not deployed" in result.output
    assert f"RepositoryUri = {ACCOUNT}.dkr.ecr.il-central-1.amazonaws.com/roadsense-training" in result.output
    assert "BucketName = saferide-training-results" in result.output


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_deploys_in_the_region_given_before_infra(aws: boto3.Session) -> None:
    """``roadsense-launch --region X infra deploy`` deploys the training stack in X (the budget stays in us-east-1)."""
    region = "eu-west-1"
    result = invoke("deploy", "--source-repo", SOURCE_REPO, "--alert-email", "ops@example.com", settings=("--region", region))
    assert result.exit_code == 0, result.output
    in_region = stack.describe_stack(boto3.Session(region_name=region).client("cloudformation"), "roadsense")
    assert in_region is not None and in_region["StackStatus"] == "CREATE_COMPLETE"
    assert stack.describe_stack(aws.client("cloudformation"), "roadsense") is None  # aws: the default region, il-central-1
    assert stack.describe_stack(boto3.Session(region_name=infra.BUDGET_REGION).client("cloudformation"), "roadsense-budget") is not None
    assert f"roadsense ({region}): CREATE_COMPLETE" in invoke("status", settings=("--region", region)).output
    assert invoke("status").exit_code == 2  # no stack in the default region


def test_cli_first_deploy_without_email_changes_nothing(aws: boto3.Session) -> None:
    result = invoke("deploy", "--source-repo", SOURCE_REPO)
    assert result.exit_code == 2
    assert "needs AlertEmail" in result.output and "--alert-email" in result.output
    assert stack.stack_outputs(aws) == {} and "Traceback" not in result.output


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_refuses_a_rolled_back_stack_with_the_fix(aws: boto3.Session) -> None:
    aws.client("cloudformation").create_stack(
        StackName="roadsense",
        TemplateBody=(INFRA / "roadsense.yaml").read_text(),
        Parameters=[{"ParameterKey": "SourceRepositoryUrl", "ParameterValue": SOURCE_REPO}],
        Capabilities=["CAPABILITY_IAM"],
    )
    # moto never rolls back; put the stack in the state a failed first create leaves.
    only(list(cloudformation_backends[ACCOUNT]["il-central-1"].stacks.values())).status = "ROLLBACK_COMPLETE"
    result = invoke("deploy", "--alert-email", "ops@example.com")
    assert result.exit_code == 1
    assert "ROLLBACK_COMPLETE" in result.output and "infra delete" in result.output


def test_cli_without_credentials_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    result = invoke("status")
    assert result.exit_code == 1
    assert "no AWS credentials found" in result.output and "aws configure" in result.output


def test_cli_rejects_a_malformed_param(aws: boto3.Session) -> None:
    result = invoke("deploy", "--param", "ImagesToKeep")
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_deploy_treats_an_empty_change_set_as_success(capsys: pytest.CaptureFixture[str]) -> None:
    """Real CloudFormation marks an empty change set FAILED (moto refuses it at create instead)."""
    client = boto3.client("cloudformation", region_name="il-central-1", aws_access_key_id="x", aws_secret_access_key="x")
    arn = "arn:aws:cloudformation:il-central-1:123456789012:changeSet/roadsense-1/abc"
    empty = {"Status": "FAILED",
             "StatusReason": "The submitted information didn't contain changes. Submit different information to create a change set."}
    spec = infra.StackSpec("roadsense", infra.MAIN_TEMPLATE, {}, {"SourceRepositoryUrl": "--source-repo"})
    stack = {"StackName": "roadsense", "StackStatus": "UPDATE_COMPLETE",
             "Parameters": [{"ParameterKey": "SourceRepositoryUrl", "ParameterValue": SOURCE_REPO}]}
    with Stubber(client) as stubber:
        stubber.add_response("create_change_set", {"Id": arn})
        stubber.add_response("describe_change_set", empty)  # the waiter's poll
        stubber.add_response("describe_change_set", empty)  # reading the reason
        stubber.add_response("delete_change_set", {}, {"ChangeSetName": arn})
        infra._deploy(client, spec, stack)
        stubber.assert_no_pending_responses()
    assert "roadsense: no changes" in capsys.readouterr().out


# --- CodeBuild start and follow (Stubber: moto does not run builds) ----------------------


class OneClient:
    """A session stand-in whose every client is the one stubbed client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def client(self, service: str) -> Any:
        return self._client


def build(phase: str, status: str = "IN_PROGRESS", **extra: Any) -> dict[str, Any]:
    return {"builds": [{"id": "roadsense-image:1", "currentPhase": phase, "buildStatus": status, **extra}]}


@pytest.fixture
def stubbed() -> tuple[Any, Stubber]:
    client = boto3.client("codebuild", region_name="il-central-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_start_build_requests_the_commit(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response("start_build", {"build": {"id": "roadsense-image:1"}},
                         {"projectName": "roadsense-image", "sourceVersion": "abc123"})
    assert codebuild.start_build(OneClient(client), "roadsense-image", "abc123") == "roadsense-image:1"


def test_follow_build_prints_each_phase_once_and_returns_the_uri(stubbed: tuple[Any, Stubber], capsys: pytest.CaptureFixture[str]) -> None:
    client, stubber = stubbed
    uri = f"{ACCOUNT}.dkr.ecr.il-central-1.amazonaws.com/roadsense-training:abc123"
    for phase in ("SUBMITTED", "PROVISIONING", "PROVISIONING", "BUILD"):
        stubber.add_response("batch_get_builds", build(phase), {"ids": ["roadsense-image:1"]})
    stubber.add_response(
        "batch_get_builds",
        build("COMPLETED", "SUCCEEDED", exportedEnvironmentVariables=[{"name": "IMAGE_URI", "value": uri}]),
        {"ids": ["roadsense-image:1"]},
    )
    assert codebuild.follow_build(OneClient(client), "roadsense-image:1", poll_s=0) == uri
    printed = capsys.readouterr().out.split()
    assert printed == ["SUBMITTED", "PROVISIONING", "BUILD", "COMPLETED"]


def test_follow_build_raises_with_the_failed_phase_and_logs(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    failed = build(
        "COMPLETED",
        "FAILED",
        phases=[
            {"phaseType": "PRE_BUILD", "phaseStatus": "SUCCEEDED"},
            {"phaseType": "BUILD", "phaseStatus": "FAILED",
             "contexts": [{"statusCode": "COMMAND_EXECUTION_ERROR", "message": "docker build exit 1"}]},
        ],
        logs={"deepLink": "https://console.aws.amazon.com/cloudwatch/logs"},
    )
    stubber.add_response("batch_get_builds", failed, {"ids": ["roadsense-image:1"]})
    with pytest.raises(codebuild.BuildError, match=r"FAILED in BUILD \(docker build exit 1\); logs: https://console"):
        codebuild.follow_build(OneClient(client), "roadsense-image:1", poll_s=0)


def test_follow_build_refuses_a_success_without_image_uri(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response("batch_get_builds", build("COMPLETED", "SUCCEEDED"), {"ids": ["roadsense-image:1"]})
    with pytest.raises(codebuild.BuildError, match="exported no IMAGE_URI"):
        codebuild.follow_build(OneClient(client), "roadsense-image:1", poll_s=0)


# --- buildspec.yml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def buildspec() -> dict[str, Any]:
    return yaml.safe_load(BUILDSPEC.read_text())


def commands(spec: dict[str, Any]) -> list[str]:
    return [c for phase in ("pre_build", "build", "post_build") for c in spec["phases"][phase]["commands"]]


def test_buildspec_phases_login_and_artifact(buildspec: dict[str, Any]) -> None:
    assert str(buildspec["version"]) == "0.2"
    assert {"pre_build", "build", "post_build"} <= set(buildspec["phases"])
    assert buildspec["phases"]["build"]["on-failure"] == "ABORT"  # no push after a failed build
    login = [c for c in buildspec["phases"]["pre_build"]["commands"] if "get-login-password" in c]
    assert login and "docker login" in login[0] and "$AWS_DEFAULT_REGION" in login[0]
    assert buildspec["artifacts"]["files"] == ["image-uri.txt"]
    assert codebuild.IMAGE_URI_VARIABLE in buildspec["env"]["exported-variables"]


def test_buildspec_uses_only_variables_it_sets_codebuild_sets_or_the_project_sets(buildspec: dict[str, Any],
                                                                                   template: dict[str, Any]) -> None:
    text = "\n".join(commands(buildspec))
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))
    assigned = set(re.findall(r"(?m)^\s*([A-Z_][A-Z0-9_]*)=", text))
    project = only(resources_of(template, "AWS::CodeBuild::Project"))
    from_project = {v["Name"] for v in project["Environment"]["EnvironmentVariables"]}
    assert used - assigned - CODEBUILD_VARIABLES == from_project == {"IMAGE_REPO_URI", "BASE_IMAGE"}
    assert CODEBUILD_VARIABLES <= used


def run_buildspec(spec: dict[str, Any], tmp_path: Path, image_exists: bool) -> tuple[str, str]:
    """Run the phases in one bash as CodeBuild does, with logging fakes for docker and aws."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    # `aws ecr describe-images` fails (254) for a tag that is not in the repository.
    describe_exit = 0 if image_exists else 254
    for tool, extra in (("docker", ""), ("aws", f'[ "$2" = describe-images ] && exit {describe_exit}\n')):
        script = bin_dir / tool
        script.write_text(f'#!/bin/bash\necho "{tool} $*" >> "{log}"\n{extra}exit 0\n')
        script.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "IMAGE_REPO_URI": f"{ACCOUNT}.dkr.ecr.il-central-1.amazonaws.com/roadsense-training",
        "BASE_IMAGE": "python:3.11-slim",
        "AWS_DEFAULT_REGION": "il-central-1",
        "CODEBUILD_RESOLVED_SOURCE_VERSION": "0123abcd",
    }
    script = "set -e\n" + "\n".join(commands(spec))
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, check=True)
    return log.read_text(), (tmp_path / "image-uri.txt").read_text().strip()


def test_buildspec_builds_tags_pushes_and_writes_the_uri(buildspec: dict[str, Any], tmp_path: Path) -> None:
    calls, uri = run_buildspec(buildspec, tmp_path, image_exists=False)
    repo = f"{ACCOUNT}.dkr.ecr.il-central-1.amazonaws.com/roadsense-training"
    assert uri == f"{repo}:0123abcd"
    assert f"docker login --username AWS --password-stdin {ACCOUNT}.dkr.ecr.il-central-1.amazonaws.com" in calls
    assert f"docker build -f container/Dockerfile --build-arg BASE_IMAGE=python:3.11-slim -t {repo}:0123abcd -t {repo}:latest ." in calls
    assert calls.index(f"docker push {repo}:0123abcd") < calls.index(f"docker push {repo}:latest")


def test_buildspec_does_not_rebuild_a_pushed_commit(buildspec: dict[str, Any], tmp_path: Path) -> None:
    calls, uri = run_buildspec(buildspec, tmp_path, image_exists=True)
    assert uri.endswith("roadsense-training:0123abcd")
    assert "docker build" not in calls and "docker push" not in calls
