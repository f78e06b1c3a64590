"""``compare PARENT``: one table of the evaluation metrics of a sweep's runs or of a tuning job's training jobs.

A sweep's parent holds ``sweep.json`` (its children and their settings); each child's latest job
has a ``model.tar.gz`` whose ``metrics.json`` gives its overall metrics. A tuning job's parent
holds ``tuning.json``, and its children (from SageMaker) write under the parent's prefix. Both
are read through a :class:`~launcher.store.RunStore`, so a local sweep compares like one in S3.
Each rate shows its 95 % interval and is marked where it differs from its column's best run by
more than the noise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, create_model

from launcher.display import Report
from launcher.fetch import RunNotFoundError, read_member
from launcher.jobs import SageMaker
from launcher.record import latest_job, read_record
from launcher.remote import Limits, parse
from launcher.store import RunStore
from launcher.sweep import parse_sweep
from launcher.tune import list_children, read_tuning
from roadsense.evaluation.metrics import CI_SUFFIX, RATES, format_rate
from roadsense.evaluation.stats import differs
from roadsense.metric_lines import EVAL_TAG, PUBLISHED

EVAL_METRICS = [name for tag, name in PUBLISHED if tag == EVAL_TAG]
# The rate where lower is better; for every other rate higher is better (compare's best run).
LOWER_IS_BETTER = frozenset({"collision_rate"})
DIFFERS_MARK = "*"
DIFFERS_LEGEND = (
    f"{DIFFERS_MARK} differs from the best run in its column (lowest collision_rate, highest other rates) "
    "by more than the noise: the 95 % interval of the difference (Newcombe's hybrid score, from the two "
    "Wilson intervals) excludes 0. Rates show their 95 % Wilson interval in percent."
)


# Values read back must be finite JSON numbers (episode counts whole ones): a string, a boolean,
# NaN or an infinity is refused, so nothing downstream meets them.
_Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]
# Field definitions: (type, default). Their types are values here, which the type checker cannot follow.
_METRIC_FIELDS: dict[str, Any] = {name: (_Number | None, None) for name in EVAL_METRICS}
_INTERVAL_FIELDS: dict[str, Any] = {rate + CI_SUFFIX: (tuple[_Number, _Number] | None, None) for rate in RATES}
_Overall: type[BaseModel] = create_model(
    "_Overall",
    __config__=ConfigDict(extra="ignore"),
    episodes=(Annotated[StrictInt, Field(ge=0)] | None, None),
    **_METRIC_FIELDS,
    **_INTERVAL_FIELDS,
)


class _Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    if TYPE_CHECKING:
        # The model is made at run time; the type checker knows it only as a model, read through model_dump().
        overall: BaseModel
    else:
        overall: _Overall = Field(default_factory=_Overall)


def read_metrics(model_archive: Path, limits: Limits) -> dict[str, Any]:
    """The ``overall`` section of the trained policy's ``metrics.json`` in a model.tar.gz (read in memory).

    It holds the published evaluation metrics (metric_lines.PUBLISHED), ``episodes`` and, if
    written after the intervals, each rate's ``<rate>_ci95``; the per-bucket, per-peer-count
    and baseline sections are left to the report. The archive and metrics.json are bounded
    and checked like fetched results; {} if the archive has no metrics.json.
    """
    data = read_member(model_archive, "metrics.json", limits)
    if data is None:
        return {}
    return parse(_Metrics, data, f"metrics.json in {model_archive}").overall.model_dump(exclude_none=True)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _counted(run: dict[str, Any], rate: str) -> bool:
    """Whether ``run``'s ``rate`` comes with the episode count that an interval needs."""
    episodes = run.get("episodes")
    return _number(run.get(rate)) and isinstance(episodes, int) and episodes > 0


def has_rates(columns: list[str]) -> bool:
    """Whether a compare table with these columns shows rates, and so needs :data:`DIFFERS_LEGEND`."""
    return any(column in RATES for column in columns)


def compare_cells(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The published evaluation metrics that some run has, and each run's cell of each.

    ``runs`` are ``overall`` sections (:func:`read_metrics`; {} for a run without results). A
    rate reads ``10.0% (1.2-32.2)`` with its 95 % interval, then :data:`DIFFERS_MARK` when it
    differs by more than the noise from the column's best run; the episode counts come from
    each run's ``episodes``, so a run without them shows its rate alone and is never marked.
    """
    columns = [name for name in EVAL_METRICS if any(_number(run.get(name)) for run in runs)]
    cells: list[list[str]] = [[] for _ in runs]
    for name in columns:
        if name not in RATES:
            for run, row in zip(runs, cells, strict=True):
                row.append(f"{run[name]:.4g}" if _number(run.get(name)) else "")
            continue
        counted = [run for run in runs if _counted(run, name)]
        pick = min if name in LOWER_IS_BETTER else max
        best = pick(counted, key=lambda run: run[name]) if counted else None
        for run, row in zip(runs, cells, strict=True):
            if not _number(run.get(name)):
                row.append("")
                continue
            marked = (
                best is not None
                and _counted(run, name)
                and differs(run[name], run["episodes"], best[name], best["episodes"])
            )
            row.append(format_rate(run, name) + (f" {DIFFERS_MARK}" if marked else ""))
    return columns, cells


def compare(store: RunStore, sagemaker: SageMaker, parent: str) -> Report:
    """The table of ``parent``'s children: a sweep's runs, else a tuning job's training jobs (listed by the
    client ``sagemaker()`` makes); a child without results yet has empty cells."""
    layout = store.layout(parent)
    found = store.document(layout.sweep_key, parse_sweep)
    tuning_job = None if found is not None else read_tuning(store, parent)
    with tempfile.TemporaryDirectory() as scratch:

        def metrics(run_id: str, job: str) -> dict[str, Any]:
            key = store.layout(run_id).model_key(job)
            archive = store.file(key, Path(scratch) / key.replace("/", "_"))
            return read_metrics(archive, store.limits) if archive else {}

        if found is not None:
            # Every record is read (and checked) before the first archive is downloaded.
            records = [(child, point, read_record(store, child)) for child, point in found["children"].items()]
            rows = [
                (child, point, metrics(child, latest_job(record)) if record else {}) for child, point, record in records
            ]
        elif tuning_job is not None:
            # A tuning job's children write under the parent's prefix: <parent>/output/<child>/output/.
            rows = [
                (child.job_name, child.tuned, metrics(parent, child.job_name) if child.status == "Completed" else {})
                for child in list_children(sagemaker(), tuning_job)
            ]
        else:
            raise RunNotFoundError(
                f"{parent!r} is neither a sweep nor a tuning job: no {layout.sweep_key} or {layout.tuning_key} in "
                f"{store.where}"
            )
    columns, cells = compare_cells([overall for _, _, overall in rows])
    return Report(
        f"sweep {parent}",
        ["run id", "settings", *columns],
        [
            (child, " ".join(f"{k}={v}" for k, v in point.items()), *row)
            for (child, point, _), row in zip(rows, cells, strict=True)
        ],
        legend=DIFFERS_LEGEND if has_rates(columns) else "",
    )
