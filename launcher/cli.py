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
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import botocore.exceptions
import typer

from launcher import aws, display, image, jobs, record, sweep
from launcher.codebuild import BuildError
from launcher.fetch import RunNotFoundError, UnsafeArchiveError, extract_results, fetch_run
from launcher.infra import infra_app
from launcher.launch import LaunchOptions, Launched, dry_run_request, git_commit, launch
from launcher.layout import RunIdError, RunLayout
from launcher.request import RequestError
from launcher.settings import LaunchSettings, SettingsError, load_settings
from launcher.upload import DatasetError, upload_tree, verify_dataset
from roadsense.config import PRESETS, ConfigError

app = typer.Typer(help=__doc__, invoke_without_command=True, no_args_is_help=False, add_completion=False)
app.add_typer(infra_app, name="infra", help="Deploy, inspect or delete the AWS infrastructure (infra/).")

_USER_ERRORS = (
    aws.LaunchError, ConfigError, SettingsError, RunIdError, RequestError, DatasetError,
    UnsafeArchiveError, RunNotFoundError, BuildError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
)


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


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A problem the user can fix ends the command with one line on stderr and exit code 1."""
    try:
        yield
    except _USER_ERRORS as exc:
        message = str(aws.translate(exc)) if isinstance(exc, botocore.exceptions.BotoCoreError | botocore.exceptions.ClientError) else str(exc)
        display.error_line(f"error: {message}")
        raise typer.Exit(1) from None


@app.callback()
def main(
    ctx: typer.Context,
    run_id: Annotated[Optional[str], typer.Option(help="Run id: letters, digits, '-', '_' (the S3 prefix of the run).")] = None,
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
        force=force, wait=wait, local=local, engine=engine, builder=builder, dry_run=dry_run,
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


def _job_of(settings: LaunchSettings, run_id: str) -> tuple[Any, str]:
    """A session and the latest job name of ``run_id`` (from its launch record)."""
    session = aws.make_session(settings)
    found = record.read_record(session.client("s3"), RunLayout(settings.bucket, run_id))
    if found is None:
        raise RunNotFoundError(f"run {run_id!r} has no launch record in s3://{settings.bucket}; see roadsense-launch list")
    return session, record.latest_job(found)


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
        args = dict(item.split("=", 1) for item in build_arg)
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
def upload(ctx: typer.Context, run_id: str, dataset: Annotated[Path, typer.Option(help="Dataset folder with manifest.json.")]) -> None:
    """Verify a dataset and upload it to the run's dataset prefix (unchanged files are skipped)."""
    with user_errors():
        settings = _state(ctx).settings()
        verify_dataset(dataset)
        layout = RunLayout(settings.bucket, run_id)
        result = upload_tree(aws.make_session(settings).client("s3"), dataset, layout.bucket, layout.dataset_key)
        display.console.print(f"dataset verified; {len(result.uploaded)} uploaded, {len(result.skipped)} unchanged -> {layout.dataset_uri}")


@app.command()
def status(ctx: typer.Context, run_id: Annotated[Optional[str], typer.Argument()] = None) -> None:
    """The status of a run's latest job, or of the newest jobs."""
    with user_errors():
        settings = _state(ctx).settings()
        if run_id:
            session, job = _job_of(settings, run_id)
            rows = [jobs.describe_job(session.client("sagemaker"), job)]
        else:
            rows = jobs.list_jobs(aws.make_session(settings).client("sagemaker"))
        display.console.print(display.table(
            "training jobs", ["job", "status", "detail", "failure", "created", "billable s"],
            [(s.name, s.status, s.secondary_status, s.failure_reason, s.created, s.billable_seconds) for s in rows],
        ))


@app.command()
def logs(ctx: typer.Context, run_id: str, follow: Annotated[bool, typer.Option(help="Keep streaming until the job ends.")] = False) -> None:
    """Print a run's job log (CloudWatch); --follow adds a progress bar from its metric lines."""
    with user_errors():
        session, job = _job_of(_state(ctx).settings(), run_id)
        if not follow:
            for line in jobs.LogReader(session.client("logs"), job).read_new():
                print(line)
            return
        with display.MetricProgress(job) as bar:
            final = jobs.follow_job(session.client("sagemaker"), session.client("logs"), job, bar.on_line,
                                    on_status=lambda s: bar.on_status(f"{s.status} / {s.secondary_status}"))
        _report(Launched(run_id, job, {}, final.status, final.failure_reason))


