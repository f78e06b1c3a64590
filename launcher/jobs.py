"""SageMaker training jobs: create, describe, stop, list, and follow one's CloudWatch logs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable

import boto3
import botocore.exceptions

from launcher import display
from roadsense.errors import RunFailed

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_logs.type_defs import GetLogEventsRequestTypeDef
    from mypy_boto3_sagemaker import SageMakerClient
    from mypy_boto3_sagemaker.type_defs import (
        CreateTrainingJobRequestTypeDef,
        DescribeTrainingJobResponseTypeDef,
        ListTrainingJobsRequestTypeDef,
    )

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL = ("Completed", "Failed", "Stopped")
# Makes a SageMaker client when called: commands that may not need one (a local run) connect only if they do.
SageMaker = Callable[[], "SageMakerClient"]
UNSUCCESSFUL = ("Failed", "Stopped")


class JobFailed(RunFailed):
    """A training job ended Failed or Stopped; the message names it and why."""


def report_end(name: str, status: str, failure_reason: str) -> None:
    """Say that a job completed; raise :class:`JobFailed` if it failed or was stopped (a running job says nothing)."""
    if status in UNSUCCESSFUL:
        raise JobFailed(f"{name} {status}: {failure_reason}")
    if status == "Completed":
        display.console.print(f"[green]{name} Completed[/]")


@dataclass(frozen=True)
class JobStatus:
    """The parts of DescribeTrainingJob a user looks at."""

    name: str
    status: str
    secondary_status: str = ""
    failure_reason: str = ""
    created: datetime | None = None
    ended: datetime | None = None
    billable_seconds: int | None = None
    model_uri: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_describe(cls, response: DescribeTrainingJobResponseTypeDef) -> "JobStatus":
        return cls(
            name=response["TrainingJobName"],
            status=response["TrainingJobStatus"],
            secondary_status=response.get("SecondaryStatus", ""),
            failure_reason=response.get("FailureReason", ""),
            created=response.get("CreationTime"),
            ended=response.get("TrainingEndTime"),
            billable_seconds=response.get("BillableTimeInSeconds"),
            model_uri=response.get("ModelArtifacts", {}).get("S3ModelArtifacts", ""),
        )


def create_job(sagemaker: SageMakerClient, request: CreateTrainingJobRequestTypeDef) -> str:
    """Send the (validated) request; returns the job's ARN."""
    return sagemaker.create_training_job(**request)["TrainingJobArn"]


def describe_job(sagemaker: SageMakerClient, name: str) -> JobStatus:
    return JobStatus.from_describe(sagemaker.describe_training_job(TrainingJobName=name))


def stop_job(sagemaker: SageMakerClient, name: str) -> JobStatus:
    """Ask SageMaker to stop the job (the container gets SIGTERM and 120 s to checkpoint).

    A job that already ended is returned as is instead of making AWS reject the call.
    """
    status = describe_job(sagemaker, name)
    if not status.terminal:
        sagemaker.stop_training_job(TrainingJobName=name)
        status = describe_job(sagemaker, name)
    return status


def list_jobs(sagemaker: SageMakerClient, name_contains: str = "", max_results: int = 20) -> list[JobStatus]:
    """The newest jobs, optionally only those whose name contains ``name_contains``."""
    kwargs: ListTrainingJobsRequestTypeDef = {"SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": max_results}
    if name_contains:
        kwargs["NameContains"] = name_contains
    summaries = sagemaker.list_training_jobs(**kwargs)["TrainingJobSummaries"]
    return [
        JobStatus(
            name=s["TrainingJobName"],
            status=s["TrainingJobStatus"],
            secondary_status=s.get("SecondaryStatus", ""),
            created=s.get("CreationTime"),
            ended=s.get("TrainingEndTime"),
        )
        for s in summaries
    ]


class LogReader:
    """Reads a job's log lines as they arrive, across all its streams (one per host and restart)."""

    def __init__(self, logs: CloudWatchLogsClient, job_name: str) -> None:
        self._logs = logs
        self._job = job_name
        self._tokens: dict[str, str | None] = {}

    def read_new(self) -> list[str]:
        """Lines written since the last call; [] while the job has not started logging."""
        try:
            streams = self._logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{self._job}/")[
                "logStreams"
            ]
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return []
            raise
        lines: list[str] = []
        for stream in sorted(s["logStreamName"] for s in streams):
            lines += self._read_stream(stream)
        return lines

    def _read_stream(self, stream: str) -> list[str]:
        lines: list[str] = []
        while True:
            kwargs: GetLogEventsRequestTypeDef = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
            token = self._tokens.get(stream)
            if token:
                kwargs["nextToken"] = token
            response = self._logs.get_log_events(**kwargs)
            lines += [event["message"].rstrip("\r\n") for event in response["events"]]
            # CloudWatch returns the same token when there is nothing newer.
            done = response.get("nextForwardToken") == self._tokens.get(stream) or not response["events"]
            self._tokens[stream] = response.get("nextForwardToken")
            if done:
                return lines


def follow_job(
    sagemaker: SageMakerClient,
    logs: CloudWatchLogsClient,
    name: str,
    on_line: Callable[[str], None],
    on_status: Callable[[JobStatus], None] = lambda status: None,
    poll_seconds: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
) -> JobStatus:
    """Stream the job's log lines to ``on_line`` until it ends; returns its final status."""
    reader = LogReader(logs, name)
    last: tuple[str, str] | None = None
    while True:
        status = describe_job(sagemaker, name)
        if (status.status, status.secondary_status) != last:
            on_status(status)
            last = (status.status, status.secondary_status)
        for line in reader.read_new():
            on_line(line)
        if status.terminal:
            return status
        sleep(poll_seconds)


def follow_with_progress(session: boto3.Session, name: str, show_progress: bool = True) -> JobStatus:
    """:func:`follow_job` with every log line printed above a progress bar of the training timesteps."""
    with display.MetricProgress(name, enabled=show_progress) as bar:
        return follow_job(
            session.client("sagemaker"),
            session.client("logs"),
            name,
            bar.on_line,
            on_status=lambda s: bar.on_status(f"{s.status} / {s.secondary_status}"),
        )


def print_log(logs: CloudWatchLogsClient, name: str) -> None:
    """Print the job's log so far (its own output: terminal escapes are shown, not obeyed)."""
    lines = LogReader(logs, name).read_new()
    for line in lines:
        print(display.printable(line))
    if not lines:
        display.errors.print(
            f"{name} has no log lines yet (it writes them once its instance has started)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
