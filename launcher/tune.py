"""Hyperparameter tuning: a SageMaker HyperParameterTuningJob over numeric settings of the config.

The training job definition is the launcher's own CreateTrainingJob request
(:func:`launcher.request.build_request`, through :func:`launcher.launch.plan_cloud`) with the
tuned keys taken out of its hyperparameters: the children run the same image, metrics,
environment, network isolation, stopping condition and output layout as ``roadsense-launch``.
Their results land under the parent run's prefix, ``<parent>/output/<child-job>/output/``; the
parent's ``tuning.json`` names the tuning job, and ``status``, ``compare`` and ``fetch`` list its
children with ListTrainingJobsForHyperParameterTuningJob.

A range is ``key=low:high`` or ``key=low:high:log``; the key must be a number setting of the
config, and an ``int`` setting is searched as an integer range, a ``float`` one as a continuous
range. A TOML file holds the same strings, ``key = "low:high[:log]"``, at top level or in a
``[ranges]`` table.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypedDict, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from launcher import aws
from launcher.display import Report
from launcher.fetch import RunNotFoundError
from launcher.launch import LaunchOptions, dry_run_request, plan_cloud, prepare_cloud
from launcher.layout import RunId, RunIdError, check_name, validate_job_name
from launcher.remote import parse
from launcher.settings import LaunchSettings, read_toml
from launcher.store import RunStore, S3RunStore
from roadsense.config import (
    KEY_SECTION,
    SECTIONS,
    ConfigError,
    PipelineConfig,
    parse_set_options,
)
from roadsense.exits import clip
from roadsense.metric_lines import EVAL_TAG, METRIC_DEFINITIONS, VAL_TAG

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient
    from mypy_boto3_sagemaker.type_defs import (
        CreateHyperParameterTuningJobRequestTypeDef,
        CreateTrainingJobRequestTypeDef,
        HyperParameterTrainingJobDefinitionTypeDef,
        IntegerParameterRangeTypeDef,
    )

# The objective is a published metric (roadsense/metric_lines.py), so the children's logs carry it.
_PUBLISHED = {definition["Name"] for definition in METRIC_DEFINITIONS}
OBJECTIVES: dict[str, str] = {tag: f"{tag}:behavioral_success_rate" for tag in (VAL_TAG, EVAL_TAG)}
assert set(OBJECTIVES.values()) <= _PUBLISHED, "the tuning objectives must be published metric definitions"

MAX_RANGES = 30  # SageMaker searches at most 30 hyperparameters
MAX_JOBS = 500  # MaxNumberOfTrainingJobs
_TUNING_JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}")
# Keys of a CreateTrainingJob request that HyperParameterTrainingJobDefinition does not take
# (the hyperparameters go in as StaticHyperParameters, the tags on the tuning job).
_NOT_IN_DEFINITION = frozenset({"TrainingJobName", "HyperParameters", "Tags"})


def validate_tuning_job_name(name: str) -> str:
    """``name`` if it is a legal tuning job name (read back from tuning.json, it names AWS resources)."""
    return check_name(
        name,
        _TUNING_JOB_NAME,
        32,
        "tuning job name",
        "letters, digits or '-', starting and ending with a letter or digit",
    )


TuningJobName = Annotated[str, AfterValidator(validate_tuning_job_name)]


def tuning_job_name(parent: str) -> str:
    """A legal, unique tuning job name for ``parent``: at most 32 characters, so the run id is cut short
    and a random token (the record has the time) keeps attempts apart."""
    return validate_tuning_job_name(f"{parent.replace('_', '-')[:20].rstrip('-')}-{secrets.token_hex(5)}")


@dataclass(frozen=True)
class ParamRange:
    """One searched setting: an integer or continuous range, linear or logarithmic."""

    key: str
    low: float
    high: float
    integer: bool
    log: bool

    def to_api(self) -> IntegerParameterRangeTypeDef:
        """The range as the API takes it (an IntegerParameterRange and a ContinuousParameterRange have the same fields)."""
        spell = (lambda v: str(int(v))) if self.integer else repr
        return {
            "Name": self.key,
            "MinValue": spell(self.low),
            "MaxValue": spell(self.high),
            "ScalingType": "Logarithmic" if self.log else "Linear",
        }


def _number_type(key: str) -> type[int] | type[float] | None:
    """int or float for a plain number setting; None for anything else (text, bools, pairs, optional values)."""
    if key not in KEY_SECTION:  # preset
        return None
    annotation = SECTIONS[KEY_SECTION[key]].model_fields[key].annotation
    if annotation is int:
        return int
    if annotation is float:
        return float
    return None


def parse_range(text: str, preset: str, sets: dict[str, str], source: str = "--range") -> ParamRange:
    """``key=low:high[:log]`` checked against the config: the key exists and is a number, the bounds
    are numbers of its type that the config accepts (with ``preset`` and ``sets``), low < high, and a
    log scale starts above 0."""
    where = f"{source} {clip(repr(text))}"
    key, sep, bounds = text.partition("=")
    parts = bounds.split(":")
    if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip() != "log"):
        raise ConfigError(
            f"{where}: expected key=low:high or key=low:high:log, e.g. --range learning_rate=1e-5:1e-3:log"
        )
    try:
        # The config's check: unknown keys get a "did you mean".
        key = next(iter(parse_set_options([f"{key.strip()}=0"])))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    kind = _number_type(key)
    if kind is None:
        raise ConfigError(
            f"{where}: {key} is not a number setting; tune int or float settings and give the others with --set"
        )
    try:
        low, high = (_bound(part, kind) for part in parts[:2])
    except ValueError:  # json.JSONDecodeError is one
        raise ConfigError(f"{where}: the bounds of {key} must be finite {kind.__name__} numbers") from None
    if not low < high:
        raise ConfigError(f"{where}: low must be below high")
    log = len(parts) == 3
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0")
    for bound in (low, high):
        try:
            PipelineConfig.from_overrides(preset, {**sets, key: bound})
        except ConfigError as exc:  # names the key and the rule the bound breaks
            raise ConfigError(f"{where}: {exc}") from None
    return ParamRange(key, low, high, kind is int, log)


def _bound(text: str, kind: type[int] | type[float]) -> float:
    """A bound as a finite number of the setting's type (true/false, NaN and 1.5 for an int are refused)."""
    value = json.loads(text)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(text)
    if kind is int:
        if value != int(value):
            raise ValueError(text)
        return int(value)
    return float(value)


