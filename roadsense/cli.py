"""`roadsense`: the pipeline's command line. Each command is a thin wrapper over the library.

Exit codes (roadsense.exits): 0 success; 1 a stage failed; 2 bad input (the message names
the field and the fix), or the output folder is in use by another run; 130 / 143 stopped
by Ctrl-C / SIGTERM (training writes a checkpoint first).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from roadsense.config import PRESETS, ConfigError, DatasetConfig, PipelineConfig, parse_set_options
from roadsense.evaluation.policies import BASELINES
from roadsense.exits import FAILED

app = typer.Typer(help="RoadSense training pipeline: generate, train, evaluate, run.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
dataset_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print one JSON line.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
app.add_typer(bench_app, name="bench")

PresetOpt = Annotated[str, typer.Option("--preset", help=f"{' | '.join(PRESETS)}: the defaults to start from.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: --set key=value (repeatable).")]
BASELINE_CHOICE = "|".join(BASELINES)
# What `generate` reads: the dataset settings, and the emulator parameter file it ships with the dataset.
GENERATE_KEYS = (*DatasetConfig.model_fields, "emulator_params")


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the outcomes a user can act on into one clear line and an exit code (roadsense.exits), never a
    traceback; SIGTERM stops the command as Ctrl-C does, with clean-up (training checkpoints first)."""
    from roadsense.exits import CTRL_C, SIGTERM, classify, sigterm_raises

    try:
        with sigterm_raises():
            yield
    except BaseException as exc:
        outcome = classify(exc)
        if outcome is None:
            raise  # typer's own exits, and bugs: a bug's traceback is its message
        code, message = outcome
        typer.secho(message, err=True, fg=typer.colors.YELLOW if code in (CTRL_C, SIGTERM) else typer.colors.RED)
        raise typer.Exit(code) from None


def _config(preset: str, sets: list[str] | None, reads: Collection[str] | None = None,
            **flags: object) -> PipelineConfig:
    """The preset, then ``--set`` (refused for a key outside ``reads``, when given), then the flags that were passed."""
    overrides: dict[str, object] = dict(parse_set_options(sets or []))
    unread = sorted(key for key in overrides if reads is not None and key not in reads and key != "preset")
    if unread:
        raise ConfigError(f"--set {', '.join(unread)}: not read by this command, which reads {', '.join(reads or ())}")
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return PipelineConfig.from_overrides(preset, overrides)


@app.command()
def generate(
    output: Annotated[Path, typer.Option("--output", help="New dataset folder (must not exist or be empty).")],
    preset: PresetOpt = "production",
    sets: SetOpt = None,
    # The flags of earlier versions, kept as aliases; each help names the setting it sets.
    seed: Annotated[Optional[int], typer.Option(
        "--seed", help="Alias of --set dataset_seed=N: the training scenarios' seed (not `seed`, PPO's).")] = None,
    val_seed: Annotated[Optional[int], typer.Option(
        "--val-seed", help="Alias of --set val_dataset_seed=N: the validation scenarios' seed "
                           "(not `val_seed`, the validation episodes').")] = None,
    eval_seed: Annotated[Optional[int], typer.Option(
        "--eval-seed", help="Alias of --set eval_dataset_seed=N: the evaluation scenarios' seed "
                            "(not `eval_seed`, the evaluation episodes').")] = None,
    train_count: Annotated[Optional[int], typer.Option(
        "--train-count", help="Alias of --set train_count=N: training scenarios.")] = None,
    val_count: Annotated[Optional[int], typer.Option(
        "--val-count", help="Alias of --set val_count=N: validation scenarios, balanced over the peer counts.")] = None,
    eval_count: Annotated[Optional[int], typer.Option(
        "--eval-count", help="Alias of --set eval_count=N: evaluation scenarios, balanced over the peer counts.")] = None,
    peer_drop_prob: Annotated[Optional[float], typer.Option(
        "--peer-drop-prob", help="Alias of --set peer_drop_prob=P: per-peer dropout in training scenarios, [0, 1).")] = None,
    emulator_params: Annotated[Optional[Path], typer.Option(
        "--emulator-params", help="Alias of --set emulator_params=PATH: the ESP-NOW parameter JSON shipped with the "
                                  "dataset; default: the measured defaults.")] = None,
) -> None:
    """Generate a scenario dataset with its manifest from the config's dataset settings: --preset, then --set
    (and the aliases below)."""
    from roadsense.scenarios.generate import generate_dataset
    from roadsense.v2v import load_params, params_hash

    with _user_errors():
        config = _config(preset, sets, GENERATE_KEYS, dataset_seed=seed, val_dataset_seed=val_seed,
                         eval_dataset_seed=eval_seed, train_count=train_count, val_count=val_count,
                         eval_count=eval_count, peer_drop_prob=peer_drop_prob,
                         emulator_params=None if emulator_params is None else str(emulator_params))
        params_file = config.env.emulator_params
        # Without a file the env runs the defaults shipped with roadsense; the manifest records their hash.
        emulator_hash = params_hash(load_params(params_file))
        start = time.perf_counter()
        generate_dataset(output, config.dataset, emulator_hash, progress=True,
                         emulator_params_file=Path(params_file) if params_file else None)
        made = config.dataset
        typer.echo(f"wrote {output}: {made.train_count} train + {made.val_count} val + {made.eval_count} eval "
                   f"scenarios in {time.perf_counter() - start:.1f} s")


