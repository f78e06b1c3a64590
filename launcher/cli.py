"""roadsense-launch: takes the current code to a SageMaker training job, or runs it here.

Without a subcommand it launches a run. Settings flags (--region, --bucket...) and launch
flags (--preset, --set, --local...) go before a subcommand, e.g.
roadsense-launch --local --preset smoke sweep grid1 --seeds 0,1
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Callable, Iterator, NoReturn, Optional

import botocore.exceptions
import typer

from launcher import aws, display, image, jobs, record, sweep
from launcher import tune as tuning
from launcher.codebuild import BuildError
from launcher.fetch import DestinationError, RunNotFoundError, extract_results, fetch_job, fetch_run
from launcher.infra import infra_app
from launcher.launch import LaunchOptions, Launched, dry_run_request, git_commit, launch, refuse_overrun
from launcher.layout import RESERVED_PREFIXES, RunIdError, RunLayout, validate_run_id
from launcher.remote import RemoteDataError, check_file_size, download_file
from launcher.request import RequestError
from launcher.settings import LaunchSettings, SettingsError, load_settings
from launcher.upload import DatasetError, upload_tree, verify_dataset
from roadsense.config import PRESETS, ConfigError, parse_set_options

app = typer.Typer(help=__doc__, invoke_without_command=True, no_args_is_help=False, add_completion=False)
app.add_typer(infra_app, name="infra", help="Deploy, inspect or delete the AWS infrastructure (infra/).")

_USER_ERRORS = (
    aws.LaunchError, ConfigError, SettingsError, RequestError, DatasetError,
    RunNotFoundError, BuildError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
)
# Input that cannot be used at all (a bad run id or destination, data from the bucket that is refused): exit 2, like a usage error.
_INPUT_ERRORS = (RunIdError, RemoteDataError, DestinationError)


@dataclasses.dataclass
class _State:
    settings_flags: dict[str, Any]
    config_file: Path | None
    template: LaunchOptions
    _settings: LaunchSettings | None = None

    def settings(self) -> LaunchSettings:
        """Flags, environment and config file, completed from the infra stack (read once per command)."""
        if self._settings is None:
            self._settings = aws.with_stack_defaults(load_settings(self.settings_flags, self.config_file))
        return self._settings


def _fail(message: str, code: int) -> NoReturn:
    display.error_line(f"error: {message}")
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A problem the user can fix ends the command with one line on stderr: exit code 2 for
    unusable input (:data:`_INPUT_ERRORS`), 1 for the rest."""
    try:
        yield
    except _INPUT_ERRORS as exc:
        _fail(str(exc), 2)
    except _USER_ERRORS as exc:
        message = str(aws.translate(exc)) if isinstance(exc, botocore.exceptions.BotoCoreError | botocore.exceptions.ClientError) else str(exc)
        _fail(message, 1)


def _checked_run_id(value: str | None) -> str | None:
    """The one check of every run id typed on the command line (each command's argument and --run-id),
    before any key or path is built from it; RunLayout refuses one that gets past it."""
    if value is None:
        return None
    try:
        return validate_run_id(value)
    except RunIdError as exc:
        _fail(str(exc), 2)


_RUN_ID_HELP = "Run id: 1-40 letters, digits, '-' or '_', starting with a letter or digit (its S3 prefix)."
RunIdArgument = Annotated[str, typer.Argument(callback=_checked_run_id, help=_RUN_ID_HELP, show_default=False)]