def ranges_from_file(path: Path) -> list[str]:
    """The ``key=low:high[:log]`` strings of a TOML ranges file."""
    data = read_toml(path, ConfigError, "--ranges")
    table = data.get("ranges", data)
    bad = next((key for key, value in table.items() if not isinstance(value, str)), None)
    if bad is not None:
        raise ConfigError(f'--ranges {path}: {bad} must be a string "low:high" or "low:high:log"')
    return [f"{key}={value}" for key, value in table.items()]


@dataclass(frozen=True)
class TuningOptions:
    """What the tuning job searches and how hard."""

    ranges: tuple[ParamRange, ...]
    objective: str = VAL_TAG  # a key of OBJECTIVES
    max_jobs: int = 10
    max_parallel_jobs: int = 2
    early_stopping: bool = True


def tuning_request(
    training: CreateTrainingJobRequestTypeDef, options: TuningOptions, name: str
) -> CreateHyperParameterTuningJobRequestTypeDef:
    """The CreateHyperParameterTuningJob request whose children run ``training`` (a validated
    CreateTrainingJob request) with the ranges searched; validated, so safe to send."""
    tuned = {r.key for r in options.ranges}
    # A HyperParameterTrainingJobDefinition takes the request's other fields as they are; the type checker
    # cannot follow a TypedDict through a key filter.
    definition = cast(
        "HyperParameterTrainingJobDefinitionTypeDef",
        {key: value for key, value in training.items() if key not in _NOT_IN_DEFINITION},
    )
    definition["StaticHyperParameters"] = {k: v for k, v in training["HyperParameters"].items() if k not in tuned}
    if not training["EnableManagedSpotTraining"]:
        # Every child would get the same checkpoint prefix, and the container resumes from what it
        # finds there: one child would continue another's training with other settings. Only spot
        # needs checkpoints (an interrupted child restarts from them); see launcher/README.md.
        definition.pop("CheckpointConfig", None)
    request: CreateHyperParameterTuningJobRequestTypeDef = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {
                "Type": "Maximize",
                "MetricName": OBJECTIVES.get(options.objective, options.objective),
            },
            "ResourceLimits": {
                "MaxNumberOfTrainingJobs": options.max_jobs,
                "MaxParallelTrainingJobs": options.max_parallel_jobs,
            },
            "ParameterRanges": {
                "IntegerParameterRanges": [r.to_api() for r in options.ranges if r.integer],
                "ContinuousParameterRanges": [r.to_api() for r in options.ranges if not r.integer],
                "CategoricalParameterRanges": [],
            },
            "TrainingJobEarlyStoppingType": "Auto" if options.early_stopping else "Off",
        },
        "TrainingJobDefinition": definition,
        "Tags": training["Tags"],
    }
    problems = tuning_problems(request, options)
    if problems:
        raise ConfigError("invalid tuning job: " + "; ".join(problems))
    return request