@dataset_app.command("verify")
def verify(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder holding manifest.json.")],
) -> None:
    """Check every hash, path and scenario invariant of a dataset; exit 1 naming the problems (the first 20)."""
    from roadsense.scenarios.dataset import summarize, verify_dataset

    problems = verify_dataset(dataset)
    if len(problems) == 1:
        typer.secho(f"error: {dataset}: {problems[0]}", err=True, fg=typer.colors.RED)
        raise typer.Exit(FAILED)
    if problems:
        for problem in summarize(problems):
            typer.secho(f"problem: {problem}", err=True, fg=typer.colors.RED)
        typer.secho(f"error: {dataset}: {len(problems)} problems; regenerate the dataset", err=True, fg=typer.colors.RED)
        raise typer.Exit(FAILED)
    typer.echo(f"{dataset}: OK")


@app.command()
def train(
    dataset: Annotated[Optional[Path], typer.Option("--dataset", help="Dataset folder; default: the built-in scenario.")] = None,
    output: Annotated[Path, typer.Option(
        "--output", help="Folder for model.zip, vecnormalize.pkl, checkpoints/ and logs/.")] = Path("runs/train"),
    total_timesteps: Annotated[Optional[int], typer.Option("--total-timesteps", help="Env steps in total.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Training seed (PPO and env seeds).")] = None,
    n_envs: Annotated[Optional[int], typer.Option("--n-envs", help="Parallel envs; default one per CPU.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest valid checkpoint.")] = False,
    preset: PresetOpt = "production",
    sets: SetOpt = None,
) -> None:
    """Train the Deep Sets PPO policy."""
    from roadsense.pipeline import RunPaths, exclusive_output
    from roadsense.training.train import train as run_training

    with _user_errors():
        config = _config(preset, sets, total_timesteps=total_timesteps, seed=seed, n_envs=n_envs)
        if dataset is not None:
            from roadsense.scenarios.dataset import Dataset

            dataset = Dataset.open(dataset).root
        with exclusive_output(RunPaths.under(output)):
            config.save(output / "config.json")
            result = run_training(dataset, output, config, resume=resume)
        selection = result.model_selection
        typer.echo(f"trained to {result.num_timesteps} steps at {result.steps_per_s:.0f} steps/s: {result.model_path} "
                   f"is the {selection['selected']} checkpoint ({selection['selected_timesteps']} steps)")


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Option("--dataset", help="Dataset whose eval split is the matrix.")],
    output: Annotated[Path, typer.Option("--output", help="Folder for metrics.json, report.md and the plots.")],
    model: Annotated[Optional[Path], typer.Option("--model", help="model.zip to evaluate.")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", help=f"Evaluate a baseline instead: {' | '.join(BASELINES)}.")] = None,
    onnx: Annotated[Optional[list[Path]], typer.Option(
        "--onnx", help="An exported policy.onnx (or policy_int8.onnx), run by onnxruntime; repeatable. Alone: the policy "
                       "evaluated. With --model: evaluated beside it on the same plan, side by side in the report.")] = None,
    episodes_per_bucket: Annotated[Optional[int], typer.Option("--episodes-per-bucket", help="Episodes per (peers, rank) bucket.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Processes; default one per CPU.")] = None,
    preset: PresetOpt = "production",
    sets: SetOpt = None,
) -> None:
    """Evaluate a model (or a baseline) and the baselines on the deterministic matrix."""
    from roadsense.evaluation.evaluate import evaluate as run_evaluation
    from roadsense.evaluation.policies import ONNX_SUFFIX, require_policy_file

    with _user_errors():
        onnx = onnx or []
        if policy is not None:
            if model is not None or onnx:
                raise ConfigError("--policy evaluates a baseline alone: drop --model and --onnx")
            if policy not in BASELINES:
                raise ConfigError(f"--policy {policy!r}: choose one of {', '.join(BASELINES)}")
        elif model is None and len(onnx) != 1:
            raise ConfigError(f"give exactly one of --model PATH, --policy {BASELINE_CHOICE} or --onnx PATH "
                              "(more --onnx PATH may go beside --model)")
        for path, flag in [(model, "--model"), *((p, "--onnx") for p in onnx)]:
            if path is not None:
                require_policy_file(path, flag)
        if any(p.suffix != ONNX_SUFFIX for p in onnx):
            raise ConfigError(f"--onnx takes exported {ONNX_SUFFIX} files, got {', '.join(str(p) for p in onnx)}")
        config = _config(preset, sets, episodes_per_bucket=episodes_per_bucket, eval_workers=workers)
        main = str(model) if model else policy or str(onnx[0])
        variants = tuple(str(p) for p in onnx) if model else ()
        metrics = run_evaluation(main, dataset, output, config, variants=variants)
        typer.echo(json.dumps(metrics["overall"], indent=2))


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", help="model.zip to export.")],
    output: Annotated[Path, typer.Option("--output", help="Folder for the .onnx graphs, roadsense_policy.h and deploy.json.")],
    vecnormalize: Annotated[Optional[Path], typer.Option(
        "--vecnormalize", help="The run's vecnormalize.pkl: checked to scale rewards only, hashed into deploy.json.")] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="Dataset whose val (or train) split calibrates the INT8 graphs; "
                          "without it only float graphs are written.")] = None,
    split: Annotated[str, typer.Option("--split", help="Calibration split: val | train (never eval).")] = "val",
    preset: PresetOpt = "production",
    sets: SetOpt = None,
) -> None:
    """Export a model to ONNX (float, and INT8 with --dataset), a C reference and deploy.json."""
    from roadsense.evaluation.policies import require_policy_file
    from roadsense.export.exporter import calibration_plan, export_policy
    from roadsense.export.record import CALIBRATION_SPLITS

    with _user_errors():
        if split not in CALIBRATION_SPLITS:
            raise ConfigError(f"--split {split!r}: calibration reads {' or '.join(CALIBRATION_SPLITS)}, never the eval split")
        require_policy_file(model, "--model")
        plan = None if dataset is None else calibration_plan(_config(preset, sets), dataset, split)
        card = export_policy(model, output, vecnormalize, plan)
        sizes = ", ".join(f"{name} {doc['bytes']:,} B" for name, doc in card["graphs"].items())
        worst = max(e["action_mean_max_abs_error"] for label, e in card["parity"]["errors"].items() if label.startswith("float"))
        typer.echo(f"{output}: {sizes}; float parity max abs error {worst:.2e}; {output / 'deploy.json'}")


