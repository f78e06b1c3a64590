"""Evaluate a policy and its baselines on the same matrix; write metrics.json, episodes.jsonl, report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from roadsense.config import PipelineConfig
from roadsense.evaluation.matrix import plan_matrix
from roadsense.evaluation.metrics import compute_metrics
from roadsense.evaluation.policies import BASELINES
from roadsense.evaluation.replay import write_replay_record
from roadsense.evaluation.report import write_report
from roadsense.evaluation.runner import run_episodes
from roadsense.evaluation.traces import trace_failures
from roadsense.metric_lines import EVAL_TAG, PUBLISHED, emit
from roadsense.scenarios.dataset import Dataset

_EMITTED = frozenset(name for tag, name in PUBLISHED if tag == EVAL_TAG)


def emitted_metrics(overall: dict[str, Any]) -> dict[str, float | int]:
    """The ``[eval]`` line's values: the published eval metrics of metrics.json's ``overall`` that have a value."""
    return {key: value for key, value in overall.items() if key in _EMITTED and value is not None}


def evaluate(policy: str, dataset_path: Path, output: Path, config: PipelineConfig,
             baselines: tuple[str, ...] | None = None, progress_csv: Path | None = None,
             model_selection: dict[str, Any] | None = None, variants: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``policy`` (a model.zip path, an exported .onnx path or a baseline name) and ``baselines`` on the eval matrix.

    The plan is checked for coverage before any episode runs. ``model_selection`` (from
    training) says which checkpoint the model is; it is recorded in metrics.json and the
    report. ``variants``: exported ``.onnx`` policies run in the same pool on the same plan,
    recorded under ``metrics["variants"]`` and set side by side in the report. Returns the metrics dict.
    """
    eval_config = config.evaluation
    dataset = Dataset.open(dataset_path)
    plan = plan_matrix(dataset, eval_config.episodes_per_bucket, eval_config.eval_seed)
    baselines = tuple(b for b in (eval_config.baselines if baselines is None else baselines) if b != policy)
    output.mkdir(parents=True, exist_ok=True)

    episodes_by_policy = run_episodes(plan, [policy, *baselines, *variants], dataset.root, config.env,
                                      eval_config.eval_workers)
    results: dict[str, dict[str, Any]] = {}
    for name, episodes in episodes_by_policy.items():
        metrics = compute_metrics(episodes)
        metrics["reaction_times_s"] = [e["reaction_time_s"] for e in episodes if e["reaction"]]
        results[name] = metrics
    with open(output / "episodes.jsonl", "w") as fh:
        for episode in episodes_by_policy[policy]:
            fh.write(json.dumps(episode, sort_keys=True) + "\n")

    metrics = results[policy]
    metrics["policy"] = policy if policy in BASELINES else "model"
    metrics["plan"] = {"episodes": len(plan), "episodes_per_bucket": eval_config.episodes_per_bucket,
                       "eval_seed": eval_config.eval_seed, "dataset_id": dataset.dataset_id}
    if model_selection is not None:
        metrics["model_selection"] = model_selection
    metrics["baselines"] = {name: {k: results[name][k] for k in ("overall", "per_peer_count", "per_bucket")}
                            for name in baselines}
    sections: list[str] = []
    if variants:
        from roadsense.export.report import flagged, variant_section

        metrics["variants"] = {spec: {k: results[spec][k] for k in ("overall", "per_peer_count", "per_bucket")}
                               for spec in variants}
        overall = {spec: results[spec]["overall"] for spec in variants}
        metrics["variants_flagged"] = flagged(metrics["overall"], overall)
        sections = variant_section(Path(policy).name, metrics["overall"], overall)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_replay_record(output, policy, dataset.root, config.env)
    failures = trace_failures(output, policy, dataset.root, dataset.dataset_id, config, episodes_by_policy[policy])
    write_report(output, metrics, progress_csv, sections=[*sections, *failures])
    emit(EVAL_TAG, emitted_metrics(metrics["overall"]))
    return metrics