def tuning_problems(request: CreateHyperParameterTuningJobRequestTypeDef, options: TuningOptions) -> list[str]:
    """Every rule of CreateHyperParameterTuningJob (and of a useful search) that ``request`` breaks."""
    problems: list[str] = []
    try:
        validate_tuning_job_name(request["HyperParameterTuningJobName"])
    except RunIdError as exc:
        problems.append(str(exc))
    if options.objective not in OBJECTIVES:
        problems.append(f"objective {options.objective!r}: choose {' or '.join(OBJECTIVES)}")
    if not options.ranges:
        problems.append("no ranges: give at least one --range key=low:high (or --ranges FILE)")
    keys = [r.key for r in options.ranges]
    if len(keys) > MAX_RANGES:
        problems.append(f"{len(keys)} ranges: SageMaker searches at most {MAX_RANGES}")
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        problems.append(f"ranges given twice: {', '.join(duplicated)}; keep one of each")
    if not 1 <= options.max_jobs <= MAX_JOBS:
        problems.append(f"--max-jobs {options.max_jobs}: 1..{MAX_JOBS}")
    if not 1 <= options.max_parallel_jobs <= options.max_jobs:
        problems.append(f"--max-parallel-jobs {options.max_parallel_jobs}: 1..--max-jobs ({options.max_jobs})")
    static = request["TrainingJobDefinition"]["StaticHyperParameters"]
    if options.objective == VAL_TAG and "val_every" not in keys and static.get("val_every") == "0":
        problems.append(
            "objective val: val_every is 0, so no [val] line is printed; drop --set val_every=0 or use --objective eval"
        )
    if options.early_stopping and options.objective == EVAL_TAG:
        # Early stopping compares a child's objective during training with the others'; eval is printed only at the end.
        problems.append(
            "early stopping needs an objective reported during training: use --objective val, or --no-early-stopping"
        )
    return problems


class TuningRecord(TypedDict):
    """tuning.json as the launcher reads it back: the fields :class:`_TuningRecord` checks."""

    parent_run_id: str
    tuning_job_name: str
    launched_at: str


class _TuningRecord(BaseModel):
    """tuning.json as read back: its names become AWS requests and S3 keys, so they are checked."""

    model_config = ConfigDict(extra="allow")

    parent_run_id: RunId
    tuning_job_name: TuningJobName
    launched_at: str = Field(max_length=64)


