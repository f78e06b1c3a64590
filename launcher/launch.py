"""A launch from start to end: check, build, upload, create the job (or run it here), record it.

The CLI and the sweep both call :func:`launch`; everything it needs is in
:class:`LaunchOptions` and the :class:`~launcher.settings.LaunchSettings`. A cloud job is
planned (:func:`plan_cloud`: checked, its request built once with the real role and image and
validated) before it is prepared (:func:`prepare_cloud`: prefix, image build, dataset upload),
so a bad setting is refused before anything is built, deleted or uploaded.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3

from launcher import aws, display, image, jobs, record
from launcher.codebuild import BuildError
from launcher.cost import CostEstimate, estimate
from launcher.fetch import fetch_job
from launcher.layout import RunLayout, job_name, validate_run_id
from launcher.local import LOCAL_CHECKPOINTS, SAGEMAKER_ROOT, run_local
from launcher.remote import check_listed_key
from launcher.request import JobSpec, build_request, mutable_image
from launcher.settings import LaunchSettings
from launcher.store import LocalRunStore, S3RunStore
from launcher.upload import upload_tree
from roadsense.config import ConfigError, CostConfig, PipelineConfig, parse_set_options
from roadsense.provenance import git_commit
from roadsense.scenarios.dataset import verify_or_raise

if TYPE_CHECKING:
    from mypy_boto3_sagemaker.type_defs import CreateTrainingJobRequestTypeDef

# A local run has no SageMaker role; the request still needs a well-formed one for its record.
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/local-run"


@dataclass(frozen=True)
class LaunchOptions:
    """What one launch does; the defaults are a plain cloud launch."""

    run_id: str
    preset: str = "production"
    sets: tuple[str, ...] = ()
    dataset: Path | None = None
    spot: bool = False
    resume: bool = False
    force: bool = False
    wait: bool = False
    local: bool = False
    engine: str | None = None
    builder: str = "codebuild"
    dry_run: bool = False
    parent_run_id: str | None = None
    show_progress: bool = True
    allow_overrun: bool = False  # launch even if the estimate exceeds the max runtime
    network_isolation: bool = True  # EnableNetworkIsolation: the container gets no network


@dataclass(frozen=True)
class Launched:
    run_id: str
    job_name: str
    request: CreateTrainingJobRequestTypeDef
    status: str = "InProgress"
    failure_reason: str = ""


def training_config(preset: str, sets: dict[str, str], instance_type: str) -> PipelineConfig:
    """The pipeline config of the job, priced at the instance it runs on (for provenance and cost)."""
    overrides = {**sets, "instance_type": sets.get("instance_type", instance_type)}
    if overrides["instance_type"] != instance_type:
        raise ConfigError(
            f"--set instance_type={overrides['instance_type']} differs from the launch instance {instance_type}; "
            "drop it"
        )
    if instance_type != CostConfig().instance_type and "instance_price_per_hour" not in sets:
        raise ConfigError(
            f"the price of {instance_type} is not known; add --set instance_price_per_hour=<on-demand USD/h in the "
            "region>"
        )
    return PipelineConfig.from_overrides(preset, overrides)


def check_launch(options: LaunchOptions, settings: LaunchSettings) -> tuple[PipelineConfig, CostEstimate | None]:
    """What every launch checks before anything else, without AWS: the run id, the config priced at the
    instance it runs on, and the estimated duration against the max runtime (for SageMaker)."""
    validate_run_id(options.run_id)
    config = training_config(options.preset, parse_set_options(list(options.sets)), settings.instance_type)
    cost = estimate(config, settings.instance_count)
    refuse_overrun(options, cost, settings.max_runtime_s)
    return config, cost


def plan(
    options: LaunchOptions, settings: LaunchSettings, role_arn: str, image_uri: str, commit: str
) -> tuple[CreateTrainingJobRequestTypeDef, CostEstimate | None]:
    """The validated CreateTrainingJob request and the cost estimate; touches nothing."""
    config, cost = check_launch(options, settings)
    spec = JobSpec(
        run_id=options.run_id,
        job_name=job_name(options.run_id),
        image_uri=image_uri,
        role_arn=role_arn,
        hyperparameters=config.to_hyperparameters(),
        git_commit=commit,
        preset=options.preset,
        spot=options.spot,
        with_dataset=options.dataset is not None,
        parent_run_id=options.parent_run_id,
        network_isolation=options.network_isolation,
    )
    return build_request(spec, settings), cost


def refuse_overrun(options: LaunchOptions, cost: CostEstimate | None, max_runtime_s: int) -> None:
    """Refuse a SageMaker job that would be stopped at its max runtime before it finishes (hours of
    instance time for a checkpoint). A --local run has no max runtime; an unknown instance size
    has no estimate; --allow-overrun launches anyway."""
    if options.local or options.allow_overrun or cost is None or cost.hours * 3600 <= max_runtime_s:
        return
    needed = math.ceil(cost.hours * 10) / 10
    raise aws.LaunchError(
        f"the run is estimated to take ~{cost.hours:.1f} h on {cost.instance_type} "
        f"(~{cost.steps_per_second:.0f} steps/s, roadsense/estimate.py), more than the max runtime of "
        f"{max_runtime_s / 3600:.1f} h",
        f"raise --max-runtime-hours to at least {needed:.1f}, or lower total_timesteps (--set total_timesteps=N), "
        "or pass --allow-overrun to launch anyway",
    )


def dry_run_request(
    options: LaunchOptions, settings: LaunchSettings
) -> tuple[CreateTrainingJobRequestTypeDef, CostEstimate | None]:
    """The request a launch would send. AWS is read (never written), and only when the role or an
    immutable image was not given: then the request is the one :func:`plan_cloud` plans, with the
    digest a :latest resolves to now."""
    commit = git_commit()
    if options.local:
        return plan(options, settings, settings.role_arn or LOCAL_ROLE_ARN, _local_image(settings, commit), commit)
    if settings.role_arn and settings.image_uri and not mutable_image(settings.image_uri):
        return plan(options, settings, settings.role_arn, settings.image_uri, commit)
    planned = plan_cloud(options, settings, aws.make_session(settings))
    return planned.request, planned.cost


def _local_image(settings: LaunchSettings, commit: str) -> str:
    return settings.image_uri or f"{image.LOCAL_IMAGE}:{commit}"


def _built_image_uri(settings: LaunchSettings, account: str, commit: str) -> str:
    """The image a launch builds when none is given: both builders push ``<repository>:<commit>`` to ECR."""
    return image.ecr_image_uri(account, settings.region, settings.ecr_repository, commit)


def _refuse_reuse(location: str, options: LaunchOptions) -> None:
    raise aws.LaunchError(
        f"run id {options.run_id!r} already holds a run ({location})",
        "choose a new --run-id, or --resume to continue from its checkpoints, or --force to start over",
    )


def launch(options: LaunchOptions, settings: LaunchSettings) -> Launched:
    """Run the launch ``options`` asks for (dry runs are :func:`dry_run_request`)."""
    return _launch_local(options, settings) if options.local else _launch_cloud(options, settings)


@dataclass(frozen=True)
class CloudPlan:
    """A cloud launch checked and its request built and validated, before anything in AWS changes."""

    request: CreateTrainingJobRequestTypeDef
    cost: CostEstimate | None
    build_image: bool  # no image was given: the request names the one a build of this commit pushes


def plan_cloud(options: LaunchOptions, settings: LaunchSettings, session: boto3.Session) -> CloudPlan:
    """Everything a cloud job (a training job, a tuning job, the SDK's) is checked against before it is prepared:
    the dataset verified, the pre-flight (credentials, region, bucket, role, image; an ECR :latest pinned to its
    digest) and the request, built once with the real role and image and validated. Only reads AWS."""
    if options.dataset is not None:
        verify_or_raise(options.dataset)
    checked = aws.preflight(session, settings, check_image=True)
    commit = git_commit()
    request, cost = plan(
        options,
        settings,
        checked.role_arn,
        checked.image_uri or _built_image_uri(settings, checked.account, commit),
        commit,
    )
    return CloudPlan(request, cost, build_image=checked.image_uri is None)


def prepare_cloud(planned: CloudPlan, options: LaunchOptions, settings: LaunchSettings, session: boto3.Session) -> None:
    """What a planned cloud job needs before it is created: its run id's prefix (refused if in use, unless
    --resume or --force; --force deletes its checkpoints), its image (built unless given) and its dataset upload."""
    s3 = session.client("s3")
    layout = RunLayout(settings.bucket, options.run_id)
    if record.prefix_in_use(s3, layout) and not (options.resume or options.force):
        _refuse_reuse(layout.uri(), options)
    if options.force:
        # Starting over: old checkpoints would otherwise be resumed by the container. Every key is
        # checked before the first is deleted, so a crafted one stops the launch with nothing deleted.
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=layout.bucket, Prefix=layout.checkpoints_key)
        keys = [
            check_listed_key(layout.bucket, item["Key"], layout.checkpoints_key)
            for page in pages
            for item in page.get("Contents", [])
        ]
        for key in keys:
            s3.delete_object(Bucket=layout.bucket, Key=key)
    if planned.build_image:
        _build_image(options, settings, session, planned)
    if options.dataset is not None:
        upload_tree(s3, options.dataset, layout.bucket, layout.dataset_key)


def _build_image(options: LaunchOptions, settings: LaunchSettings, session: boto3.Session, planned: CloudPlan) -> None:
    """Build and push the image the planned request names (the commit's), with CodeBuild or here."""
    commit = planned.request["Environment"]["ROADSENSE_GIT_COMMIT"]
    if options.builder == "local":
        local_name = image.build_locally(
            options.engine or "docker", commit, Path.cwd(), {"ROADSENSE_GIT_COMMIT": commit}
        )
        pushed = image.push(session, options.engine or "docker", local_name, settings)
    else:
        pushed = image.build_with_codebuild(session, settings, commit)
    expected = planned.request["AlgorithmSpecification"]["TrainingImage"]
    if pushed != expected:
        # CodeBuild pushes to the stack's repository; the request names settings.ecr_repository.
        raise BuildError(
            f"the build pushed {pushed}, but the job would run {expected}; set ecr_repository to the "
            "infra stack's repository (or pass --image-uri)"
        )


def _launch_cloud(options: LaunchOptions, settings: LaunchSettings) -> Launched:
    session = aws.make_session(settings)
    planned = plan_cloud(options, settings, session)
    prepare_cloud(planned, options, settings, session)
    request, name = planned.request, planned.request["TrainingJobName"]
    jobs.create_job(session.client("sagemaker"), request)
    store = S3RunStore(session.client("s3"), settings.bucket, settings.limits)
    commit = request["Environment"]["ROADSENSE_GIT_COMMIT"]
    record.write_record(
        store,
        options.run_id,
        record.add_attempt(
            record.read_record(store, options.run_id), options.run_id, record.new_attempt(request, commit, "sagemaker")
        ),
    )
    cost = planned.cost
    display.console.print(
        f"[bold]{name}[/] created for run {options.run_id}" + (f"; {cost.describe()}" if cost else "")
    )
    # Never wrapped: a command and a URL to copy.
    display.console.print(f"  follow:  roadsense-launch logs {options.run_id} --follow", soft_wrap=True)
    display.console.print(
        f"  console: https://{settings.region}.console.aws.amazon.com/sagemaker/home?region={settings.region}#/jobs/{name}",
        soft_wrap=True,
    )
    if not options.wait:
        return Launched(options.run_id, name, request)
    final = jobs.follow_with_progress(session, name, options.show_progress)
    if final.status == "Completed":
        model = fetch_job(store, options.run_id, name, settings.runs_dir / options.run_id)
        display.console.print(f"results: {model}")
    return Launched(options.run_id, name, request, final.status, final.failure_reason)


def _launch_local(options: LaunchOptions, settings: LaunchSettings) -> Launched:
    if options.dataset is not None:
        verify_or_raise(options.dataset)
    commit = git_commit()
    request, cost = plan(options, settings, settings.role_arn or LOCAL_ROLE_ARN, _local_image(settings, commit), commit)
    store = LocalRunStore(settings.runs_dir, settings.bucket, settings.limits)
    run_dir = settings.runs_dir / options.run_id
    previous = record.read_record(store, options.run_id)
    if previous is not None and not (options.resume or options.force):
        _refuse_reuse(str(run_dir), options)
    if options.force:
        shutil.rmtree(run_dir / LOCAL_CHECKPOINTS, ignore_errors=True)
    record.write_record(
        store,
        options.run_id,
        record.add_attempt(previous, options.run_id, record.new_attempt(request, commit, "local")),
    )
    if cost:
        display.console.print(f"on SageMaker this would take {cost.describe()}")
    with display.MetricProgress(request["TrainingJobName"], enabled=options.show_progress) as bar:
        result = run_local(
            run_dir,
            request,
            settings.container_command,
            options.dataset,
            engine=options.engine,
            image=request["AlgorithmSpecification"]["TrainingImage"],
            on_line=bar.on_line,
        )
    if result.status == "Completed":
        fetch_job(store, options.run_id, result.job_name, run_dir)
    publish_local_run(settings, options.run_id)
    return Launched(options.run_id, result.job_name, request, result.status, result.failure_reason)


def publish_local_run(settings: LaunchSettings, run_id: str) -> bool:
    """Upload a local run's mirror to its S3 prefix when the bucket is reachable; True if it was."""
    session = aws.make_session(settings)
    if not aws.s3_reachable(session, settings.bucket):
        return False
    layout = RunLayout(settings.bucket, run_id)
    s3, run_dir = session.client("s3"), settings.runs_dir / run_id
    # Only what SageMaker would have put in S3: not the job's working folder, not the extracted results;
    # the checkpoints go where a cloud run's live, so a cloud --resume continues a local run.
    upload_tree(
        s3, run_dir, layout.bucket, layout.prefix, exclude=(SAGEMAKER_ROOT, "model", "output-data", LOCAL_CHECKPOINTS)
    )
    if (run_dir / LOCAL_CHECKPOINTS).is_dir():
        upload_tree(s3, run_dir / LOCAL_CHECKPOINTS, layout.bucket, layout.checkpoints_key)
    display.console.print(f"published to {layout.uri()} and {layout.checkpoints_uri}")
    return True
