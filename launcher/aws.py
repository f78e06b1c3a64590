"""AWS access: the session, pre-flight checks, and AWS errors turned into one line with a fix.

Every AWS call the launcher makes goes through a boto3 client from :func:`make_session`;
boto3 honours ``AWS_PROFILE`` and ``AWS_ENDPOINT_URL`` (a moto server in tests) itself.

The launcher's errors belong to roadsense's taxonomy (:mod:`roadsense.errors`): a
:class:`LaunchError` is input the user can fix (a setting, a flag, a run id in use: exit 2),
an :class:`AwsError` is AWS refusing or not answering (exit 1). :func:`translate` is the one
place a botocore exception becomes one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TypeVar, cast

import boto3
import botocore.exceptions
from botocore.config import Config

from launcher.request import MUTABLE_TAG, mutable_image
from launcher.settings import STACK_FIELDS, LaunchSettings, with_stack_outputs
from launcher.stack import OUTPUT_ROLE_ARN, stack_outputs
from roadsense.errors import RoadsenseError, RunFailed, UserError

if TYPE_CHECKING:
    # The boto3 stubs (boto3-stubs' service packages) are needed for type checking only, never at run time.
    from mypy_boto3_ecr.type_defs import ImageIdentifierTypeDef
    from mypy_boto3_s3 import S3Client

INFRA_FIX = "deploy the infrastructure: roadsense-launch infra deploy (see infra/)"
Result = TypeVar("Result")


class _Explained(Exception):
    """A message in two parts: what is wrong, and (if known) what to do about it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(f"{problem}. Fix: {fix}" if fix else problem)


class LaunchError(_Explained, UserError):
    """Input the user can fix (a setting, a flag, a run id already in use): ``str()`` is one line with the fix."""


class AwsError(_Explained, RunFailed):
    """AWS refused a call or could not be reached: ``str()`` is one line with the fix, when one is known."""


def make_session(settings: LaunchSettings) -> boto3.Session:
    """A boto3 session in the configured region and profile."""
    try:
        return boto3.Session(profile_name=settings.profile, region_name=settings.region)
    except botocore.exceptions.ProfileNotFound:
        raise LaunchError(
            f"AWS profile {settings.profile!r} is not configured",
            "aws configure --profile NAME, or unset AWS_PROFILE",
        ) from None


# For probes whose failure only means "AWS is not here": give up fast.
QUICK = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1})


def quick_s3_client(session: boto3.Session) -> S3Client:
    """An S3 client that gives up fast (:data:`QUICK`)."""
    return session.client("s3", config=QUICK)


def probe(call: Callable[[], Result]) -> Result | None:
    """``call()``'s result, or None if AWS refused it or did not answer; any other error propagates.

    For reads whose failure only means "not available here" (the infra stack, a bucket).
    """
    try:
        return call()
    except botocore.exceptions.ClientError:
        return None
    except botocore.exceptions.BotoCoreError:
        return None


def with_stack_defaults(settings: LaunchSettings) -> LaunchSettings:
    """``settings`` completed from the infra stack's outputs (see launcher.settings for the precedence).

    AWS is asked only if a stack-provided field is unset and there are credentials. A stack
    that cannot be read leaves the built-in defaults in place: commands that need AWS then
    fail in their pre-flight with a precise message, and a dry run or a local run does not
    need the stack at all.
    """
    if set(STACK_FIELDS.values()) <= settings.model_fields_set:
        return settings
    session = make_session(settings)
    if session.get_credentials() is None:
        return settings
    outputs = probe(lambda: stack_outputs(session, settings.stack_name, QUICK))
    return settings if outputs is None else with_stack_outputs(settings, outputs)