def tuning_record(parent: str, request: CreateHyperParameterTuningJobRequestTypeDef) -> str:
    return (
        json.dumps(
            {
                "parent_run_id": parent,
                "tuning_job_name": request["HyperParameterTuningJobName"],
                "git_commit": request["TrainingJobDefinition"]["Environment"]["ROADSENSE_GIT_COMMIT"],
                "launched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "request": request,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )


def parse_tuning(data: bytes, source: str) -> TuningRecord:
    """A tuning record checked against its schema."""
    # _TuningRecord checked every field of TuningRecord; model_dump() returns them (and the unchecked rest) untyped.
    return cast(TuningRecord, parse(_TuningRecord, data, source).model_dump())


def read_tuning(store: RunStore, run_id: str) -> str | None:
    """The tuning job named by the run's tuning.json (bounded and checked), or None if it has none (a local
    store never has one: tuning jobs run on SageMaker)."""
    found = store.document(store.layout(run_id).tuning_key, parse_tuning)
    return None if found is None else found["tuning_job_name"]


@dataclass(frozen=True)
class Child:
    """One training job of a tuning job, from ListTrainingJobsForHyperParameterTuningJob."""

    job_name: str
    status: str
    tuned: dict[str, str]
    objective: float | None
    failure_reason: str = ""


def list_children(sagemaker: SageMakerClient, tuning_job: str) -> list[Child]:
    """The tuning job's training jobs, best objective first (jobs without one last). Their names become
    S3 keys and paths, so each passes the job-name check."""
    pages = sagemaker.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(
        HyperParameterTuningJobName=tuning_job, SortBy="FinalObjectiveMetricValue", SortOrder="Descending"
    )
    children = [
        Child(
            job_name=validate_job_name(summary["TrainingJobName"]),
            status=summary["TrainingJobStatus"],
            tuned={k: str(v) for k, v in summary.get("TunedHyperParameters", {}).items()},
            objective=summary.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value"),
            failure_reason=summary.get("FailureReason", ""),
        )
        for page in pages
        for summary in page["TrainingJobSummaries"]
    ]
    return sorted(children, key=lambda c: (c.objective is None, -(c.objective or 0.0)))


def best_child(sagemaker: SageMakerClient, tuning_job: str) -> str | None:
    """The tuning job's best training job so far (DescribeHyperParameterTuningJob), or None before one completed."""
    best = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job).get("BestTrainingJob")
    return validate_job_name(best["TrainingJobName"]) if best else None


def dry_run_tuning(
    options: LaunchOptions, settings: LaunchSettings, tuning: TuningOptions
) -> CreateHyperParameterTuningJobRequestTypeDef:
    """The request ``tune`` would send; AWS is read (never written) only for what was not given, as in a dry-run
    launch."""
    training, _ = dry_run_request(options, settings)
    return tuning_request(training, tuning, tuning_job_name(options.run_id))


def launch_tuning(
    options: LaunchOptions, settings: LaunchSettings, tuning: TuningOptions
) -> CreateHyperParameterTuningJobRequestTypeDef:
    """Create the tuning job of the parent run ``options.run_id`` and its tuning.json; returns the request sent."""
    session = aws.make_session(settings)
    planned = plan_cloud(options, settings, session)
    # The ranges and the search are checked with the real training request, before anything is built or uploaded.
    request = tuning_request(planned.request, tuning, tuning_job_name(options.run_id))
    prepare_cloud(planned, options, settings, session)
    session.client("sagemaker").create_hyper_parameter_tuning_job(**request)
    store = S3RunStore(session.client("s3"), settings.bucket, settings.limits)
    store.put(store.layout(options.run_id).tuning_key, tuning_record(options.run_id, request).encode())
    return request


def tuning_options(
    template: LaunchOptions,
    ranges: list[str],
    ranges_file: Path | None,
    objective: str,
    max_jobs: int,
    max_parallel_jobs: int,
    early_stopping: bool,
) -> TuningOptions:
    """The search ``tune`` asks for: each ``--range`` (and each of ``ranges_file``) checked against the config
    of the launch flags, which must start a new SageMaker job."""
    if template.local or template.resume or template.wait:
        raise aws.LaunchError(
            "tune runs on SageMaker and starts a new search",
            "drop --local, --resume and --wait; follow it with roadsense-launch status PARENT",
        )
    sets = parse_set_options(list(template.sets))
    texts = [*ranges, *(ranges_from_file(ranges_file) if ranges_file else [])]
    return TuningOptions(
        tuple(parse_range(text, template.preset, sets) for text in texts),
        objective,
        max_jobs,
        max_parallel_jobs,
        early_stopping,
    )


def chosen_child(sagemaker: SageMakerClient, tuning_job: str, job: str | None) -> str:
    """``job`` if it is one of the tuning job's children, else (None) its best child so far."""
    if job is None:
        best = best_child(sagemaker, tuning_job)
        if best is None:
            raise RunNotFoundError(f"tuning job {tuning_job} has no completed child yet; see roadsense-launch status")
        return best
    names = [child.job_name for child in list_children(sagemaker, tuning_job)]
    if job not in names:
        raise RunNotFoundError(
            f"--job {job!r} is not a child of tuning job {tuning_job}; its children: {', '.join(names) or 'none yet'}"
        )
    return job


def tuning_report(sagemaker: SageMakerClient, tuning_job: str) -> Report:
    """The tuning job's state and its children, best objective first."""
    described = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)
    objective = described["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
    rows = [
        (
            c.job_name,
            c.status,
            "" if c.objective is None else f"{c.objective:.4g}",
            " ".join(f"{k}={v}" for k, v in c.tuned.items()),
            c.failure_reason,
        )
        for c in list_children(sagemaker, tuning_job)
    ]
    reason = described.get("FailureReason")
    return Report(
        f"tuning job {tuning_job}: {described['HyperParameterTuningJobStatus']}",
        ["job", "status", objective, "settings", "failure"],
        rows,
        warning=f"{tuning_job}: {reason}" if reason else "",
    )
