"""The ``roadsense generate`` and ``roadsense dataset verify`` commands.

Plain functions with typer annotations; the application registers them::

    app.command("generate")(generate_command)
    dataset_app.command("verify")(verify_command)

Exit codes: 0 success, 1 the dataset does not verify or generation failed, 2 bad input.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from roadsense.config import DatasetConfig
from roadsense.errors import RunFailed
from roadsense.scenarios.dataset import summarize, verify_dataset
from roadsense.scenarios.generate import generate_dataset
from roadsense.v2v import ParamsError, load_params, params_hash

# DatasetConfig field -> the flag that sets it, so errors name what the user typed.
_FLAGS = {
    "dataset_seed": "--seed",
    "val_dataset_seed": "--val-seed",
    "eval_dataset_seed": "--eval-seed",
    "train_count": "--train-count",
    "val_count": "--val-count",
    "eval_count": "--eval-count",
    "peer_drop_prob": "--peer-drop-prob",
}
_FLAG_KEYS = re.compile(r"\b(" + "|".join(_FLAGS) + r")\b")
_DEFAULTS = DatasetConfig()


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def generate_command(
    output: Annotated[Path, typer.Option("--output", help="New dataset folder (must not exist or be empty).")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the training scenarios.")] = _DEFAULTS.dataset_seed,
    val_seed: Annotated[int, typer.Option("--val-seed", help="Seed of the validation scenarios (model selection).")] = _DEFAULTS.val_dataset_seed,
    eval_seed: Annotated[int, typer.Option("--eval-seed", help="Seed of the evaluation scenarios.")] = _DEFAULTS.eval_dataset_seed,
    train_count: Annotated[int, typer.Option("--train-count", help="Training scenarios.")] = _DEFAULTS.train_count,
    val_count: Annotated[int, typer.Option("--val-count", help="Validation scenarios, balanced over 1..5 peers.")] = _DEFAULTS.val_count,
    eval_count: Annotated[int, typer.Option("--eval-count", help="Evaluation scenarios, balanced over 1..5 peers.")] = _DEFAULTS.eval_count,
    peer_drop_prob: Annotated[float, typer.Option("--peer-drop-prob", help="Per-peer dropout in training scenarios, [0, 1).")] = _DEFAULTS.peer_drop_prob,
    emulator_params: Annotated[
        Optional[Path], typer.Option("--emulator-params", help="ESP-NOW parameter JSON to ship with the dataset; default: the measured defaults.")
    ] = None,
) -> None:
    """Generate a scenario dataset with its manifest."""
    values = {
        "dataset_seed": seed,
        "val_dataset_seed": val_seed,
        "eval_dataset_seed": eval_seed,
        "train_count": train_count,
        "val_count": val_count,
        "eval_count": eval_count,
        "peer_drop_prob": peer_drop_prob,
    }
    try:
        cfg = DatasetConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a check across fields: its message names the keys, shown as flags
            raise _fail(_FLAG_KEYS.sub(lambda m: _FLAGS[m[0]], err["msg"].removeprefix("Value error, "))) from None
        field = str(err["loc"][0])
        raise _fail(f"{_FLAGS.get(field, field)} {values.get(field, '')}: {err['msg']}") from None
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise _fail(f"--output {output}: already exists and is not empty; choose a new folder or delete it")
    try:
        # Without a file the env runs the defaults shipped with roadsense; record their hash.
        emulator_hash = params_hash(load_params(emulator_params))
    except ParamsError as exc:
        raise _fail(f"--emulator-params {exc}") from None

    start = time.perf_counter()
    try:
        generate_dataset(output, cfg, emulator_hash, progress=True, emulator_params_file=emulator_params)
    except (OSError, RunFailed) as exc:
        raise _fail(f"generation failed, nothing was written: {exc}", code=1) from None
    elapsed = time.perf_counter() - start
    typer.echo(
        f"wrote {output}: {cfg.train_count} train + {cfg.val_count} val + {cfg.eval_count} eval scenarios in {elapsed:.1f} s"
    )


def verify_command(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder holding manifest.json.")],
) -> None:
    """Check every hash, path and scenario invariant of a dataset; exit 1 naming the problems (the first 20)."""
    problems = verify_dataset(dataset)
    if len(problems) == 1:
        raise _fail(f"{dataset}: {problems[0]}", code=1)
    if problems:
        for problem in summarize(problems):
            typer.secho(f"problem: {problem}", err=True, fg=typer.colors.RED)
        raise _fail(f"{dataset}: {len(problems)} problems; regenerate the dataset", code=1)
    typer.echo(f"{dataset}: OK")
