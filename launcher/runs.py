"""``list``, ``status`` and ``fetch``: a run's state and results, read through a :class:`~launcher.store.RunStore`.

A run's launch record names its attempts; the latest one's job is the one these commands show. A
local run (``mode`` local) has no SageMaker job: it completed if its model.tar.gz is in the store.
A tuning job's parent has no launch record but a tuning.json naming the tuning job, whose children
(listed by SageMaker) write under the parent's prefix. The same functions serve the bucket and
``--runs-dir``; SageMaker is asked (through the client ``sagemaker()`` makes) only for a job that
ran there.
"""

from __future__ import annotations

from pathlib import Path

from launcher import jobs
from launcher.aws import LaunchError
from launcher.display import Report
from launcher.fetch import RunNotFoundError, fetch_job
from launcher.record import Attempt, read_record
from launcher.store import LocalRunStore, RunStore
from launcher.tune import chosen_child, read_tuning, tuning_report
from roadsense.errors import UserError

_JOB_COLUMNS = ["job", "status", "detail", "failure", "created", "billable s"]


def latest_attempt(store: RunStore, run_id: str) -> Attempt:
    """The latest attempt of ``run_id`` from its launch record; :class:`RunNotFoundError` if it has none."""
    found = read_record(store, run_id)
    if found is None:
        raise RunNotFoundError(f"run {run_id!r} has no launch record in {store.where}; see roadsense-launch list")
    return found["attempts"][-1]


def sagemaker_job(store: RunStore, run_id: str, fix_if_local: str) -> str:
    """The SageMaker job of ``run_id``'s latest attempt; a local run is refused with ``fix_if_local``."""
    attempt = latest_attempt(store, run_id)
    if attempt["mode"] == "local":
        raise LaunchError(f"run {run_id!r} ran on a local machine (--local), not on SageMaker", fix_if_local)
    return attempt["job_name"]


def list_runs(store: RunStore) -> Report:
    """The runs in the store with their latest job, at most ``max_listed_runs`` of them."""
    names = store.top_level()
    limit = store.limits.listed_runs
    warning = (
        f"only the first {limit} runs are shown; raise the max_listed_runs setting to see more"
        if len(names) > limit
        else ""
    )
    return Report(
        f"runs in {store.where}",
        ["run id", "latest job", "mode", "launched", "attempts"],
        [_list_row(store, name) for name in names[:limit]],
        warning=warning,
    )


def _list_row(store: RunStore, name: str) -> tuple[str, str, str, str, int | str]:
    """One row of `list`. A name that is no run id, or whose launch record is refused, is shown as such
    (and never read or used to build a key): one bad entry in a shared bucket does not hide the others."""
    try:
        found = read_record(store, name)
    except UserError as exc:  # the name is no run id, or its record is refused
        return (name, f"(ignored: {exc})", "", "", "")
    if found is None:
        # A sweep's parent holds only sweep.json; anything else without a record is left over.
        is_sweep = store.has(store.layout(name).sweep_key)
        return (name, f"(sweep: compare {name})" if is_sweep else "(no launch record)", "", "", 0)
    last = found["attempts"][-1]
    return (name, last["job_name"], last["mode"], last["launched_at"], len(found["attempts"]))


def status(store: RunStore, sagemaker: jobs.SageMaker, run_id: str | None) -> Report:
    """The status of ``run_id``'s latest job (of each child, for a tuning job's parent), or, without a run id,
    SageMaker's newest jobs."""
    if run_id is None:
        if isinstance(store, LocalRunStore):
            raise LaunchError(
                "status without a run id lists SageMaker's newest jobs",
                "give the local run's id; roadsense-launch --local list shows them",
            )
        return _jobs_report(jobs.list_jobs(sagemaker()))
    tuning_job = read_tuning(store, run_id)
    if tuning_job:
        return tuning_report(sagemaker(), tuning_job)
    attempt = latest_attempt(store, run_id)
    name = attempt["job_name"]
    if attempt["mode"] == "local":
        # No job to ask: a local run completed if it left a model.tar.gz.
        if store.has(store.layout(run_id).model_key(name)):
            return _jobs_report([jobs.JobStatus(name, "Completed", "ran locally (--local)")])
        return _jobs_report(
            [jobs.JobStatus(name, "Failed", "ran locally (--local); no model.tar.gz: failed, stopped or still running")]
        )
    return _jobs_report([jobs.describe_job(sagemaker(), name)])


def _jobs_report(statuses: list[jobs.JobStatus]) -> Report:
    return Report(
        "training jobs",
        _JOB_COLUMNS,
        [(s.name, s.status, s.secondary_status, s.failure_reason, s.created, s.billable_seconds) for s in statuses],
    )


def fetch(store: RunStore, sagemaker: jobs.SageMaker, run_id: str, dest: Path, job: str | None) -> str:
    """Extract the results of ``run_id``'s latest job into ``dest``, or, for a tuning job's parent, those of its
    best child (or of ``job``, one of its children); returns what was fetched, to show."""
    tuning_job = read_tuning(store, run_id)
    if tuning_job is None and job is not None:
        raise LaunchError(
            f"run {run_id!r} is not a tuning job's parent, so --job does not apply", f"roadsense-launch fetch {run_id}"
        )
    if tuning_job is None:
        return f"results in {fetch_job(store, run_id, latest_attempt(store, run_id)['job_name'], dest)}"
    child = chosen_child(sagemaker(), tuning_job, job)
    model = fetch_job(store, run_id, child, dest)
    return f"{child} ({'chosen' if job else 'the best'} of tuning job {tuning_job})\nresults in {model}"
