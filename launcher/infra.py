"""``roadsense-launch infra deploy|status|delete``: the AWS resources the launcher needs.

Two CloudFormation stacks, both from ``infra/``:

* ``roadsense`` (``infra/roadsense.yaml``) in the training region: the ECR repository, the
  results bucket, the SageMaker execution role and the CodeBuild project. Its outputs
  (:data:`OUTPUT_KEYS`) are the launcher's defaults; read them with :func:`stack_outputs`.
* ``roadsense-budget`` (``infra/budget.yaml``) in us-east-1: the monthly cost budget.
  AWS::Budgets::Budget does not exist in il-central-1, and a budget covers the whole
  account whichever region creates it.

``deploy`` always goes through a change set, so an update shows what it will touch and an
unchanged template is a quiet no-op rather than an error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import boto3
import botocore.exceptions
import typer
from botocore.config import Config
from rich.console import Console
from rich.markup import escape

DEFAULT_STACK = "roadsense"
DEFAULT_REGION = "il-central-1"
BUDGET_REGION = "us-east-1"
INFRA_DIR = Path(__file__).resolve().parent.parent / "infra"
MAIN_TEMPLATE = INFRA_DIR / "roadsense.yaml"
BUDGET_TEMPLATE = INFRA_DIR / "budget.yaml"

# Output keys of infra/roadsense.yaml.
OUTPUT_BUCKET = "BucketName"
OUTPUT_ROLE_ARN = "TrainingRoleArn"
OUTPUT_REPOSITORY_URI = "RepositoryUri"
OUTPUT_PROJECT = "CodeBuildProjectName"
OUTPUT_KEYS = (OUTPUT_BUCKET, OUTPUT_ROLE_ARN, OUTPUT_REPOSITORY_URI, OUTPUT_PROJECT)

# Stack states from which a change set cannot proceed, with the fix for each.
_BLOCKED_STATES = {
    "ROLLBACK_COMPLETE": "its first create failed and rolled back; run `roadsense-launch infra delete`, then deploy again",
    "ROLLBACK_FAILED": "its first create failed and could not roll back; run `roadsense-launch infra delete`, then deploy again",
    "DELETE_FAILED": "a delete failed; see the stack events in the CloudFormation console, then run `roadsense-launch infra delete` again",
    "UPDATE_ROLLBACK_FAILED": "an update could not roll back; run `aws cloudformation continue-update-rollback --stack-name {stack}`",
}
_NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
_WAIT = {"Delay": 5, "MaxAttempts": 720}  # poll every 5 s for up to an hour

infra_app = typer.Typer(help="Create, inspect or delete the AWS infrastructure (CloudFormation).", no_args_is_help=True)
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

Region = Annotated[str, typer.Option("--region", envvar=["AWS_REGION", "AWS_DEFAULT_REGION"], help="Region of the training stack.")]
Profile = Annotated[str | None, typer.Option("--profile", envvar="AWS_PROFILE", help="AWS profile; default: the credential chain.")]
StackName = Annotated[str, typer.Option("--stack-name", help="Name of the training stack.")]


class InfraError(Exception):
    """A problem the user can fix: what is wrong and what to do about it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}. Fix: {fix}")


@dataclass(frozen=True)
class StackSpec:
    """One stack to deploy: where, from which template, with which parameter values."""

    name: str
    template: Path
    parameters: dict[str, str]
    required: dict[str, str]  # parameter without a default -> the deploy option that sets it


def stack_outputs(session: boto3.Session, stack_name: str = DEFAULT_STACK, client_config: Config | None = None) -> dict[str, str]:
    """The stack's outputs as ``{key: value}``; ``{}`` if the stack does not exist.

    ``client_config`` lets a caller that can do without the stack give up fast.
    """
    stack = _describe(session.client("cloudformation", config=client_config), stack_name)
    if stack is None:
        return {}
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def budget_stack_name(stack_name: str) -> str:
    """The budget stack that belongs to a training stack."""
    return f"{stack_name}-budget"


