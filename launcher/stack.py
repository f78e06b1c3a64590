"""The infra stack as the launcher reads it: its name, its outputs, and its description.

``infra/roadsense.yaml`` deployed as the ``roadsense`` stack (``roadsense-launch infra deploy``,
see :mod:`launcher.infra`) holds the bucket, the execution role, the ECR repository and the
CodeBuild project; its outputs (:data:`OUTPUT_KEYS`) are the launcher's defaults
(:mod:`launcher.settings`). This module only reads, so the settings and the AWS session can use
it without depending on the deploy code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
import botocore.exceptions
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudformation.type_defs import StackTypeDef

DEFAULT_STACK = "roadsense"

# Output keys of infra/roadsense.yaml.
OUTPUT_BUCKET = "BucketName"
OUTPUT_ROLE_ARN = "TrainingRoleArn"
OUTPUT_REPOSITORY_URI = "RepositoryUri"
OUTPUT_PROJECT = "CodeBuildProjectName"
OUTPUT_KEYS = (OUTPUT_BUCKET, OUTPUT_ROLE_ARN, OUTPUT_REPOSITORY_URI, OUTPUT_PROJECT)


def describe_stack(client: CloudFormationClient, stack_name: str) -> StackTypeDef | None:
    """The stack's description from a CloudFormation client, or None if there is no such stack."""
    try:
        return client.describe_stacks(StackName=stack_name)["Stacks"][0]
    except botocore.exceptions.ClientError as exc:
        if "does not exist" in exc.response.get("Error", {}).get("Message", ""):
            return None
        raise


def outputs_of(stack: StackTypeDef) -> dict[str, str]:
    """A described stack's outputs as ``{key: value}``."""
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def stack_outputs(
    session: boto3.Session, stack_name: str = DEFAULT_STACK, client_config: Config | None = None
) -> dict[str, str]:
    """The stack's outputs as ``{key: value}``; ``{}`` if the stack does not exist.

    ``client_config`` lets a caller that can do without the stack give up fast.
    """
    stack = describe_stack(session.client("cloudformation", config=client_config), stack_name)
    return {} if stack is None else outputs_of(stack)