@app.callback()
def main(
    ctx: typer.Context,
    run_id: Annotated[Optional[str], typer.Option(callback=_checked_run_id, help=_RUN_ID_HELP)] = None,
    preset: Annotated[str, typer.Option(help=f"Config preset: {', '.join(PRESETS)}.")] = "production",
    set_: Annotated[list[str], typer.Option("--set", help="Config override key=value (repeatable).")] = [],  # noqa: B006 - typer needs a literal
    dataset: Annotated[Optional[Path], typer.Option(help="Dataset folder (with manifest.json) for the 'dataset' channel.")] = None,
    image_uri: Annotated[Optional[str], typer.Option(help="Use this image instead of building one.")] = None,
    role_arn: Annotated[Optional[str], typer.Option(help="SageMaker execution role (default: the infra stack's).")] = None,
    region: Annotated[Optional[str], typer.Option(help="AWS region (default il-central-1).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="AWS profile.")] = None,
    bucket: Annotated[Optional[str], typer.Option(help="Results bucket (default: the infra stack's, else saferide-training-results).")] = None,
    stack_name: Annotated[Optional[str], typer.Option(help="Infra stack whose outputs are the defaults (default roadsense).")] = None,
    instance_type: Annotated[Optional[str], typer.Option(help="Training instance (default ml.c6i.xlarge).")] = None,
    instance_count: Annotated[Optional[int], typer.Option(help="Instances (default 1).")] = None,
    max_runtime_hours: Annotated[Optional[float], typer.Option(help="Max runtime (default 24).")] = None,
    spot: Annotated[bool, typer.Option(help="Managed spot training (checkpoints in S3, a max wait).")] = False,
    max_wait_hours: Annotated[Optional[float], typer.Option(help="Spot: max runtime + waiting for capacity (default 48).")] = None,
    resume: Annotated[bool, typer.Option(help="Reuse the run id and continue from its checkpoints.")] = False,
    force: Annotated[bool, typer.Option(help="Reuse the run id and start over (deletes its checkpoints).")] = False,
    allow_overrun: Annotated[bool, typer.Option(help="Launch even if the estimated duration exceeds the max runtime.")] = False,
    network_isolation: Annotated[bool, typer.Option(help="EnableNetworkIsolation: the container gets no network (it needs none).")] = True,
    wait: Annotated[bool, typer.Option(help="Follow the job to the end, then fetch the results.")] = False,
    local: Annotated[bool, typer.Option(help="Run the job on this machine (results in --runs-dir).")] = False,
    engine: Annotated[Optional[str], typer.Option(help="With --local: run the built image with docker or podman.")] = None,
    builder: Annotated[str, typer.Option(help="Where the image is built: codebuild or local (docker/podman + push).")] = "codebuild",
    runs_dir: Annotated[Optional[Path], typer.Option(help="Local runs and fetched results (default ./runs).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Launch settings file (default roadsense-launch.toml or pyproject.toml).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the CreateTrainingJob request and the cost; touch nothing.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="With --dry-run: print only the request, as JSON.")] = False,
) -> None:
    """Launch a training run (no subcommand), or manage runs (subcommands)."""
    if engine not in (None, "docker", "podman") or builder not in ("codebuild", "local"):
        display.error_line("error: --engine is docker or podman; --builder is codebuild or local")
        raise typer.Exit(2)
    flags: dict[str, Any] = {
        "region": region, "profile": profile, "bucket": bucket, "stack_name": stack_name, "role_arn": role_arn, "image_uri": image_uri,
        "instance_type": instance_type, "instance_count": instance_count, "runs_dir": runs_dir,
        "max_runtime_s": None if max_runtime_hours is None else int(max_runtime_hours * 3600),
        "spot_max_wait_s": None if max_wait_hours is None else int(max_wait_hours * 3600),
    }
    template = LaunchOptions(
        run_id=run_id or "", preset=preset, sets=tuple(set_), dataset=dataset, spot=spot, resume=resume,
        force=force, wait=wait, local=local, engine=engine, builder=builder, dry_run=dry_run, allow_overrun=allow_overrun,
        network_isolation=network_isolation,
    )
    ctx.obj = _State(flags, config, template)
    if ctx.invoked_subcommand is not None:
        return
    if not run_id:
        display.error_line("error: --run-id is required to launch (or give a subcommand; see --help)")
        raise typer.Exit(2)
    with user_errors():
        settings = ctx.obj.settings()
        if dry_run:
            request, cost = dry_run_request(template, settings)
            if json_:
                print(json.dumps(request, indent=2, sort_keys=True))
                return
            display.console.print_json(data=request)
            display.console.print(cost.describe() if cost else "cost: unknown throughput for this instance type")
            return
        _report(launch(template, settings))


def _report(result: Launched) -> None:
    if result.status in ("Failed", "Stopped"):
        display.error_line(f"{result.job_name} {result.status}: {result.failure_reason}")
        raise typer.Exit(1)
    if result.status == "Completed":
        display.console.print(f"[green]{result.job_name} Completed[/]")


def _state(ctx: typer.Context) -> _State:
    return ctx.obj


@dataclasses.dataclass(frozen=True)
class _LatestJob:
    """The latest attempt of a run, from its launch record in S3."""

    session: Any
    layout: RunLayout
    name: str
    local: bool  # ran with --local and was published: there is no SageMaker job and no CloudWatch log


def _latest_job(settings: LaunchSettings, run_id: str) -> _LatestJob:
    session = aws.make_session(settings)
    layout = RunLayout(settings.bucket, run_id)
    found = record.read_record(session.client("s3"), layout, settings.limits)
    if found is None:
        raise RunNotFoundError(f"run {run_id!r} has no launch record in s3://{settings.bucket}; see roadsense-launch list")
    attempt = found["attempts"][-1]
    return _LatestJob(session, layout, attempt["job_name"], attempt["mode"] == "local")


def _sagemaker_job(settings: LaunchSettings, run_id: str, fix_if_local: str) -> tuple[Any, str]:
    """A session and the SageMaker job of ``run_id``'s latest attempt; a local run is refused with ``fix_if_local``."""
    job = _latest_job(settings, run_id)
    if job.local:
        raise aws.LaunchError(f"run {run_id!r} ran on a local machine (--local), not on SageMaker", fix_if_local)
    return job.session, job.name


def _local_status(job: _LatestJob) -> jobs.JobStatus:
    """A published local run's status: it published a model.tar.gz only if it completed."""
    listing = job.session.client("s3").list_objects_v2(Bucket=job.layout.bucket, Prefix=job.layout.model_key(job.name), MaxKeys=1)
    return jobs.JobStatus(job.name, "Completed" if listing.get("KeyCount") else "Failed", "ran locally (--local)")


def _tuning_job(settings: LaunchSettings, run_id: str) -> str | None:
    """The tuning job named by the run's tuning.json, or None if the run is no tuning job's parent."""
    return tuning.read_tuning(aws.make_session(settings).client("s3"), RunLayout(settings.bucket, run_id), settings.limits)


def _tuning_child(settings: LaunchSettings, tuning_job: str, job: str | None) -> str:
    """``job`` if it is one of the tuning job's children, else (None) its best child so far."""
    sagemaker = aws.make_session(settings).client("sagemaker")
    if job is None:
        best = tuning.best_child(sagemaker, tuning_job)
        if best is None:
            raise RunNotFoundError(f"tuning job {tuning_job} has no completed child yet; see roadsense-launch status")
        return best
    names = [child.job_name for child in tuning.list_children(sagemaker, tuning_job)]
    if job not in names:
        raise RunNotFoundError(f"--job {job!r} is not a child of tuning job {tuning_job}; its children: {', '.join(names) or 'none yet'}")
    return job


def _print_tuning(settings: LaunchSettings, tuning_job: str) -> None:
    sagemaker = aws.make_session(settings).client("sagemaker")
    described = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)
    objective = described["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
    rows = [(c.job_name, c.status, "" if c.objective is None else f"{c.objective:.4g}", " ".join(f"{k}={v}" for k, v in c.tuned.items()), c.failure_reason)
            for c in tuning.list_children(sagemaker, tuning_job)]
    title = f"tuning job {tuning_job}: {described['HyperParameterTuningJobStatus']}"
    display.console.print(display.table(title, ["job", "status", objective, "settings", "failure"], rows))
    if described.get("FailureReason"):
        display.error_line(f"{tuning_job}: {described['FailureReason']}")


@app.command()
def tune(
    ctx: typer.Context,
    parent: RunIdArgument,
    range_: Annotated[list[str], typer.Option("--range", help="key=low:high or key=low:high:log: a number setting to search (repeatable).")] = [],  # noqa: B006
    ranges: Annotated[Optional[Path], typer.Option(help='TOML file of ranges, key = "low:high[:log]" (top level or [ranges]).')] = None,
    objective: Annotated[str, typer.Option(help="val: validation behavioural success during training; eval: the final evaluation's.")] = "val",
    max_jobs: Annotated[int, typer.Option(help="Training jobs in all.")] = 10,
    max_parallel_jobs: Annotated[int, typer.Option(help="Training jobs at once.")] = 2,
    early_stopping: Annotated[bool, typer.Option(help="Let SageMaker stop children whose objective lags (needs --objective val).")] = True,
) -> None:
    """Start a SageMaker tuning job under PARENT that maximises behavioural success, with the launch flags given before 'tune'."""
    state = _state(ctx)
    with user_errors():
        template = state.template
        if template.local or template.resume or template.wait:
            raise aws.LaunchError("tune runs on SageMaker and starts a new search", "drop --local, --resume and --wait; follow it with roadsense-launch status PARENT")
        settings = state.settings()
        sets = parse_set_options(list(template.sets))
        texts = [*range_, *(tuning.ranges_from_file(ranges) if ranges else [])]
        options = tuning.TuningOptions(
            tuple(tuning.parse_range(text, template.preset, sets) for text in texts), objective, max_jobs, max_parallel_jobs, early_stopping)
        launch_options = dataclasses.replace(template, run_id=parent)
        if template.dry_run:
            print(json.dumps(tuning.dry_run_tuning(launch_options, settings, options), indent=2, sort_keys=True))
            return
        request = tuning.launch_tuning(launch_options, settings, options)
        display.console.print(f"[bold]{request['HyperParameterTuningJobName']}[/] created for {parent}: up to {max_jobs} jobs, {max_parallel_jobs} at a time")
        display.console.print(f"  follow:  roadsense-launch status {parent}", soft_wrap=True)
        display.console.print(f"  compare: roadsense-launch compare {parent}   best model: roadsense-launch fetch {parent}", soft_wrap=True)


@app.command()
def build(
    ctx: typer.Context,
    engine: Annotated[str, typer.Option(help="docker or podman.")] = "docker",
    tag: Annotated[Optional[str], typer.Option(help="Image tag (default the git commit).")] = None,
    build_arg: Annotated[list[str], typer.Option(help="KEY=VALUE for the Dockerfile (BASE_IMAGE, WHEELHOUSE).")] = [],  # noqa: B006
    codebuild: Annotated[bool, typer.Option("--codebuild", help="Build and push in the infra stack's CodeBuild project instead (--tag = the commit to build).")] = False,
) -> None:
    """Build the training image here (container/Dockerfile, context = repo root), or in CodeBuild."""
    with user_errors():
        if codebuild:
            # CodeBuild clones the source repository, so the commit must have been pushed there.
            settings = _state(ctx).settings()
            print(image.build_with_codebuild(aws.make_session(settings), settings, tag or git_commit()))
            return
        args = {"ROADSENSE_GIT_COMMIT": git_commit(), **dict(item.split("=", 1) for item in build_arg)}
        name = image.build_locally(engine, tag or git_commit(), Path.cwd(), args)
        display.console.print(f"built {name}")


@app.command()
def push(
    ctx: typer.Context,
    engine: Annotated[str, typer.Option(help="docker or podman.")] = "docker",
    tag: Annotated[Optional[str], typer.Option(help="Local image tag (default the git commit).")] = None,
) -> None:
    """Push the locally built image to the ECR repository; prints its URI for --image-uri."""
    with user_errors():
        settings = _state(ctx).settings()
        session = aws.make_session(settings)
        account = session.client("sts").get_caller_identity()["Account"]
        print(image.push(session, engine, f"{image.LOCAL_IMAGE}:{tag or git_commit()}", settings, account))


@app.command()
def upload(ctx: typer.Context, run_id: RunIdArgument, dataset: Annotated[Path, typer.Option(help="Dataset folder with manifest.json.")]) -> None:
    """Verify a dataset and upload it to the run's dataset prefix (unchanged files are skipped)."""
    with user_errors():
        settings = _state(ctx).settings()
        verify_dataset(dataset)
        layout = RunLayout(settings.bucket, run_id)
        result = upload_tree(aws.make_session(settings).client("s3"), dataset, layout.bucket, layout.dataset_key)
        display.console.print(f"dataset verified; {len(result.uploaded)} uploaded, {len(result.skipped)} unchanged -> {layout.dataset_uri}")


@app.command()
def status(ctx: typer.Context, run_id: Annotated[Optional[str], typer.Argument(callback=_checked_run_id, help=_RUN_ID_HELP)] = None) -> None:
    """The status of a run's latest job, or of the newest jobs."""
    with user_errors():
        settings = _state(ctx).settings()
        tuning_job = _tuning_job(settings, run_id) if run_id else None
        if tuning_job:
            _print_tuning(settings, tuning_job)
            return
        if run_id:
            job = _latest_job(settings, run_id)
            rows = [_local_status(job) if job.local else jobs.describe_job(job.session.client("sagemaker"), job.name)]
        else:
            rows = jobs.list_jobs(aws.make_session(settings).client("sagemaker"))
        display.console.print(display.table(
            "training jobs", ["job", "status", "detail", "failure", "created", "billable s"],
            [(s.name, s.status, s.secondary_status, s.failure_reason, s.created, s.billable_seconds) for s in rows],
        ))


@app.command()
def logs(ctx: typer.Context, run_id: RunIdArgument, follow: Annotated[bool, typer.Option(help="Keep streaming until the job ends.")] = False) -> None:
    """Print a run's job log (CloudWatch); --follow adds a progress bar from its metric lines."""
    with user_errors():
        session, job = _sagemaker_job(
            _state(ctx).settings(), run_id, f"roadsense-launch fetch {run_id}: its whole log is then in output-data/training.log")
        if not follow:
            lines = jobs.LogReader(session.client("logs"), job).read_new()
            for line in lines:
                print(display.printable(line))  # the job's own output: no terminal escapes
            if not lines:
                display.errors.print(f"{job} has no log lines yet (it writes them once its instance has started)", markup=False, highlight=False, soft_wrap=True)
            return
        with display.MetricProgress(job) as bar:
            final = jobs.follow_job(session.client("sagemaker"), session.client("logs"), job, bar.on_line,
                                    on_status=lambda s: bar.on_status(f"{s.status} / {s.secondary_status}"))
        _report(Launched(run_id, job, {}, final.status, final.failure_reason))


@app.command()
def stop(ctx: typer.Context, run_id: RunIdArgument) -> None:
    """Stop a run's job (the container checkpoints first)."""
    with user_errors():
        session, job = _sagemaker_job(_state(ctx).settings(), run_id, "press Ctrl-C where it runs")
        result = jobs.stop_job(session.client("sagemaker"), job)
        display.console.print(f"{job}: {result.status} ({result.secondary_status})")


@app.command()
def fetch(
    ctx: typer.Context,
    run_id: RunIdArgument,
    to: Annotated[Optional[Path], typer.Option(help="Target folder (default <runs-dir>/<run-id>).")] = None,
    job: Annotated[Optional[str], typer.Option(help="A tuning job's parent: the child job to fetch (default the best).")] = None,
) -> None:
    """Download a run's model.tar.gz (and output.tar.gz) and extract them safely into --to; for a
    tuning job's parent, its best child's (or --job's)."""
    with user_errors():
        settings = _state(ctx).settings()
        dest = to or settings.runs_dir / run_id
        layout = RunLayout(settings.bucket, run_id)
        tuning_job = None if _state(ctx).template.local else _tuning_job(settings, run_id)
        if job is not None and tuning_job is None:
            raise aws.LaunchError(f"run {run_id!r} is not a tuning job's parent, so --job does not apply", f"roadsense-launch fetch {run_id}")
        if tuning_job:
            child = _tuning_child(settings, tuning_job, job)
            model = fetch_job(aws.make_session(settings).client("s3"), layout, child, dest, settings.limits)
            display.console.print(f"{child} ({'chosen' if job else 'the best'} of tuning job {tuning_job})")
        elif _state(ctx).template.local:
            found = record.read_local_record(settings.runs_dir, layout, settings.limits)
            if found is None:
                raise RunNotFoundError(f"run {run_id!r} has no launch record in {settings.runs_dir}")
            model = extract_results(settings.runs_dir / run_id, record.latest_job(found), dest, settings.limits)
        else:
            model = fetch_run(aws.make_session(settings).client("s3"), layout, dest, settings.limits)
        display.console.print(f"results in {model}")


@app.command("list")
def list_runs(ctx: typer.Context) -> None:
    """The runs in the bucket, with their latest job."""
    with user_errors():
        settings = _state(ctx).settings()
        s3 = aws.make_session(settings).client("s3")
        limit = settings.max_listed_runs
        prefixes: list[str] = []
        # A shared bucket may hold any number of prefixes: read (one GET each) at most `limit`.
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Delimiter="/"):
            # checkpoints/ and codebuild/ are the bucket's own prefixes, not runs.
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", []) if p["Prefix"].removesuffix("/") not in RESERVED_PREFIXES]
            if len(prefixes) > limit:
                break
        rows = [_list_row(s3, settings, prefix) for prefix in prefixes[:limit]]
        display.console.print(display.table(f"runs in s3://{settings.bucket}", ["run id", "latest job", "mode", "launched", "attempts"], rows))
        if len(prefixes) > limit:
            display.error_line(f"only the first {limit} runs are shown; raise the max_listed_runs setting to see more")


def _list_row(s3: Any, settings: LaunchSettings, prefix: str) -> tuple[str, str, str, str, int | str]:
    """One row of `list`. A prefix that is no run id, or whose launch.json is refused, is shown as such
    (and never read or used to build a key): one bad entry in a shared bucket does not hide the others."""
    run_id = prefix.removesuffix("/")
    try:
        layout = RunLayout(settings.bucket, run_id)
        found = record.read_record(s3, layout, settings.limits)
    except _INPUT_ERRORS as exc:
        return (run_id, f"(ignored: {exc})", "", "", "")
    if found is None:
        # A sweep's parent holds only sweep.json; anything else without a record is left over.
        is_sweep = s3.list_objects_v2(Bucket=layout.bucket, Prefix=layout.sweep_key, MaxKeys=1).get("KeyCount")
        return (run_id, f"(sweep: compare {run_id})" if is_sweep else "(no launch record)", "", "", 0)
    last = found["attempts"][-1]
    return (run_id, last["job_name"], last["mode"], last["launched_at"], len(found["attempts"]))


@app.command("sweep")
def sweep_command(
    ctx: typer.Context,
    parent: RunIdArgument,
    seeds: Annotated[str, typer.Option(help="Comma-separated training seeds, e.g. 0,1,2.")] = "",
    set_: Annotated[list[str], typer.Option("--set", help="key=v1,v2: one axis of the grid (repeatable).")] = [],  # noqa: B006
    max_parallel: Annotated[int, typer.Option(min=1, help="Jobs running at once.")] = 2,
    poll_seconds: Annotated[float, typer.Option(help="How often to check the running jobs.")] = 30.0,
) -> None:
    """Launch a grid of runs <parent>-001, -002... with the launch flags given before 'sweep'."""
    state = _state(ctx)
    with user_errors():
        settings = state.settings()
        points = sweep.grid([int(s) for s in seeds.split(",") if s.strip()], list(set_))
        children = dict(zip(sweep.child_run_ids(parent, len(points)), points))
        options = {
            child: dataclasses.replace(state.template, run_id=child, parent_run_id=parent, wait=False,
                                       sets=(*state.template.sets, *(f"{k}={v}" for k, v in point.items())),
                                       show_progress=state.template.local and max_parallel == 1)
            for child, point in children.items()
        }
        for child in options.values():  # every child's config (and runtime) is valid before the first one starts
            _, cost = dry_run_request(dataclasses.replace(child, local=True), settings)
            refuse_overrun(child, cost, settings.max_runtime_s)
        _write_sweep(settings, parent, sweep.sweep_record(parent, children, state.template.preset), state.template.local)
        if state.template.local:
            with ThreadPoolExecutor(max_parallel) as pool:
                handles: list[Future[Launched]] = sweep.schedule(
                    options.values(), lambda o: pool.submit(launch, o, settings), Future.done, max_parallel, 1.0)
            results = [h.result() for h in handles]
        else:
            sagemaker = aws.make_session(settings).client("sagemaker")
            results = sweep.schedule(
                options.values(), lambda o: launch(o, settings),
                lambda r: jobs.describe_job(sagemaker, r.job_name).terminal, max_parallel, poll_seconds)
        display.console.print(display.table(f"sweep {parent}", ["run id", "job", "status", "failure"],
                                            [(r.run_id, r.job_name, r.status, r.failure_reason) for r in results]))


def _write_sweep(settings: LaunchSettings, parent: str, text: str, local: bool) -> None:
    """The parent's sweep.json: in --runs-dir for a local sweep, and in S3 (a local sweep only if
    the bucket is reachable, as its children publish themselves)."""
    layout = RunLayout(settings.bucket, parent)
    session = aws.make_session(settings)
    if local:
        path = settings.runs_dir / layout.sweep_key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not aws.s3_reachable(session, settings.bucket):
            return
    session.client("s3").put_object(Bucket=layout.bucket, Key=layout.sweep_key, Body=text.encode())


@app.command()
def compare(ctx: typer.Context, parent: RunIdArgument) -> None:
    """One table of a sweep's evaluation metrics (each child's overall metrics from its metrics.json),
    each rate with its 95 % interval, marked where it differs from the column's best run by more than the noise."""
    state = _state(ctx)
    with user_errors():
        settings = state.settings()
        s3 = None if state.template.local else aws.make_session(settings).client("s3")
        where = str(settings.runs_dir) if s3 is None else f"s3://{settings.bucket}"
        rows: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        with tempfile.TemporaryDirectory() as scratch:
            def run_file(key: str) -> Path | None:
                return _run_file(settings, s3, key, Path(scratch) / key.replace("/", "_"))

            parent_layout = RunLayout(settings.bucket, parent)
            sweep_file = run_file(parent_layout.sweep_key)
            tuning_job = _tuning_job(settings, parent) if sweep_file is None and s3 is not None else None
            if sweep_file is not None:
                for child, point in json.loads(sweep_file.read_text())["children"].items():
                    layout = RunLayout(settings.bucket, child)
                    launch_file = run_file(layout.launch_key)
                    archive = run_file(layout.model_key(record.latest_job(json.loads(launch_file.read_text())))) if launch_file else None
                    rows.append((child, point, sweep.read_metrics(archive) if archive else {}))  # {}: no results yet
            elif tuning_job is not None:
                # A tuning job's children write under the parent's prefix: <parent>/output/<child>/output/.
                for found in tuning.list_children(aws.make_session(settings).client("sagemaker"), tuning_job):
                    archive = run_file(parent_layout.model_key(found.job_name)) if found.status == "Completed" else None
                    rows.append((found.job_name, found.tuned, sweep.read_metrics(archive) if archive else {}))
            else:
                raise RunNotFoundError(f"{parent!r} is neither a sweep nor a tuning job: no {parent_layout.sweep_key} or {parent_layout.tuning_key} in {where}")
        columns, cells = sweep.compare_cells([metrics for _, _, metrics in rows])
        display.console.print(display.table(
            f"sweep {parent}", ["run id", "settings", *columns],
            [(child, " ".join(f"{k}={v}" for k, v in point.items()), *row) for (child, point, _), row in zip(rows, cells)],
        ))
        if sweep.has_rates(columns):
            display.console.print(sweep.DIFFERS_LEGEND)


# The records compare reads, checked against their schemas before any of their fields is used.
_RECORD_CHECKS: dict[str, Callable[[bytes, str], object]] = {"launch.json": record.parse_record, "sweep.json": sweep.parse_sweep}


def _run_file(settings: LaunchSettings, s3: Any, key: str, download_to: Path) -> Path | None:
    """The file at ``key`` of the runs' tree, or None if it is not there. It is size-bounded
    (max_json_bytes for a record, max_download_bytes otherwise), and a record is schema-checked.

    ``s3`` None means --local: the tree is --runs-dir, laid out like the bucket.
    """
    check = _RECORD_CHECKS.get(PurePosixPath(key).name)
    max_bytes, setting = (settings.max_json_bytes, "max_json_bytes") if check else (settings.max_download_bytes, "max_download_bytes")
    if s3 is None:
        path = settings.runs_dir / key
        if not path.is_file():
            return None
        check_file_size(path, max_bytes, setting)
        source = str(path)
    else:
        if not download_file(s3, settings.bucket, key, download_to, max_bytes, setting):
            return None
        path, source = download_to, f"s3://{settings.bucket}/{key}"
    if check:
        check(path.read_bytes(), source)
    return path

