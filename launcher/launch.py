"""A launch from start to end: check, build, upload, create the job (or run it here), record it.

The CLI and the sweep both call :func:`launch`; everything it needs is in
:class:`LaunchOptions` and the :class:`~launcher.settings.LaunchSettings`.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from launcher import aws, display, image, jobs, record
from launcher.cost import CostEstimate, estimate
from launcher.fetch import extract_results, fetch_run
from launcher.layout import RunLayout, job_name, validate_run_id
from launcher.local import LOCAL_CHECKPOINTS, SCRATCH, run_local
from launcher.remote import check_listed_key
from launcher.request import JobSpec, build_request, mutable_image
from launcher.settings import LaunchSettings
from launcher.upload import upload_tree, verify_dataset
from roadsense.config import CostConfig, ConfigError, PipelineConfig, parse_set_options

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
    request: dict[str, Any]
    status: str = "InProgress"
    failure_reason: str = ""


def training_config(preset: str, sets: dict[str, str], instance_type: str) -> PipelineConfig:
    """The pipeline config of the job, priced at the instance it runs on (for provenance and cost)."""
    overrides = {**sets, "instance_type": sets.get("instance_type", instance_type)}
    if overrides["instance_type"] != instance_type:
        raise ConfigError(f"--set instance_type={overrides['instance_type']} differs from the launch instance {instance_type}; drop it")
    if instance_type != CostConfig().instance_type and "instance_price_per_hour" not in sets:
        raise ConfigError(
            f"the price of {instance_type} is not known; add --set instance_price_per_hour=<on-demand USD/h in the region>"
        )
    return PipelineConfig.from_overrides(preset, overrides)


def git_commit(repo: Path | None = None) -> str:
    """HEAD of the repository at ``repo`` (the working directory), or ``unknown`` outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def plan(options: LaunchOptions, settings: LaunchSettings, role_arn: str, image_uri: str, commit: str) -> tuple[dict[str, Any], CostEstimate | None]:
    """The validated CreateTrainingJob request and the cost estimate; touches nothing."""
    validate_run_id(options.run_id)
    config = training_config(options.preset, parse_set_options(list(options.sets)), settings.instance_type)
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
    cost = estimate(config, settings.instance_count)
    refuse_overrun(options, cost, settings.max_runtime_s)
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
        f"(~{cost.steps_per_second:.0f} steps/s, roadsense/estimate.py), more than the max runtime of {max_runtime_s / 3600:.1f} h",
        f"raise --max-runtime-hours to at least {needed:.1f}, or lower total_timesteps (--set total_timesteps=N), "
        "or pass --allow-overrun to launch anyway",
    )


def dry_run_request(options: LaunchOptions, settings: LaunchSettings) -> tuple[dict[str, Any], CostEstimate | None]:
    """The request a launch would send. AWS is read (never written) only for what was not given."""
    commit = git_commit()
    if options.local:
        return plan(options, settings, settings.role_arn or LOCAL_ROLE_ARN, _local_image(settings, commit), commit)
    if settings.role_arn and settings.image_uri and not mutable_image(settings.image_uri):
        return plan(options, settings, settings.role_arn, settings.image_uri, commit)
    session = aws.make_session(settings)
    try:
        account = session.client("sts").get_caller_identity()["Account"]
        role = aws.resolve_role(session, settings)
        # The request shows the digest a :latest resolves to now, as the launch would send it.
        uri = aws.resolve_image(session, settings.image_uri) if settings.image_uri else image.ecr_image_uri(account, settings.region, settings.ecr_repository, commit)
    except Exception as exc:  # noqa: BLE001 - translate() re-raises what it does not know
        raise aws.translate(exc) from None
    return plan(options, settings, role, uri, commit)


def _local_image(settings: LaunchSettings, commit: str) -> str:
    return settings.image_uri or f"{image.LOCAL_IMAGE}:{commit}"


def _refuse_reuse(location: str, options: LaunchOptions) -> None:
    raise aws.LaunchError(
        f"run id {options.run_id!r} already holds a run ({location})",
        "choose a new --run-id, or --resume to continue from its checkpoints, or --force to start over",
    )


def launch(options: LaunchOptions, settings: LaunchSettings) -> Launched:
    """Run the launch ``options`` asks for (dry runs are :func:`dry_run_request`)."""
    # Settings, config and request shape are checked before anything is built, uploaded or run;
    # the role and image are placeholders here and checked (an ECR :latest pinned) by the pre-flight.
    plan(options, settings, LOCAL_ROLE_ARN, f"{image.LOCAL_IMAGE}:unknown", "unknown")
    if options.dataset is not None:
        verify_dataset(options.dataset)
    return _launch_local(options, settings) if options.local else _launch_cloud(options, settings)


def _launch_cloud(options: LaunchOptions, settings: LaunchSettings) -> Launched:
    session = aws.make_session(settings)
    try:
        return _launch_cloud_steps(options, settings, session)
    except Exception as exc:  # noqa: BLE001 - translate() re-raises what it does not know
        raise aws.translate(exc) from None


