"""roadsense-launch: takes the current code to a SageMaker training job, or runs it here.

Without a subcommand it launches a run. Settings flags (--region, --bucket...) and launch
flags (--preset, --set, --local...) go before a subcommand, e.g.
roadsense-launch --local --preset smoke sweep grid1 --seeds 0,1
"""

# Command wiring only: each command reads its options and calls the module that does the work.
# Every failure a command expects is a roadsense.errors.RoadsenseError (a botocore error becomes
# one in launcher.aws.translate); the app catches it in one place (_OneLineErrors), prints
# `error: <message>` on stderr and exits with its exit_code: 2 for input the user can fix,
# 1 for a run or an AWS service that failed.

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, cast

import typer
from typer.core import TyperGroup

from launcher import aws, display, image, infra, jobs, runs, sweep, tune
from launcher.compare import compare as compare_runs
from launcher.launch import LaunchOptions, dry_run_request, launch
from launcher.layout import RunLayout, validate_run_id
from launcher.settings import LaunchSettings, load_settings
from launcher.store import RunStore, open_store
from launcher.upload import upload_dataset
from roadsense.config import PRESETS
from roadsense.errors import RoadsenseError
from roadsense.provenance import git_commit

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient


def _exit(exc: RoadsenseError) -> NoReturn:
    display.error_line(f"error: {exc}")
    sys.exit(exc.exit_code)