@app.command()
def replay(
    run_folder: Annotated[Optional[Path], typer.Option("--run", help="Evaluation folder (holds replay.json and episodes.jsonl).")] = None,
    bucket: Annotated[Optional[str], typer.Option("--bucket", help="With --run: the bucket, e.g. n2_k1.")] = None,
    episode: Annotated[Optional[int], typer.Option("--episode", help="With --run: the episode's index within its bucket.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Without --run: the model.zip to replay.")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", help=f"Without --run: a baseline instead: {' | '.join(BASELINES)}.")] = None,
    dataset: Annotated[Optional[Path], typer.Option("--dataset", help="Without --run: the dataset (its eval split).")] = None,
    scenario: Annotated[Optional[str], typer.Option("--scenario", help="Without --run: scenario id, e.g. eval-0003.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Without --run: the episode seed (episodes.jsonl: seed).")] = None,
    hazard_rank: Annotated[Optional[int], typer.Option("--hazard-rank", help="Without --run: hazard on the k-th peer ahead.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", help="Folder for the trace JSON and plot; default <run>/replays or replays/.")] = None,
    gui: Annotated[bool, typer.Option("--gui", help="Watch it in sumo-gui (needs a display).")] = False,
    preset: PresetOpt = "production",
    sets: SetOpt = None,
) -> None:
    """Re-run one evaluation episode over TraCI and write its per-step trace (JSON) and plot (PNG)."""
    from roadsense.evaluation.policies import require_policy_file
    from roadsense.evaluation.replay import ReplayError, check_display, target_explicit, target_from_run
    from roadsense.evaluation.replay import replay as run_replay

    with _user_errors():
        if gui:
            check_display()  # before anything slow
        explicit = {"--model": model, "--policy": policy, "--dataset": dataset, "--scenario": scenario,
                    "--seed": seed, "--hazard-rank": hazard_rank}
        if run_folder is not None:
            given = [flag for flag, value in explicit.items() if value is not None] + (["--set"] if sets else [])
            if given:
                raise ReplayError(f"--run takes the episode's settings from the folder; drop {', '.join(given)}")
            if bucket is None or episode is None:
                raise ReplayError("--run needs --bucket (e.g. n2_k1) and --episode (index within the bucket)")
            target = target_from_run(run_folder, bucket, episode)
            output = output or run_folder / "replays"
        else:
            if (model is None) == (policy is None):
                raise ReplayError(f"give exactly one of --model PATH or --policy {BASELINE_CHOICE} "
                                         "(or address an evaluated episode with --run RUN --bucket B --episode E)")
            if dataset is None or scenario is None or seed is None or hazard_rank is None:
                missing = [flag for flag, value in explicit.items() if value is None and flag not in ("--model", "--policy")]
                raise ReplayError(f"{', '.join(missing)} missing: without --run, address the episode with "
                                         "--dataset, --scenario, --seed and --hazard-rank")
            if policy is not None and policy not in BASELINES:
                raise ReplayError(f"--policy {policy!r}: choose one of {', '.join(BASELINES)}")
            if model is not None:
                require_policy_file(model, "--model")
            env = _config(preset, sets).env
            driver = str(model) if model else policy
            assert driver is not None  # exactly one of --model and --policy, checked above
            target = target_explicit(driver, dataset, scenario, seed, hazard_rank, env)
            output = output or Path("replays")
        result = run_replay(target, output, gui)
        summary = result.summary
        gap = summary["min_gap_post_hazard_m"]
        typer.echo(f"{target.episode.scenario_id} seed {target.episode.seed} bucket {target.episode.bucket}: "
                   f"{'collision' if summary['collision'] else 'no collision'}, min gap after hazard "
                   f"{'n/a' if gap is None else f'{gap:.2f} m'}; trace {result.trace}, plot {result.trace.with_suffix('.png')}")
        if target.evaluated is not None and not result.differences:
            typer.echo("matches the evaluation (collision, min gap, steps, hazard received, reaction time)")
        if result.differences:
            typer.secho(f"failed: the replay differs from the evaluation: {'; '.join(result.differences)}", err=True,
                        fg=typer.colors.RED)
            raise typer.Exit(FAILED)


@app.command()
def run(
    output: Annotated[Path, typer.Option("--output", help="Run folder (resumes if it holds a run with the same settings).")],
    preset: PresetOpt = "production",
    sets: SetOpt = None,
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="Use (after verifying) this dataset instead of generating one.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate everything and print the plan; run nothing.")] = False,
) -> None:
    """The whole pipeline: dataset -> train -> export -> evaluate -> package."""
    from roadsense.pipeline import RunPaths, plan_run, run_pipeline

    with _user_errors():
        config = _config(preset, sets)
        paths = RunPaths.under(output)
        plan = plan_run(paths, config, dataset)
        if dry_run:
            typer.echo(json.dumps({"plan": plan, "config": config.flat()}, indent=2))
            return
        typer.echo(f"plan: {json.dumps(plan)}")
        record = run_pipeline(paths, config, dataset)
        typer.echo(f"done in {record['wall_s']:.0f} s: {output}/report.md")


@bench_app.command("env")
def bench_env(
    steps: Annotated[int, typer.Option("--steps", help="Env steps to time.")] = 20_000,
) -> None:
    """One env with random actions (resets included) against raw libsumo on the same scenario."""
    from roadsense.bench import bench_env as run_bench

    typer.echo(json.dumps(run_bench(steps)))


@bench_app.command("train")
def bench_train(
    steps: Annotated[int, typer.Option("--steps", help="Env steps to train for (production PPO settings).")] = 16_384,
    n_envs: Annotated[int, typer.Option("--n-envs", help="Parallel envs; 0 = one per CPU.")] = 0,
    sets: SetOpt = None,
) -> None:
    """PPO training throughput with the production settings."""
    from roadsense.bench import bench_train as run_bench

    with _user_errors():
        typer.echo(json.dumps(run_bench(steps, n_envs, parse_set_options(sets or []))))


if __name__ == "__main__":  # python -m roadsense.cli, as the tests run it
    app()