@infra_app.command()
def deploy(
    source_repo: Annotated[str | None, typer.Option(help="GitHub HTTPS URL CodeBuild clones (needed on the first deploy).")] = None,
    alert_email: Annotated[str | None, typer.Option(help="Budget alert address (needed on the first deploy).")] = None,
    budget_usd: Annotated[int | None, typer.Option(min=1, help="Monthly budget in USD (template default: 100).")] = None,
    bucket: Annotated[str | None, typer.Option(help="Results bucket name (template default: saferide-training-results).")] = None,
    param: Annotated[list[str] | None, typer.Option(help="Any other template parameter, KEY=VALUE; repeatable.")] = None,
    region: Region = DEFAULT_REGION,
    profile: Profile = None,
    stack_name: StackName = DEFAULT_STACK,
) -> None:
    """Create or update the stacks, wait for them, and print the training stack's outputs.

    Parameters not given keep their current value on an update.
    """
    with _user_errors():
        session = _session(region, profile)
        main = StackSpec(
            name=stack_name,
            template=MAIN_TEMPLATE,
            parameters=_drop_none({"SourceRepositoryUrl": source_repo, "BucketName": bucket, **_key_values(param or [])}),
            required={"SourceRepositoryUrl": "--source-repo"},
        )
        budget = StackSpec(
            name=budget_stack_name(stack_name),
            template=BUDGET_TEMPLATE,
            parameters=_drop_none({"AlertEmail": alert_email, "BudgetAmountUsd": None if budget_usd is None else str(budget_usd)}),
            required={"AlertEmail": "--alert-email"},
        )
        plan = [(session.client("cloudformation"), main), (session.client("cloudformation", region_name=BUDGET_REGION), budget)]
        # Check both stacks before changing either, so a missing option never leaves half a deploy.
        current = [_deployable(client, spec) for client, spec in plan]
        for (client, spec), stack in zip(plan, current):
            _deploy(client, spec, stack)
        _print_outputs(stack_outputs(session, stack_name))


@infra_app.command()
def status(region: Region = DEFAULT_REGION, profile: Profile = None, stack_name: StackName = DEFAULT_STACK) -> None:
    """Show both stacks' states and the training stack's outputs."""
    with _user_errors():
        session = _session(region, profile)
        stack = _describe(session.client("cloudformation"), stack_name)
        if stack is None:
            raise InfraError(f"stack {stack_name!r} does not exist in {region}", "roadsense-launch infra deploy --source-repo URL --alert-email ADDRESS")
        budget = _describe(session.client("cloudformation", region_name=BUDGET_REGION), budget_stack_name(stack_name))
        console.print(f"{stack_name} ({region}): {stack['StackStatus']}")
        console.print(f"{budget_stack_name(stack_name)} ({BUDGET_REGION}): {budget['StackStatus'] if budget else 'not deployed'}")
        _print_outputs({o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])})


@infra_app.command()
def delete(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    region: Region = DEFAULT_REGION,
    profile: Profile = None,
    stack_name: StackName = DEFAULT_STACK,
) -> None:
    """Delete both stacks. The bucket and the repository are kept (they hold results and images)."""
    with _user_errors():
        session = _session(region, profile)
        targets = [
            (session.client("cloudformation"), stack_name),
            (session.client("cloudformation", region_name=BUDGET_REGION), budget_stack_name(stack_name)),
        ]
        present = [(client, name) for client, name in targets if _describe(client, name) is not None]
        if not present:
            console.print(f"Nothing to delete: no stack {stack_name!r} in {region}.")
            return
        outputs = stack_outputs(session, stack_name)
        if not yes:
            typer.confirm(f"Delete {', '.join(name for _, name in present)}?", abort=True)
        for client, name in present:
            console.print(f"Deleting {name} ...")
            client.delete_stack(StackName=name)
            _wait(client, "stack_delete_complete", name)
            console.print(f"{name}: deleted")
        kept = [f"s3://{outputs[OUTPUT_BUCKET]}" if OUTPUT_BUCKET in outputs else "", outputs.get(OUTPUT_REPOSITORY_URI, "")]
        if any(kept):
            console.print(f"Kept (delete them yourself once they are not needed): {escape(' '.join(k for k in kept if k))}")


def _creating(stack: dict[str, Any] | None) -> bool:
    # REVIEW_IN_PROGRESS: a create change set was made but never executed; create again.
    return stack is None or stack["StackStatus"] == "REVIEW_IN_PROGRESS"


def _deployable(client: Any, spec: StackSpec) -> dict[str, Any] | None:
    """The current stack (None if there is none), after checking that a change set can proceed."""
    stack = _describe(client, spec.name)
    state = stack["StackStatus"] if stack else ""
    if state in _BLOCKED_STATES:
        raise InfraError(f"stack {spec.name!r} is {state}", _BLOCKED_STATES[state].format(stack=spec.name))
    if state.endswith("_IN_PROGRESS") and not _creating(stack):
        raise InfraError(f"stack {spec.name!r} is busy ({state})", "wait for it to finish (roadsense-launch infra status), then deploy again")
    missing = [key for key in spec.required if _creating(stack) and key not in spec.parameters]
    if missing:
        options = " ".join(f"{spec.required[key]} ..." for key in missing)
        raise InfraError(f"creating stack {spec.name!r} needs {', '.join(missing)}", f"roadsense-launch infra deploy {options}")
    return stack