_ACCESS_FIX = (
    "use credentials allowed by the roadsense policies in infra/ (deploying infra/ needs an identity "
    "that may manage CloudFormation, IAM, S3, ECR, CodeBuild and Budgets)"
)
_LOGIN_FIX = "log in again (aws sso login, or refresh the credentials)"
_CLIENT_ERRORS: dict[str, tuple[str, str]] = {
    # code: (problem, fix); "{message}" is AWS's own message.
    "NoSuchBucket": ("the bucket does not exist", INFRA_FIX),
    "404": ("not found: {message}", INFRA_FIX),
    "AccessDenied": ("AWS denied access: {message}", _ACCESS_FIX),
    "AccessDeniedException": ("AWS denied access: {message}", _ACCESS_FIX),
    "403": ("AWS denied access", f"{_ACCESS_FIX}; or check the bucket's region"),
    "ExpiredToken": ("the AWS session token has expired", _LOGIN_FIX),
    "ExpiredTokenException": ("the AWS session token has expired", _LOGIN_FIX),
    "InvalidClientTokenId": ("the AWS access key is not valid", "check AWS_ACCESS_KEY_ID / AWS_PROFILE"),
    "UnrecognizedClientException": (
        "the AWS credentials are not valid for this region",
        "check AWS_PROFILE and --region",
    ),
    "NoSuchEntity": ("the IAM role does not exist: {message}", INFRA_FIX),
    "RepositoryNotFoundException": ("the ECR repository does not exist", INFRA_FIX),
    "ImageNotFoundException": (
        "the image is not in ECR: {message}",
        "build and push it: roadsense-launch build && roadsense-launch push, or drop --image-uri",
    ),
    "ResourceLimitExceeded": (
        "an AWS quota is exhausted: {message}",
        "request a quota increase in Service Quotas (SageMaker, il-central-1), or use another instance type",
    ),
    "ResourceInUse": ("the name is taken: {message}", "launch again (each attempt gets a new job name)"),
    "ValidationException": (
        "AWS rejected the request: {message}",
        "correct the value named above; --dry-run shows the request",
    ),
    "ThrottlingException": ("AWS is throttling requests", "wait a minute and retry"),
    "ResourceNotFound": ("not found: {message}", "check the run id: roadsense-launch list"),
}


def translate(exc: Exception) -> RoadsenseError:
    """``exc`` in the error taxonomy: a RoadsenseError as it is, a botocore error as an :class:`AwsError` (a
    :class:`LaunchError` for a profile that is not configured); anything else is re-raised (a bug)."""
    if isinstance(exc, RoadsenseError):
        return exc
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return LaunchError(str(exc), "aws configure --profile NAME, or unset AWS_PROFILE")
    if isinstance(exc, botocore.exceptions.NoCredentialsError) or isinstance(
        exc, botocore.exceptions.PartialCredentialsError
    ):
        return AwsError("no AWS credentials found", "aws configure (or aws sso login), or set AWS_PROFILE")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return AwsError(f"cannot reach AWS ({exc})", "check the network, --region and AWS_ENDPOINT_URL")
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        # AWS messages may end in a period; the problem text adds its own.
        code, message = str(error.get("Code", "")), str(error.get("Message", "")).strip().rstrip(".")
        if code in _CLIENT_ERRORS:
            problem, fix = _CLIENT_ERRORS[code]
            return AwsError(problem.format(message=message or exc.operation_name), fix)
        return AwsError(f"AWS error {code} in {exc.operation_name}: {message}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return AwsError(f"AWS client error: {exc}")
    raise exc


@dataclass(frozen=True)
class Preflight:
    """What the pre-flight found: the account and the resolved role and image (if needed)."""

    account: str
    role_arn: str
    image_uri: str | None


# The tag is optional: an image without one means :latest.
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/(?P<repo>[^:@]+)(?::(?P<tag>[^@]+)|@(?P<digest>sha256:[0-9a-f]+))?$"
)


