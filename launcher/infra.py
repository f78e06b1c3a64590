"""``roadsense-launch infra deploy|status|delete``: the AWS resources the launcher needs.

Two CloudFormation stacks, both from ``infra/``:

* ``roadsense`` (``infra/roadsense.yaml``) in the training region: the ECR repository, the
  results bucket, the SageMaker execution role and the CodeBuild project. Its outputs are the
  launcher's defaults (:mod:`launcher.stack` reads them).
* ``roadsense-budget`` (``infra/budget.yaml``) in us-east-1: the monthly cost budget.
  AWS::Budgets::Budget does not exist in il-central-1, and a budget covers the whole
  account whichever region creates it.

``deploy`` always goes through a change set, so an update shows what it will touch and an
unchanged template is a quiet no-op rather than an error. The session (region, profile) and the
stack name are the launcher's settings, like every other command's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import boto3
import botocore.exceptions
from rich.markup import escape

from launcher.aws import AwsError, LaunchError
from launcher.display import console
from launcher.stack import (
    OUTPUT_BUCKET,
    OUTPUT_REPOSITORY_URI,
    describe_stack,
    outputs_of,
    stack_outputs,
)

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudformation.type_defs import ParameterTypeDef, StackTypeDef, WaiterConfigTypeDef

BUDGET_REGION = "us-east-1"
INFRA_DIR = Path(__file__).resolve().parent.parent / "infra"
MAIN_TEMPLATE = INFRA_DIR / "roadsense.yaml"
BUDGET_TEMPLATE = INFRA_DIR / "budget.yaml"

# Stack states from which a change set cannot proceed, with the fix for each.
_BLOCKED_STATES = {
    "ROLLBACK_COMPLETE": (
        "its first create failed and rolled back; run `roadsense-launch infra delete`, then deploy again"
    ),
    "ROLLBACK_FAILED": (
        "its first create failed and could not roll back; run `roadsense-launch infra delete`, then deploy again"
    ),
    "DELETE_FAILED": (
        "a delete failed; see the stack events in the CloudFormation console, then run `roadsense-launch infra delete` "
        "again"
    ),
    "UPDATE_ROLLBACK_FAILED": (
        "an update could not roll back; run `aws cloudformation continue-update-rollback --stack-name {stack}`"
    ),
}
_NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
_WAIT: WaiterConfigTypeDef = {"Delay": 5, "MaxAttempts": 720}  # poll every 5 s for up to an hour
# The CloudFormation waiters _wait uses, one per stack operation.
StackWaiter = Literal["stack_create_complete", "stack_update_complete", "stack_delete_complete"]


@dataclass(frozen=True)
class StackSpec:
    """One stack to deploy: where, from which template, with which parameter values."""

    name: str
    template: Path
    parameters: dict[str, str]
    required: dict[str, str]  # parameter without a default -> the deploy option that sets it


def budget_stack_name(stack_name: str) -> str:
    """The budget stack that belongs to a training stack."""
    return f"{stack_name}-budget"


def deploy(
    session: boto3.Session,
    stack_name: str,
    *,
    source_repo: str | None = None,
    alert_email: str | None = None,
    budget_usd: int | None = None,
    bucket: str | None = None,
    parameters: dict[str, str] | None = None,
) -> None:
    """Create or update both stacks, wait for them, and print the training stack's outputs.

    The options are template parameters (``parameters``: any other of infra/roadsense.yaml); those
    not given (None) keep their current value on an update.
    """
    main = StackSpec(
        stack_name,
        MAIN_TEMPLATE,
        _given({"SourceRepositoryUrl": source_repo, "BucketName": bucket, **(parameters or {})}),
        required={"SourceRepositoryUrl": "--source-repo"},
    )
    budget = StackSpec(
        budget_stack_name(stack_name),
        BUDGET_TEMPLATE,
        _given({"AlertEmail": alert_email, "BudgetAmountUsd": None if budget_usd is None else str(budget_usd)}),
        required={"AlertEmail": "--alert-email"},
    )
    plan = [
        (session.client("cloudformation"), main),
        (session.client("cloudformation", region_name=BUDGET_REGION), budget),
    ]
    # Check both stacks before changing either, so a missing option never leaves half a deploy.
    current = [_deployable(client, spec) for client, spec in plan]
    for (client, spec), stack in zip(plan, current, strict=True):
        _deploy(client, spec, stack)
    _print_outputs(stack_outputs(session, stack_name))


def status(session: boto3.Session, stack_name: str) -> None:
    """Print both stacks' states and the training stack's outputs."""
    stack = describe_stack(session.client("cloudformation"), stack_name)
    if stack is None:
        raise LaunchError(
            f"stack {stack_name!r} does not exist in {session.region_name}",
            "roadsense-launch infra deploy --source-repo URL --alert-email ADDRESS",
        )
    budget = describe_stack(session.client("cloudformation", region_name=BUDGET_REGION), budget_stack_name(stack_name))
    console.print(f"{stack_name} ({session.region_name}): {stack['StackStatus']}")
    console.print(
        f"{budget_stack_name(stack_name)} ({BUDGET_REGION}): {budget['StackStatus'] if budget else 'not deployed'}"
    )
    _print_outputs(outputs_of(stack))


def delete(session: boto3.Session, stack_name: str, confirm: Callable[[str], object]) -> None:
    """Delete both stacks once ``confirm(question)`` returns (it raises to abort; what it returns is ignored).
    The bucket and the repository are kept (they hold results and images)."""
    targets = [
        (session.client("cloudformation"), stack_name),
        (session.client("cloudformation", region_name=BUDGET_REGION), budget_stack_name(stack_name)),
    ]
    present = [(client, name) for client, name in targets if describe_stack(client, name) is not None]
    if not present:
        console.print(f"Nothing to delete: no stack {stack_name!r} in {session.region_name}.")
        return
    outputs = stack_outputs(session, stack_name)
    confirm(f"Delete {', '.join(name for _, name in present)}?")
    for client, name in present:
        console.print(f"Deleting {name} ...")
        client.delete_stack(StackName=name)
        _wait(client, "stack_delete_complete", name)
        console.print(f"{name}: deleted")
    kept = [
        f"s3://{outputs[OUTPUT_BUCKET]}" if OUTPUT_BUCKET in outputs else "",
        outputs.get(OUTPUT_REPOSITORY_URI, ""),
    ]
    if any(kept):
        console.print(f"Kept (delete them yourself once they are not needed): {escape(' '.join(k for k in kept if k))}")


def _given(values: dict[str, str | None]) -> dict[str, str]:
    return {key: value for key, value in values.items() if value is not None}


def _creating(stack: StackTypeDef | None) -> bool:
    # REVIEW_IN_PROGRESS: a create change set was made but never executed; create again.
    return stack is None or stack["StackStatus"] == "REVIEW_IN_PROGRESS"


def _deployable(client: CloudFormationClient, spec: StackSpec) -> StackTypeDef | None:
    """The current stack (None if there is none), after checking that a change set can proceed."""
    stack = describe_stack(client, spec.name)
    state = stack["StackStatus"] if stack else ""
    if state in _BLOCKED_STATES:
        raise AwsError(f"stack {spec.name!r} is {state}", _BLOCKED_STATES[state].format(stack=spec.name))
    if state.endswith("_IN_PROGRESS") and not _creating(stack):
        raise AwsError(
            f"stack {spec.name!r} is busy ({state})",
            "wait for it to finish (roadsense-launch infra status), then deploy again",
        )
    missing = [key for key in spec.required if _creating(stack) and key not in spec.parameters]
    if missing:
        options = " ".join(f"{spec.required[key]} ..." for key in missing)
        raise LaunchError(
            f"creating stack {spec.name!r} needs {', '.join(missing)}", f"roadsense-launch infra deploy {options}"
        )
    return stack


def _deploy(client: CloudFormationClient, spec: StackSpec, stack: StackTypeDef | None) -> None:
    """Create or update one stack through a change set and wait until it is done."""
    creating = _creating(stack)
    parameters: list[ParameterTypeDef] = [{"ParameterKey": k, "ParameterValue": v} for k, v in spec.parameters.items()]
    if stack is not None and not creating:
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
        raise AwsError(
            f"CloudFormation rejected the change set for {spec.name!r}: {reason}",
            "correct the template or parameters named above",
        ) from None

    console.print(f"{spec.name}: {'creating' if creating else 'updating'} ...")
    client.execute_change_set(ChangeSetName=change_set)
    _wait(client, "stack_create_complete" if creating else "stack_update_complete", spec.name)
    deployed = describe_stack(client, spec.name)
    assert deployed is not None, "the stack was just created or updated"
    console.print(f"{spec.name}: {deployed['StackStatus']}")


def _wait(client: CloudFormationClient, waiter: StackWaiter, stack_name: str) -> None:
    """Wait for a stack operation; on failure say which resource failed and why."""
    try:
        client.get_waiter(waiter).wait(StackName=stack_name, WaiterConfig=_WAIT)
    except botocore.exceptions.WaiterError:
        raise AwsError(
            f"stack {stack_name!r} failed: {_first_failure(client, stack_name)}",
            "fix the cause above; `roadsense-launch infra status` shows the state",
        ) from None


def _first_failure(client: CloudFormationClient, stack_name: str) -> str:
    """The earliest failed resource event of the latest operation (the root cause, not the rollback noise)."""
    events = client.describe_stack_events(StackName=stack_name)["StackEvents"]  # newest first
    failures = [e for e in events if e["ResourceStatus"].endswith("_FAILED") and e["LogicalResourceId"] != stack_name]
    if not failures:
        return "no resource reported a failure (see the CloudFormation console)"
    first = failures[-1]
    return f"{first['LogicalResourceId']} {first['ResourceStatus']}: {first.get('ResourceStatusReason', '')}"


def _print_outputs(outputs: dict[str, str]) -> None:
    # One line per output, never wrapped, so values can be copied from the terminal.
    for key in sorted(outputs):
        console.print(f"  {key} = {escape(outputs[key])}", soft_wrap=True)