def _deploy(client: Any, spec: StackSpec, stack: dict[str, Any] | None) -> None:
    """Create or update one stack through a change set and wait until it is done."""
    creating = _creating(stack)
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in spec.parameters.items()]
    if not creating:
        # Keep every current value the caller did not override.
        parameters += [
            {"ParameterKey": p["ParameterKey"], "UsePreviousValue": True}
            for p in stack.get("Parameters", [])
            if p["ParameterKey"] not in spec.parameters
        ]
    try:
        change_set = client.create_change_set(
            StackName=spec.name,
            ChangeSetName=f"roadsense-{time.strftime('%Y%m%d-%H%M%S')}",
            ChangeSetType="CREATE" if creating else "UPDATE",
            TemplateBody=spec.template.read_text(),
            Parameters=parameters,
            Capabilities=["CAPABILITY_IAM"],
        )["Id"]
        client.get_waiter("change_set_create_complete").wait(ChangeSetName=change_set, WaiterConfig=_WAIT)
    except botocore.exceptions.ClientError as exc:
        # Some endpoints refuse an empty change set outright instead of marking it FAILED.
        if not any(text in exc.response.get("Error", {}).get("Message", "") for text in _NO_CHANGES):
            raise
        console.print(f"{spec.name}: no changes")
        return
    except botocore.exceptions.WaiterError:
        reason = client.describe_change_set(ChangeSetName=change_set).get("StatusReason", "")
        if any(text in reason for text in _NO_CHANGES):
            client.delete_change_set(ChangeSetName=change_set)
            console.print(f"{spec.name}: no changes")
            return
        raise InfraError(f"CloudFormation rejected the change set for {spec.name!r}: {reason}", "correct the template or parameters named above") from None

    console.print(f"{spec.name}: {'creating' if creating else 'updating'} ...")
    client.execute_change_set(ChangeSetName=change_set)
    _wait(client, "stack_create_complete" if creating else "stack_update_complete", spec.name)
    console.print(f"{spec.name}: {_describe(client, spec.name)['StackStatus']}")


def _wait(client: Any, waiter: str, stack_name: str) -> None:
    """Wait for a stack operation; on failure say which resource failed and why."""
    try:
        client.get_waiter(waiter).wait(StackName=stack_name, WaiterConfig=_WAIT)
    except botocore.exceptions.WaiterError:
        raise InfraError(f"stack {stack_name!r} failed: {_first_failure(client, stack_name)}", "fix the cause above; `roadsense-launch infra status` shows the state") from None


def _first_failure(client: Any, stack_name: str) -> str:
    """The earliest failed resource event of the latest operation (the root cause, not the rollback noise)."""
    events = client.describe_stack_events(StackName=stack_name)["StackEvents"]  # newest first
    failures = [e for e in events if e["ResourceStatus"].endswith("_FAILED") and e["LogicalResourceId"] != stack_name]
    if not failures:
        return "no resource reported a failure (see the CloudFormation console)"
    first = failures[-1]
    return f"{first['LogicalResourceId']} {first['ResourceStatus']}: {first.get('ResourceStatusReason', '')}"


def _describe(client: Any, stack_name: str) -> dict[str, Any] | None:
    """The stack's description, or None if there is no such stack."""
    try:
        return client.describe_stacks(StackName=stack_name)["Stacks"][0]
    except botocore.exceptions.ClientError as exc:
        if "does not exist" in exc.response.get("Error", {}).get("Message", ""):
            return None
        raise


def _print_outputs(outputs: dict[str, str]) -> None:
    # One line per output, never wrapped, so values can be copied from the terminal.
    for key in sorted(outputs):
        console.print(f"  {key} = {escape(outputs[key])}", soft_wrap=True)


def _session(region: str, profile: str | None) -> boto3.Session:
    try:
        return boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound:
        raise InfraError(f"AWS profile {profile!r} is not configured", f"aws configure --profile {profile}, or drop --profile / AWS_PROFILE") from None


def _key_values(pairs: list[str]) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InfraError(f"--param {pair!r} is not KEY=VALUE", "write it as --param ImagesToKeep=30")
        parsed[key] = value
    return parsed


def _drop_none(values: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn what a user can run into (credentials, AWS refusals, stack states) into one line and exit 1."""
    try:
        yield
    except InfraError as exc:
        message = str(exc)
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
        message = "no AWS credentials found. Fix: aws configure (or aws sso login), or set AWS_PROFILE"
    except botocore.exceptions.EndpointConnectionError as exc:
        message = f"cannot reach AWS ({exc}). Fix: check the network and --region"
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        aws_message = str(error.get("Message", "")).rstrip(".")
        message = f"AWS refused {exc.operation_name}: {error.get('Code')}: {aws_message}. Fix: {_client_error_fix(error.get('Code', ''))}"
    else:
        return
    errors.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def _client_error_fix(code: str) -> str:
    if code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException"):
        return "refresh the credentials (aws sso login) or check AWS_PROFILE"
    if code in ("AccessDenied", "AccessDeniedException", "InsufficientCapabilitiesException"):
        return "deploy with an identity that may manage CloudFormation, IAM, S3, ECR, CodeBuild and Budgets"
    return "correct the value AWS names above and run the command again"