class _OneLineErrors(TyperGroup):
    """The app's command group. Wrapping ``main`` (not ``invoke``) also covers what click runs while it
    parses the command line (the run-id checks), and the infra sub-app, which runs inside it."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except RoadsenseError as exc:
            _exit(exc)
        except Exception as exc:  # noqa: BLE001 - translate() re-raises what is not botocore's: a bug shows its traceback
            _exit(aws.translate(exc))


app = typer.Typer(
    cls=_OneLineErrors, help=__doc__, invoke_without_command=True, no_args_is_help=False, add_completion=False
)
infra_app = typer.Typer(help="Create, inspect or delete the AWS infrastructure (CloudFormation).", no_args_is_help=True)
app.add_typer(
    infra_app,
    name="infra",
    help="Deploy, inspect or delete the AWS infrastructure (infra/); --region, --profile and --stack-name go "
    "before 'infra'.",
)


@dataclasses.dataclass
class GlobalOptions:
    """The options given before the subcommand: the settings flags and config file, and the launch flags
    (a template that each launching command completes with its run id)."""

    settings_flags: dict[str, object]
    config_file: Path | None
    template: LaunchOptions
    _settings: LaunchSettings | None = None

    def settings(self) -> LaunchSettings:
        """Flags, environment and config file, completed from the infra stack (read once per command)."""
        if self._settings is None:
            self._settings = aws.with_stack_defaults(self.given_settings())
        return self._settings

    def given_settings(self) -> LaunchSettings:
        """What the flags, environment and config file give; the infra commands, which deploy the stack, read
        no more."""
        return load_settings(self.settings_flags, self.config_file)

    def store(self) -> RunStore:
        """The runs of --runs-dir with --local, else those of the bucket."""
        return open_store(self.settings(), self.template.local)

    def sagemaker(self) -> SageMakerClient:
        return aws.make_session(self.settings()).client("sagemaker")


def _options(ctx: typer.Context) -> GlobalOptions:
    # click keeps ctx.obj untyped; main() always sets it to the GlobalOptions before a subcommand runs.
    return cast(GlobalOptions, ctx.obj)


def _checked_run_id(value: str | None) -> str | None:
    """The one check of every run id typed on the command line (each command's argument and --run-id),
    before any key or path is built from it; RunLayout refuses one that gets past it."""
    return None if value is None else validate_run_id(value)


def _key_values(items: list[str], option: str, example: str) -> dict[str, str]:
    """Repeated ``option KEY=VALUE`` items as a dict."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise aws.LaunchError(f"{option} {item!r} is not KEY=VALUE", f"write it as {option} {example}")
        pairs[key] = value
    return pairs


_RUN_ID_HELP = "Run id: 1-40 letters, digits, '-' or '_', starting with a letter or digit (its S3 prefix)."
RunIdArgument = Annotated[str, typer.Argument(callback=_checked_run_id, help=_RUN_ID_HELP, show_default=False)]


@app.callback()
def main(
    ctx: typer.Context,
    run_id: Annotated[Optional[str], typer.Option(callback=_checked_run_id, help=_RUN_ID_HELP)] = None,
    preset: Annotated[str, typer.Option(help=f"Config preset: {', '.join(PRESETS)}.")] = "production",
    set_: Annotated[list[str], typer.Option("--set", help="Config override key=value (repeatable).")] = [],  # noqa: B006 - typer needs a literal
    dataset: Annotated[
        Optional[Path], typer.Option(help="Dataset folder (with manifest.json) for the 'dataset' channel.")
    ] = None,
    image_uri: Annotated[Optional[str], typer.Option(help="Use this image instead of building one.")] = None,
    role_arn: Annotated[
        Optional[str], typer.Option(help="SageMaker execution role (default: the infra stack's).")
    ] = None,
    region: Annotated[Optional[str], typer.Option(help="AWS region (default il-central-1).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="AWS profile.")] = None,
    bucket: Annotated[
        Optional[str], typer.Option(help="Results bucket (default: the infra stack's, else saferide-training-results).")
    ] = None,
    stack_name: Annotated[
        Optional[str], typer.Option(help="Infra stack whose outputs are the defaults (default roadsense).")
    ] = None,
    instance_type: Annotated[Optional[str], typer.Option(help="Training instance (default ml.c6i.xlarge).")] = None,
    instance_count: Annotated[Optional[int], typer.Option(help="Instances (default 1).")] = None,
    max_runtime_hours: Annotated[Optional[float], typer.Option(help="Max runtime (default 24).")] = None,
    spot: Annotated[bool, typer.Option(help="Managed spot training (checkpoints in S3, a max wait).")] = False,
    max_wait_hours: Annotated[
        Optional[float], typer.Option(help="Spot: max runtime + waiting for capacity (default 48).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Reuse the run id and continue from its checkpoints.")] = False,
    force: Annotated[bool, typer.Option(help="Reuse the run id and start over (deletes its checkpoints).")] = False,
    allow_overrun: Annotated[
        bool, typer.Option(help="Launch even if the estimated duration exceeds the max runtime.")
    ] = False,
    network_isolation: Annotated[
        bool, typer.Option(help="EnableNetworkIsolation: the container gets no network (it needs none).")
    ] = True,
    wait: Annotated[bool, typer.Option(help="Follow the job to the end, then fetch the results.")] = False,
    local: Annotated[bool, typer.Option(help="Run the job on this machine (results in --runs-dir).")] = False,
    engine: Annotated[
        Optional[str], typer.Option(help="With --local: run the built image with docker or podman.")
    ] = None,
    builder: Annotated[
        str, typer.Option(help="Where the image is built: codebuild or local (docker/podman + push).")
    ] = "codebuild",
    runs_dir: Annotated[Optional[Path], typer.Option(help="Local runs and fetched results (default ./runs).")] = None,
    config: Annotated[
        Optional[Path], typer.Option(help="Launch settings file (default roadsense-launch.toml or pyproject.toml).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the CreateTrainingJob request and the cost; touch nothing.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="With --dry-run: print only the request, as JSON.")] = False,
) -> None:
    """Launch a training run (no subcommand), or manage runs (subcommands)."""
    if engine not in (None, "docker", "podman") or builder not in ("codebuild", "local"):
        raise aws.LaunchError("--engine is docker or podman; --builder is codebuild or local")
    flags: dict[str, object] = {
        "region": region,
        "profile": profile,
        "bucket": bucket,
        "stack_name": stack_name,
        "role_arn": role_arn,
        "image_uri": image_uri,
        "instance_type": instance_type,
        "instance_count": instance_count,
        "runs_dir": runs_dir,
        "max_runtime_s": None if max_runtime_hours is None else int(max_runtime_hours * 3600),
        "spot_max_wait_s": None if max_wait_hours is None else int(max_wait_hours * 3600),
    }
    template = LaunchOptions(
        run_id=run_id or "",
        preset=preset,
        sets=tuple(set_),
        dataset=dataset,
        spot=spot,
        resume=resume,
        force=force,
        wait=wait,
        local=local,
        engine=engine,
        builder=builder,
        dry_run=dry_run,
        allow_overrun=allow_overrun,
        network_isolation=network_isolation,
    )
    ctx.obj = GlobalOptions(flags, config, template)
    if ctx.invoked_subcommand is not None:
        return
    if not run_id:
        raise aws.LaunchError("--run-id is required to launch (or give a subcommand; see --help)")
    if not dry_run:
        result = launch(template, ctx.obj.settings())
        jobs.report_end(result.job_name, result.status, result.failure_reason)
        return
    request, cost = dry_run_request(template, ctx.obj.settings())
    if json_:
        print(json.dumps(request, indent=2, sort_keys=True))
        return
    display.console.print_json(data=request)
    display.console.print(cost.describe() if cost else "cost: unknown throughput for this instance type")


@app.command("tune")
def tune_command(
    ctx: typer.Context,
    parent: RunIdArgument,
    range_: Annotated[
        list[str],
        typer.Option("--range", help="key=low:high or key=low:high:log: a number setting to search (repeatable)."),
    ] = [],  # noqa: B006
    ranges: Annotated[
        Optional[Path], typer.Option(help='TOML file of ranges, key = "low:high[:log]" (top level or [ranges]).')
    ] = None,
    objective: Annotated[
        str, typer.Option(help="val: validation behavioural success during training; eval: the final evaluation's.")
    ] = "val",
    max_jobs: Annotated[int, typer.Option(help="Training jobs in all.")] = 10,
    max_parallel_jobs: Annotated[int, typer.Option(help="Training jobs at once.")] = 2,
    early_stopping: Annotated[
        bool, typer.Option(help="Let SageMaker stop children whose objective lags (needs --objective val).")
    ] = True,
) -> None:
    """Start a SageMaker tuning job under PARENT that maximises behavioural success, with the launch flags given
    before 'tune'."""
    options = _options(ctx)
    search = tune.tuning_options(
        options.template, range_, ranges, objective, max_jobs, max_parallel_jobs, early_stopping
    )
    launch_options = dataclasses.replace(options.template, run_id=parent)
    if launch_options.dry_run:
        print(json.dumps(tune.dry_run_tuning(launch_options, options.settings(), search), indent=2, sort_keys=True))
        return
    request = tune.launch_tuning(launch_options, options.settings(), search)
    display.console.print(
        f"[bold]{request['HyperParameterTuningJobName']}[/] created for {parent}: up to {max_jobs} jobs, "
        f"{max_parallel_jobs} at a time"
    )
    display.console.print(f"  follow:  roadsense-launch status {parent}", soft_wrap=True)
    display.console.print(
        f"  compare: roadsense-launch compare {parent}   best model: roadsense-launch fetch {parent}", soft_wrap=True
    )


@app.command()
def build(
    ctx: typer.Context,
    engine: Annotated[str, typer.Option(help="docker or podman.")] = "docker",
    tag: Annotated[Optional[str], typer.Option(help="Image tag (default the git commit).")] = None,
    build_arg: Annotated[list[str], typer.Option(help="KEY=VALUE for the Dockerfile (BASE_IMAGE, WHEELHOUSE).")] = [],  # noqa: B006
    codebuild: Annotated[
        bool,
        typer.Option(
            "--codebuild",
            help="Build and push in the infra stack's CodeBuild project instead (--tag = the commit to build).",
        ),
    ] = False,
) -> None:
    """Build the training image here (container/Dockerfile, context = repo root), or in CodeBuild."""
    commit = git_commit()
    if codebuild:
        # CodeBuild clones the source repository, so the commit must have been pushed there.
        settings = _options(ctx).settings()
        print(image.build_with_codebuild(aws.make_session(settings), settings, tag or commit))
        return
    build_args = {
        "ROADSENSE_GIT_COMMIT": commit,
        **_key_values(build_arg, "--build-arg", "BASE_IMAGE=python:3.11-slim"),
    }
    name = image.build_locally(engine, tag or commit, Path.cwd(), build_args)
    display.console.print(f"built {name}")


@app.command()
def push(
    ctx: typer.Context,
    engine: Annotated[str, typer.Option(help="docker or podman.")] = "docker",
    tag: Annotated[Optional[str], typer.Option(help="Local image tag (default the git commit).")] = None,
) -> None:
    """Push the locally built image to the ECR repository; prints its URI for --image-uri."""
    settings = _options(ctx).settings()
    print(image.push(aws.make_session(settings), engine, f"{image.LOCAL_IMAGE}:{tag or git_commit()}", settings))


@app.command()
def upload(
    ctx: typer.Context,
    run_id: RunIdArgument,
    dataset: Annotated[Path, typer.Option(help="Dataset folder with manifest.json.")],
) -> None:
    """Verify a dataset and upload it to the run's dataset prefix (unchanged files are skipped)."""
    settings = _options(ctx).settings()
    layout = RunLayout(settings.bucket, run_id)
    result = upload_dataset(aws.make_session(settings).client("s3"), dataset, layout)
    display.console.print(
        f"dataset verified; {len(result.uploaded)} uploaded, {len(result.skipped)} unchanged -> {layout.dataset_uri}"
    )


@app.command()
def status(
    ctx: typer.Context,
    run_id: Annotated[Optional[str], typer.Argument(callback=_checked_run_id, help=_RUN_ID_HELP)] = None,
) -> None:
    """The status of a run's latest job (a tuning job's children, for its parent), or of SageMaker's newest jobs."""
    options = _options(ctx)
    display.show(runs.status(options.store(), options.sagemaker, run_id))


@app.command()
def logs(
    ctx: typer.Context,
    run_id: RunIdArgument,
    follow: Annotated[bool, typer.Option(help="Keep streaming until the job ends.")] = False,
) -> None:
    """Print a run's job log (CloudWatch); --follow adds a progress bar from its metric lines."""
    options = _options(ctx)
    job = runs.sagemaker_job(
        options.store(), run_id, f"roadsense-launch fetch {run_id}: its whole log is then in output-data/training.log"
    )
    session = aws.make_session(options.settings())
    if not follow:
        jobs.print_log(session.client("logs"), job)
        return
    final = jobs.follow_with_progress(session, job)
    jobs.report_end(job, final.status, final.failure_reason)


@app.command()
def stop(ctx: typer.Context, run_id: RunIdArgument) -> None:
    """Stop a run's job (the container checkpoints first)."""
    options = _options(ctx)
    job = runs.sagemaker_job(options.store(), run_id, "press Ctrl-C where it runs")
    result = jobs.stop_job(options.sagemaker(), job)
    display.console.print(f"{job}: {result.status} ({result.secondary_status})")


@app.command()
def fetch(
    ctx: typer.Context,
    run_id: RunIdArgument,
    to: Annotated[Optional[Path], typer.Option(help="Target folder (default <runs-dir>/<run-id>).")] = None,
    job: Annotated[
        Optional[str], typer.Option(help="A tuning job's parent: the child job to fetch (default the best).")
    ] = None,
) -> None:
    """Download a run's model.tar.gz (and output.tar.gz) and extract them safely into --to; for a
    tuning job's parent, its best child's (or --job's)."""
    options = _options(ctx)
    display.console.print(
        runs.fetch(options.store(), options.sagemaker, run_id, to or options.settings().runs_dir / run_id, job)
    )


@app.command("list")
def list_command(ctx: typer.Context) -> None:
    """The runs in the bucket (in --runs-dir with --local), with their latest job."""
    display.show(runs.list_runs(_options(ctx).store()))


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
    options = _options(ctx)
    display.show(
        sweep.run_sweep(
            options.template,
            options.settings(),
            parent,
            sweep.parse_seeds(seeds),
            list(set_),
            max_parallel,
            poll_seconds,
        )
    )


@app.command("compare")
def compare_command(ctx: typer.Context, parent: RunIdArgument) -> None:
    """One table of a sweep's evaluation metrics (each child's overall metrics from its metrics.json),
    each rate with its 95 % interval, marked where it differs from the column's best run by more than the noise."""
    options = _options(ctx)
    display.show(compare_runs(options.store(), options.sagemaker, parent))


@infra_app.command("deploy")
def infra_deploy(
    ctx: typer.Context,
    source_repo: Annotated[
        Optional[str], typer.Option(help="GitHub HTTPS URL CodeBuild clones (needed on the first deploy).")
    ] = None,
    alert_email: Annotated[
        Optional[str], typer.Option(help="Budget alert address (needed on the first deploy).")
    ] = None,
    budget_usd: Annotated[
        Optional[int], typer.Option(min=1, help="Monthly budget in USD (template default: 100).")
    ] = None,
    bucket: Annotated[
        Optional[str], typer.Option(help="Results bucket name (template default: saferide-training-results).")
    ] = None,
    param: Annotated[list[str], typer.Option(help="Any other template parameter, KEY=VALUE; repeatable.")] = [],  # noqa: B006
) -> None:
    """Create or update the stacks, wait for them, and print the training stack's outputs.

    Parameters not given keep their current value on an update.
    """
    settings = _options(ctx).given_settings()
    infra.deploy(
        aws.make_session(settings),
        settings.stack_name,
        source_repo=source_repo,
        alert_email=alert_email,
        budget_usd=budget_usd,
        bucket=bucket,
        parameters=_key_values(param, "--param", "ImagesToKeep=30"),
    )


@infra_app.command("status")
def infra_status(ctx: typer.Context) -> None:
    """Show both stacks' states and the training stack's outputs."""
    settings = _options(ctx).given_settings()
    infra.status(aws.make_session(settings), settings.stack_name)


@infra_app.command("delete")
def infra_delete(
    ctx: typer.Context, yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False
) -> None:
    """Delete both stacks. The bucket and the repository are kept (they hold results and images)."""
    settings = _options(ctx).given_settings()
    infra.delete(
        aws.make_session(settings),
        settings.stack_name,
        confirm=lambda question: yes or typer.confirm(question, abort=True),
    )
