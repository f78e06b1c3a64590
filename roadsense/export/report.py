"""The report's side-by-side section: the torch model and its exported graphs on the same plan.

A quantised graph whose behavioural success falls outside the 95 % Wilson interval of the
float graph (of the torch model when no float graph was evaluated) is flagged: INT8 then
changed how the car behaves by more than the evaluation's noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roadsense.evaluation.metrics import format_rate, rate_interval
from roadsense.export.runtime import is_quantised

FLAG = "**outside the float interval**"
_KEY = "behavioral_success_rate"


def variant_section(torch_label: str, torch_overall: dict[str, Any], variants: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per policy, then a line per flagged INT8 graph.

    ``variants``: an ONNX spec (path) -> its ``overall`` metrics section (roadsense.evaluation.metrics).
    """
    flags = flagged(torch_overall, variants)
    lines = ["## Exported graphs beside the torch model", "",
             "The same planned episodes (scenarios, seeds, hazard ranks) for each; onnxruntime on one thread. "
             "Rates with their 95 % Wilson intervals.", "",
             "| policy | runtime | behavioural success | collisions | reacted | mean reaction (s) | |",
             "|---|---|---|---|---|---|---|"]
    rows = [(torch_label, "torch", torch_overall, False)]
    rows += [(Path(spec).name, "onnxruntime, INT8" if is_quantised(Path(spec)) else "onnxruntime, float", overall,
              spec in flags) for spec, overall in variants.items()]
    for label, runtime, overall, flag in rows:
        reaction = overall.get("mean_reaction_time_s")
        lines.append(f"| {label} | {runtime} | {format_rate(overall, _KEY)} | {format_rate(overall, 'collision_rate')} | "
                     f"{format_rate(overall, 'reaction_rate')} | {'n/a' if reaction is None else f'{reaction:.2f}'} | "
                     f"{FLAG if flag else ''} |")
    for spec in flags:
        lines.append(f"\n{Path(spec).name}: behavioural success {format_rate(variants[spec], _KEY)} is outside the "
                     f"float policy's interval; the quantisation changes behaviour. Deploy the float graph or recalibrate.")
    return [*lines, ""]


def flagged(torch_overall: dict[str, Any], variants: dict[str, dict[str, Any]]) -> list[str]:
    """The INT8 specs whose behavioural success lies outside the float reference's 95 % interval."""
    floats = [spec for spec in variants if not is_quantised(Path(spec))]
    reference = variants[floats[0]] if floats else torch_overall
    low, high = rate_interval(reference, _KEY) or (reference[_KEY], reference[_KEY])
    return [spec for spec, overall in variants.items()
            if is_quantised(Path(spec)) and not low <= overall[_KEY] <= high]