@app.command()
def stop(ctx: typer.Context, run_id: str) -> None:
    """Stop a run's job (the container checkpoints first)."""
    with user_errors():
        session, job = _job_of(_state(ctx).settings(), run_id)
        result = jobs.stop_job(session.client("sagemaker"), job)
        display.console.print(f"{job}: {result.status} ({result.secondary_status})")


@app.command()
def fetch(
    ctx: typer.Context,
    run_id: str,
    to: Annotated[Optional[Path], typer.Option(help="Target folder (default <runs-dir>/<run-id>).")] = None,
) -> None:
    """Download a run's model.tar.gz (and output.tar.gz) and extract them safely into --to."""
    with user_errors():
        settings = _state(ctx).settings()
        dest = to or settings.runs_dir / run_id
        if _state(ctx).template.local:
            found = json.loads((settings.runs_dir / run_id / "launch.json").read_text())
            model = extract_results(settings.runs_dir / run_id, record.latest_job(found), dest)
        else:
            model = fetch_run(aws.make_session(settings).client("s3"), RunLayout(settings.bucket, run_id), dest)
        display.console.print(f"results in {model}")


@app.command("list")
def list_runs(ctx: typer.Context) -> None:
    """The runs in the bucket, with their latest job."""
    with user_errors():
        settings = _state(ctx).settings()
        s3 = aws.make_session(settings).client("s3")
        rows = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Delimiter="/"):
            for prefix in page.get("CommonPrefixes", []):
                run_id = prefix["Prefix"].rstrip("/")
                found = record.read_record(s3, RunLayout(settings.bucket, run_id))
                last = found["attempts"][-1] if found else {}
                rows.append((run_id, last.get("job_name", "(no launch record)"), last.get("mode", ""), last.get("launched_at", ""), len(found["attempts"]) if found else 0))
        display.console.print(display.table(f"runs in s3://{settings.bucket}", ["run id", "latest job", "mode", "launched", "attempts"], rows))


@app.command("sweep")
def sweep_command(
    ctx: typer.Context,
    parent: str,
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
        for child in options.values():  # every child's config is valid before the first one starts
            dry_run_request(dataclasses.replace(child, local=True), settings)
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
    layout = RunLayout(settings.bucket, parent)
    if local:
        path = settings.runs_dir / parent / "sweep.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    aws.make_session(settings).client("s3").put_object(Bucket=layout.bucket, Key=layout.sweep_key, Body=text.encode())


@app.command()
def compare(ctx: typer.Context, parent: str) -> None:
    """One table of a sweep's evaluation metrics (from each child's metrics.json)."""
    state = _state(ctx)
    with user_errors():
        settings = state.settings()
        rows: list[tuple[str, dict[str, str], dict[str, float]]] = []
        with tempfile.TemporaryDirectory() as scratch:
            source = settings.runs_dir if state.template.local else Path(scratch)
            s3 = None if state.template.local else aws.make_session(settings).client("s3")
            if s3 is not None:
                s3.download_file(settings.bucket, RunLayout(settings.bucket, parent).sweep_key, str(source / "sweep.json"))
                sweep_file = source / "sweep.json"
            else:
                sweep_file = source / parent / "sweep.json"
            if not sweep_file.is_file():
                raise RunNotFoundError(f"{parent!r} is not a sweep (no sweep.json)")
            for child, point in json.loads(sweep_file.read_text())["children"].items():
                rows.append((child, point, _child_metrics(settings, child, source, s3)))
        columns = sorted({key for _, _, metrics in rows for key in metrics})
        display.console.print(display.table(
            f"sweep {parent}", ["run id", "settings", *columns],
            [(child, " ".join(f"{k}={v}" for k, v in point.items()), *(_fmt(metrics.get(c)) for c in columns)) for child, point, metrics in rows],
        ))


def _child_metrics(settings: LaunchSettings, child: str, source: Path, s3: Any) -> dict[str, float]:
    """A child's evaluation metrics; {} while it has no results."""
    layout = RunLayout(settings.bucket, child)
    if s3 is not None:
        found = record.read_record(s3, layout)
        archive = source / f"{child}.tar.gz"
        if found is None:
            return {}
        try:
            s3.download_file(layout.bucket, layout.model_key(record.latest_job(found)), str(archive))
        except botocore.exceptions.ClientError:
            return {}
    else:
        launch_file = source / child / "launch.json"
        if not launch_file.is_file():
            return {}
        job = record.latest_job(json.loads(launch_file.read_text()))
        archive = source / child / "output" / job / "output" / "model.tar.gz"
    return sweep.read_metrics(archive) if archive.is_file() else {}


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"