def prepare_cloud(options: LaunchOptions, settings: LaunchSettings, session: boto3.Session) -> tuple[dict[str, Any], CostEstimate | None]:
    """Everything before a cloud job is created, for a training job and a tuning job alike: the pre-flight, the run
    id's prefix (refused if in use, unless --resume or --force), the image (built unless given; a :latest pinned to
    its digest), the validated request and the dataset upload. Raw boto errors propagate (callers translate them)."""
    checked = aws.preflight(session, settings, check_image=True)
    s3 = session.client("s3")
    layout = RunLayout(settings.bucket, options.run_id)
    if record.prefix_in_use(s3, layout) and not (options.resume or options.force):
        _refuse_reuse(layout.uri(), options)
    if options.force:
        # Starting over: old checkpoints would otherwise be resumed by the container. Every key is
        # checked before the first is deleted, so a crafted one stops the launch with nothing deleted.
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=layout.bucket, Prefix=layout.checkpoints_key)
        keys = [check_listed_key(layout.bucket, item["Key"], layout.checkpoints_key) for page in pages for item in page.get("Contents", [])]
        for key in keys:
            s3.delete_object(Bucket=layout.bucket, Key=key)
    commit = git_commit()
    image_uri = checked.image_uri or _build_image(options, settings, session, checked.account, commit)
    request, cost = plan(options, settings, checked.role_arn, image_uri, commit)
    if options.dataset is not None:
        upload_tree(s3, options.dataset, layout.bucket, layout.dataset_key)
    return request, cost


def _launch_cloud_steps(options: LaunchOptions, settings: LaunchSettings, session: boto3.Session) -> Launched:
    request, cost = prepare_cloud(options, settings, session)
    s3 = session.client("s3")
    layout = RunLayout(settings.bucket, options.run_id)
    jobs.create_job(session.client("sagemaker"), request)
    previous = record.read_record(s3, layout, settings.limits)
    commit = request["Environment"]["ROADSENSE_GIT_COMMIT"]
    record.write_record(s3, layout, record.add_attempt(previous, options.run_id, record.new_attempt(request, commit, "sagemaker")))
    name = request["TrainingJobName"]
    display.console.print(f"[bold]{name}[/] created for run {options.run_id}" + (f"; {cost.describe()}" if cost else ""))
    # Never wrapped: a command and a URL to copy.
    display.console.print(f"  follow:  roadsense-launch logs {options.run_id} --follow", soft_wrap=True)
    display.console.print(f"  console: https://{settings.region}.console.aws.amazon.com/sagemaker/home?region={settings.region}#/jobs/{name}", soft_wrap=True)
    if not options.wait:
        return Launched(options.run_id, name, request)
    with display.MetricProgress(name, enabled=options.show_progress) as bar:
        final = jobs.follow_job(
            session.client("sagemaker"), session.client("logs"), name, bar.on_line,
            on_status=lambda s: bar.on_status(f"{s.status} / {s.secondary_status}"),
        )
    if final.status == "Completed":
        model = fetch_run(s3, layout, settings.runs_dir / options.run_id, settings.limits)
        display.console.print(f"results: {model}")
    return Launched(options.run_id, name, request, final.status, final.failure_reason)


def _build_image(options: LaunchOptions, settings: LaunchSettings, session: boto3.Session, account: str, commit: str) -> str:
    if options.builder == "local":
        local_name = image.build_locally(options.engine or "docker", commit, Path.cwd(),
                                         {"ROADSENSE_GIT_COMMIT": commit})
        return image.push(session, options.engine or "docker", local_name, settings, account)
    return image.build_with_codebuild(session, settings, commit)


def _launch_local(options: LaunchOptions, settings: LaunchSettings) -> Launched:
    run_dir = settings.runs_dir / options.run_id
    if (run_dir / "launch.json").is_file() and not (options.resume or options.force):
        _refuse_reuse(str(run_dir), options)
    if options.force:
        shutil.rmtree(run_dir / LOCAL_CHECKPOINTS, ignore_errors=True)
    commit = git_commit()
    request, cost = plan(options, settings, settings.role_arn or LOCAL_ROLE_ARN, _local_image(settings, commit), commit)
    launch_file = run_dir / "launch.json"
    previous = record.read_local_record(settings.runs_dir, RunLayout(settings.bucket, options.run_id), settings.limits)
    run_dir.mkdir(parents=True, exist_ok=True)
    launch_file.write_text(record.to_json(record.add_attempt(previous, options.run_id, record.new_attempt(request, commit, "local"))))
    if cost:
        display.console.print(f"on SageMaker this would take {cost.describe()}")
    with display.MetricProgress(request["TrainingJobName"], enabled=options.show_progress) as bar:
        result = run_local(
            run_dir, request, settings.container_command, options.dataset,
            engine=options.engine, image=request["AlgorithmSpecification"]["TrainingImage"], on_line=bar.on_line,
        )
    if result.status == "Completed":
        extract_results(run_dir, result.job_name, run_dir, settings.limits)
    publish_local_run(settings, options.run_id)
    return Launched(options.run_id, result.job_name, request, result.status, result.failure_reason)


def publish_local_run(settings: LaunchSettings, run_id: str) -> bool:
    """Upload a local run's mirror to its S3 prefix when the bucket is reachable; True if it was."""
    session = aws.make_session(settings)
    if not aws.s3_reachable(session, settings.bucket):
        return False
    layout = RunLayout(settings.bucket, run_id)
    s3, run_dir = session.client("s3"), settings.runs_dir / run_id
    # Only what SageMaker would have put in S3: not the scratch root, not the extracted results; the
    # checkpoints go where a cloud run's live, so a cloud --resume continues a local run.
    upload_tree(s3, run_dir, layout.bucket, layout.prefix, exclude=(SCRATCH, "model", "output-data", LOCAL_CHECKPOINTS))
    if (run_dir / LOCAL_CHECKPOINTS).is_dir():
        upload_tree(s3, run_dir / LOCAL_CHECKPOINTS, layout.bucket, layout.checkpoints_key)
    display.console.print(f"published to {layout.uri()} and {layout.checkpoints_uri}")
    return True