def preflight(session: boto3.Session, settings: LaunchSettings, check_image: bool) -> Preflight:
    """Credentials, region, bucket, role and (if ``check_image``) image, in the order a user fixes them."""
    account = session.client("sts").get_caller_identity()["Account"]
    check_region(session, settings.region)
    check_bucket(session, settings.bucket, settings.region)
    role_arn = resolve_role(session, settings)
    image_uri = resolve_image(session, settings.image_uri) if check_image and settings.image_uri else settings.image_uri
    return Preflight(account=account, role_arn=role_arn, image_uri=image_uri)


def check_region(session: boto3.Session, region: str) -> None:
    if region not in session.get_available_regions("sagemaker"):
        raise LaunchError(
            f"region {region!r} has no SageMaker", "use --region il-central-1 (or another SageMaker region)"
        )


def check_bucket(session: boto3.Session, bucket: str, region: str) -> None:
    """The bucket exists and lives in ``region`` (SageMaker refuses a bucket in another region)."""
    s3 = session.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
            raise LaunchError(f"bucket {bucket!r} does not exist", INFRA_FIX) from None
        raise
    # The stubs type LocationConstraint as always a region, but AWS answers null for us-east-1.
    constraint = cast("str | None", s3.get_bucket_location(Bucket=bucket).get("LocationConstraint"))
    location = constraint or "us-east-1"
    if location != region:
        raise LaunchError(
            f"bucket {bucket!r} is in {location}, the job would run in {region}",
            f"use --region {location}, or a bucket in {region} (--bucket)",
        )


def resolve_role(session: boto3.Session, settings: LaunchSettings) -> str:
    """The execution role of the settings (the infra stack's output unless given); it must exist in IAM."""
    role_arn = settings.role_arn
    if not role_arn:
        raise LaunchError(
            f"no SageMaker execution role (no --role-arn, and stack {settings.stack_name!r} has no {OUTPUT_ROLE_ARN} "
            "output)",
            f"{INFRA_FIX}, or pass --role-arn",
        )
    try:
        session.client("iam").get_role(RoleName=role_arn.rsplit("/", 1)[-1])
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
            raise LaunchError(f"role {role_arn} does not exist", f"{INFRA_FIX}, or pass --role-arn") from None
        raise
    return role_arn


def resolve_image(session: boto3.Session, image_uri: str) -> str:
    """The immutable reference a job is launched with: an ECR image must exist, and ``:latest`` (or no
    tag), the repository's one mutable tag, becomes ``<repo>@<digest>`` (ECR DescribeImages), so the
    job runs, and its record names, the image that ``latest`` pointed to now. Commit tags are
    immutable in the stack's repository and stay. A mutable image outside ECR cannot be pinned here
    and is refused; other registries' tags and digests are not checked."""
    match = _ECR_IMAGE.match(image_uri)
    if not match:
        if mutable_image(image_uri):
            raise LaunchError(
                f"image {image_uri} uses the mutable tag 'latest' and is not in ECR, so it cannot be pinned to a "
                "digest",
                "pass --image-uri with a commit tag or an @sha256:... digest",
            )
        return image_uri
    image_id: ImageIdentifierTypeDef = {"imageDigest": match["digest"]} if match["digest"] else {"imageTag": match["tag"] or MUTABLE_TAG}
    try:
        found = session.client("ecr", region_name=match["region"]).describe_images(
            registryId=match["account"], repositoryName=match["repo"], imageIds=[image_id]
        )["imageDetails"][0]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("ImageNotFoundException", "RepositoryNotFoundException"):
            raise LaunchError(
                f"image {image_uri} is not in ECR",
                "build and push it (roadsense-launch build, then push), or drop --image-uri",
            ) from None
        raise
    if not mutable_image(image_uri):
        return image_uri
    return f"{match['account']}.dkr.ecr.{match['region']}.amazonaws.com/{match['repo']}@{found['imageDigest']}"


def s3_reachable(session: boto3.Session, bucket: str) -> bool:
    """True if there are credentials and ``bucket`` answers: decides whether a local run is published."""
    return (
        session.get_credentials() is not None
        and probe(lambda: quick_s3_client(session).head_bucket(Bucket=bucket)) is not None
    )
