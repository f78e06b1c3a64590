"""The one typed configuration of the whole pipeline.

Every setting lives here once. The CLI flags (``--set key=value``), the SageMaker
hyperparameters (a flat map of strings) and the saved ``config.json`` are all views of
:class:`PipelineConfig`:

* ``config.flat()`` -> ``{"total_timesteps": 2000000, ...}``: one entry per setting, keyed
  by the setting's own name (names are unique across sections).
* ``config.to_hyperparameters()`` -> the same map with every value as a string.
* ``PipelineConfig.from_overrides(preset, {"total_timesteps": "5000"})`` builds a
  validated config from a preset and string or typed overrides.

Seeds are separate on purpose: ``dataset_seed`` (training scenarios), ``val_dataset_seed``
(validation scenarios), ``eval_dataset_seed`` (evaluation scenarios), ``seed`` (PPO and the
training envs), ``val_seed`` (the validation episodes) and ``eval_seed`` (the evaluation
episodes). Changing one never changes what the others control.
"""

from __future__ import annotations

import ast
import difflib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from roadsense.artifacts.status import write_json_atomic
from roadsense.errors import UserError
from roadsense.evaluation.policies import BASELINES, Baseline
from roadsense.exits import clip

PRESETS = ("smoke", "standard", "production")
Preset = Literal["smoke", "standard", "production"]
Range = tuple[float, float]


class ConfigError(UserError, ValueError):
    """A setting is unknown or has a value that is not allowed; the message says which and why."""


class StrictNumbers(BaseModel):
    """A model whose numbers are numbers: no NaN or +-Infinity, no true/false for an int or float.

    Every model that reads values from outside (settings, parameter files) builds on it.
    """

    # allow_inf_nan=False: NaN and +-Infinity (which JSON, and so --set and config.json, can spell) are refused.
    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1 for an int or float field (``total_timesteps=true`` trained 1 step): refuse it."""
        assert info.field_name is not None  # a field validator only ever runs for a named field
        if cls.model_fields[info.field_name].annotation is not bool and _holds_bool(value):
            raise PydanticCustomError("bool_not_number", "expected a number, not true/false")
        return value


class _Section(StrictNumbers):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _holds_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value))


def _ordered(name: str, value: Range) -> Range:
    if value[0] > value[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(value)}")
    return value


class DatasetConfig(_Section):
    """Scenario generation and augmentation (docs/design.md, "Scenarios and datasets")."""

    dataset_seed: int = Field(default=42, ge=0, description="Seed of the training scenarios.")
    eval_dataset_seed: int = Field(default=1042, ge=0, description="Seed of the evaluation scenarios.")
    val_dataset_seed: int = Field(
        default=2042, ge=0, description="Seed of the validation scenarios (model selection; never the eval split).")
    train_count: int = Field(default=25, ge=1, le=10_000, description="Training scenarios.")
    val_count: int = Field(default=20, ge=5, le=10_000, description="Validation scenarios (balanced over peer counts 1..5).")
    eval_count: int = Field(default=40, ge=1, le=10_000, description="Evaluation scenarios (balanced over peer counts 1..5).")
    peer_drop_prob: float = Field(default=0.4, ge=0.0, lt=1.0, description="Per-peer dropout in training scenarios.")
    speed_factor_range: Range = Field(default=(0.8, 1.2), description="speedFactor U(low, high).")
    sigma_range: Range = Field(default=(0.0, 0.5), description="Krauss driver imperfection U(low, high).")
    decel_range: Range = Field(default=(3.5, 5.5), description="Vehicle decel U(low, high), m/s^2.")
    tau_range: Range = Field(default=(0.5, 1.5), description="Headway tau U(low, high), s.")
    scenario_end_s: float = Field(default=65.0, gt=10.0, le=3600.0, description="Scenario end time, s.")

    @model_validator(mode="after")
    def _ranges_ordered(self) -> "DatasetConfig":
        for name in ("speed_factor_range", "sigma_range", "decel_range", "tau_range"):
            _ordered(name, getattr(self, name))
        if self.speed_factor_range[0] <= 0 or self.decel_range[0] <= 0 or self.tau_range[0] <= 0:
            raise ValueError("speed_factor_range, decel_range and tau_range must be positive")
        for a, b in (("dataset_seed", "val_dataset_seed"), ("dataset_seed", "eval_dataset_seed"),
                     ("val_dataset_seed", "eval_dataset_seed")):
            if getattr(self, a) == getattr(self, b):  # a split seeded like another is not an independent sample
                raise ValueError(f"{a} and {b} are both {getattr(self, a)}: each split needs its own seed; change one")
        return self


class EnvConfig(_Section):
    """The convoy environment (docs/design.md, "Observation", "Hazard", "Reward")."""

    backend: Literal["libsumo", "traci"] = Field(default="libsumo", description="SUMO backend: in-process libsumo or a TraCI subprocess.")
    emulator_params: str | None = Field(
        default=None, description="ESP-NOW parameter JSON; None = the measured defaults shipped with roadsense.")
    frame_stack: int = Field(default=3, ge=1, le=16, description="Ego frames stacked in the observation, newest first.")
    episode_steps: int = Field(default=500, ge=10, le=100_000, description="Steps after warm-up before truncation (0.1 s each).")
    warmup_steps: int = Field(default=20, ge=0, le=1000, description="Steps run before the agent acts, so peers reach speed.")
    hazard_step: int = Field(default=200, ge=1, description="Step after warm-up at which the hazard starts.")
    hazard_window: tuple[int, int] | None = Field(
        default=None, description="If set, hazard step ~ U[low, high] per episode instead of hazard_step.")
    domain_randomization: bool = Field(default=True, description="Draw emulator latency, loss, jitter and GPS noise per episode.")
    # 1000 = -2 a step (beyond 35 m) for a whole episode: a crash is never cheaper than a safe stop. Over training
    # seeds 0-3 it took the worst seed from 23.7 % collisions to 0.3 % (README, "Learning result").
    collision_penalty: float = Field(
        default=1000.0, ge=0, le=1e6,
        description="Charged once on the step that ends in a collision, on top of the reference reward (0 = the reference).")

    @model_validator(mode="after")
    def _hazard_inside_episode(self) -> "EnvConfig":
        last = self.hazard_window[1] if self.hazard_window else self.hazard_step
        if self.hazard_window:
            _ordered("hazard_window", self.hazard_window)
        if last >= self.episode_steps:
            raise ValueError(f"hazard step {last} must come before episode_steps={self.episode_steps}")
        return self


class TrainConfig(_Section):
    """PPO and its checkpoints (docs/design.md, "Training")."""

    seed: int = Field(default=0, ge=0, description="Training seed: PPO, and each env's seed is derived from it.")
    total_timesteps: int = Field(default=2_000_000, ge=1, description="Environment steps to train for, in total across envs.")
    n_envs: int = Field(default=0, ge=0, le=256, description="Parallel envs (one SUMO each); 0 = one per CPU.")
    # Production departs from the reference lr 1e-4 / batch 64 on purpose: over 4 training seeds
    # at 500k steps, 2e-4 / 128 learned at least as well at 1.33x the speed (docs/design.md, "PPO settings").
    learning_rate: float = Field(
        default=2e-4, gt=0, le=1.0, description="Adam step size (reference: 1e-4 with batch 64; docs/design.md, 'PPO settings').")
    lr_schedule: Literal["constant", "linear"] = Field(
        default="constant", description="constant, or linear: from learning_rate at the start down to 0 at total_timesteps.")
    rollout_steps: int = Field(
        default=4096, ge=16, description="Env steps per PPO update, across all envs (each env runs rollout_steps / n_envs).")
    batch_size: int = Field(
        default=128, ge=2, description="PPO minibatch size (reference: 64, with lr 1e-4; docs/design.md, 'PPO settings').")
    n_epochs: int = Field(default=10, ge=1, le=100)
    gamma: float = Field(default=0.99, gt=0, le=1)
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    clip_range: float = Field(default=0.2, gt=0, le=1)
    ent_coef: float = Field(default=0.0, ge=0)
    log_std_init: float = Field(default=-0.5)
    peer_hidden: int = Field(default=32, ge=1, le=1024, description="Width of the shared per-peer MLP (6 -> h -> h).")
    torch_threads: int = Field(default=1, ge=1, le=64, description="torch threads in the learner; envs take the other cores.")
    checkpoint_every: int = Field(default=50_000, ge=1, description="Env steps between checkpoints.")
    keep_checkpoints: int = Field(default=3, ge=1, description="Newest checkpoints kept (milestones are kept too).")
    milestone_every: int = Field(default=500_000, ge=0, description="Env steps between checkpoints that are never pruned; 0 = none.")
    max_consecutive_sim_errors: int = Field(default=20, ge=1, description="Simulation errors in a row (per env) that abort the run.")

    @model_validator(mode="after")
    def _batch_fits(self) -> "TrainConfig":
        if self.batch_size > self.rollout_steps:
            raise ValueError(f"batch_size={self.batch_size} must be <= rollout_steps={self.rollout_steps}")
        return self


class EvalConfig(_Section):
    """The deterministic evaluation matrix (docs/design.md, "Evaluation")."""

    eval_seed: int = Field(default=7, ge=0, description="Seed of the evaluation episodes (emulator draws, hazard strength).")
    # 20 per bucket = 300 episodes: enough that a 0-collision result bounds the rate under ~1.3 % (Wilson 95 %).
    episodes_per_bucket: int = Field(default=20, ge=1, le=10_000, description="Episodes per (peer count, hazard rank) bucket.")
    # 250k: a validation of 45 episodes takes ~2 s on 2 CPUs, so 8 of them cost under 10 % of a 2M-step run.
    val_every: int = Field(
        default=250_000, ge=0,
        description="Env steps between validations of the current policy on the val split; "
                    "0 = never (model.zip is then the last checkpoint).")
    val_seed: int = Field(
        default=11, ge=0, description="Seed of the validation episodes (its own, so val and eval never share emulator or hazard draws).")
    val_episodes_per_bucket: int = Field(default=3, ge=1, le=1000, description="Episodes per bucket of the validation matrix.")
    eval_workers: int = Field(default=0, ge=0, le=256, description="Evaluation processes; 0 = one per CPU. Results do not depend on it.")
    baselines: tuple[Baseline, ...] = Field(default=BASELINES, description="Baselines evaluated on the same matrix.")
    export_onnx: bool = Field(
        default=True, description="Export the policy to ONNX (float and INT8) and evaluate both beside the torch model on the same plan.")
    calibration_episodes_per_bucket: int = Field(
        default=1, ge=1, le=100, description="Episodes per bucket of the val split recorded to calibrate the INT8 graphs.")


class CostConfig(_Section):
    """What a run is expected to cost, for the provenance and the launcher's estimate."""

    instance_type: str = Field(default="ml.c6i.xlarge", description="SageMaker instance type the run is priced at.")
    instance_price_per_hour: float = Field(default=0.238, ge=0, description="On-demand USD per hour of instance_type (il-central-1).")


SECTIONS: dict[str, type[_Section]] = {
    "dataset": DatasetConfig,
    "env": EnvConfig,
    "train": TrainConfig,
    "evaluation": EvalConfig,
    "cost": CostConfig,
}

# Flat name -> section name; a name may appear in one section only.
KEY_SECTION: dict[str, str] = {}
for _section, _model in SECTIONS.items():
    for _key in _model.model_fields:
        assert _key not in KEY_SECTION, f"config key {_key} is defined twice"
        KEY_SECTION[_key] = _section

# Settings a resumed run may change: how long it runs, how it is parallelised, checkpointed,
# evaluated and priced. Every other setting shapes what is learned (the scenarios, the env and
# its reward, PPO, the validation that picks the model), so a run resumed with another value
# would be neither the old run nor a new one.
RESUMABLE_KEYS = frozenset({
    "total_timesteps", "n_envs", "torch_threads", "checkpoint_every", "keep_checkpoints", "milestone_every",
    "max_consecutive_sim_errors", "backend", "val_every", "eval_seed", "episodes_per_bucket", "eval_workers",
    "baselines", "export_onnx", "calibration_episodes_per_bucket", "instance_type", "instance_price_per_hour",
})
# Keys that were renamed: the old name gets a pointer to the new one.
RENAMED_KEYS = {"n_steps": "rollout_steps"}

_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    # A couple of minutes on a laptop: the whole pipeline, tiny numbers.
    "smoke": {
        "train_count": 4,
        "val_count": 5,
        "eval_count": 5,
        "total_timesteps": 4096,
        "rollout_steps": 1024,
        "checkpoint_every": 2048,
        "episodes_per_bucket": 1,
        "val_every": 2048,
        "val_episodes_per_bucket": 1,
    },
    "standard": {
        "train_count": 10,
        "eval_count": 20,
        "total_timesteps": 200_000,
        "checkpoint_every": 20_000,
        "episodes_per_bucket": 4,
        "val_every": 50_000,
    },
    "production": {},
}


class PipelineConfig(BaseModel):
    """Everything one run needs; ``preset`` records where the defaults came from."""

    model_config = ConfigDict(extra="forbid")

    preset: Preset = "production"
    dataset: DatasetConfig = DatasetConfig()
    env: EnvConfig = EnvConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvalConfig = EvalConfig()
    cost: CostConfig = CostConfig()

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_overrides(cls, preset: str = "production", overrides: dict[str, Any] | None = None) -> "PipelineConfig":
        """Preset defaults, then ``overrides`` (flat keys; values typed or strings)."""
        if preset not in PRESETS:
            raise ConfigError(f"preset: {preset!r} is not a preset; choose one of {', '.join(PRESETS)}")
        flat: dict[str, Any] = dict(_PRESET_OVERRIDES[preset])
        for key, value in (overrides or {}).items():
            if key == "preset":
                continue
            _check_key(key)
            flat[key] = _parse_value(value) if isinstance(value, str) else value
        nested: dict[str, Any] = {"preset": preset}
        for key, value in flat.items():
            nested.setdefault(KEY_SECTION[key], {})[key] = value
        try:
            return cls.model_validate(nested)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    @classmethod
    def from_hyperparameters(cls, hyperparameters: dict[str, Any]) -> "PipelineConfig":
        """SageMaker view: every value is a string; ``preset`` picks the defaults.

        Every value, ``preset`` included, is decoded by :func:`_parse_value`: the SDK sends
        ``"\\"smoke\\""`` where the launcher sends ``"smoke"``, and both mean the same preset.
        """
        values = dict(hyperparameters)
        raw = values.pop("preset", "production")
        preset = _parse_value(raw) if isinstance(raw, str) else raw
        if not isinstance(preset, str):
            raise ConfigError(f"preset: {clip(repr(raw))} is not a preset; choose one of {', '.join(PRESETS)}")
        return cls.from_overrides(preset, values)

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        """A saved ``config.json`` (nested, as written by :meth:`save`)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc})") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {_explain(exc)}") from None

    # -- views ------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """One entry per setting, keyed by its own name, plus ``preset``."""
        out: dict[str, Any] = {"preset": self.preset}
        for section in SECTIONS:
            out.update(getattr(self, section).model_dump(mode="json"))
        return out

    def learning_settings(self) -> dict[str, Any]:
        """The settings that shape what is learned: every one but :data:`RESUMABLE_KEYS` (and ``preset``),
        except ``total_timesteps`` under a decaying ``lr_schedule``, where it sets every update's rate."""
        resumable = RESUMABLE_KEYS - ({"total_timesteps"} if self.train.lr_schedule != "constant" else set())
        return {k: v for k, v in self.flat().items() if k not in resumable and k != "preset"}

    def to_hyperparameters(self) -> dict[str, str]:
        """The SageMaker view: strings only (JSON for lists, ``null`` for None)."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.flat().items()}

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.model_dump(mode="json"))


def check_resumable(saved: dict[str, Any], current: dict[str, Any], what: str) -> None:
    """Raise ConfigError naming every setting of ``current`` that differs from ``saved``.

    Both are learning settings (:meth:`PipelineConfig.learning_settings`, possibly with more
    facts such as the dataset id); keys ``saved`` does not hold are not compared.
    """
    conflicts = [f"{key}: {clip(repr(saved[key]))} -> {clip(repr(value))}"
                 for key, value in sorted(current.items()) if key in saved and saved[key] != value]
    if conflicts:
        raise ConfigError(
            f"{what} was trained with other values of settings that change what is learned "
            f"({'; '.join(conflicts)}); resume it with the same values, or start over in a new --output "
            "(or run id); settings such as total_timesteps, n_envs and checkpoint_every may change on resume"
        )


def _check_key(key: str) -> None:
    if key in RENAMED_KEYS:
        raise ConfigError(f"config key {key!r} was renamed {RENAMED_KEYS[key]!r}; use --set {RENAMED_KEYS[key]}=...")
    if key not in KEY_SECTION:
        close = difflib.get_close_matches(key, list(KEY_SECTION), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(KEY_SECTION))}"
        raise ConfigError(f"unknown config key {clip(repr(key))}{hint}")


# SageMaker's limit on one hyperparameter value; nothing longer can come from a tuner, and it
# bounds the work ast.literal_eval does on a string from outside.
_LITERAL_MAX_CHARS = 2500
_LITERAL_ERRORS = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)


def _parse_value(text: str) -> Any:
    """A string from the CLI or SageMaker, decoded as SageMaker's training toolkit does, plus Python literals.

    1. JSON if it parses (numbers, lists, ``null``, ``true``, and ``"\\"smoke\\""``, which is
       how the SageMaker SDK's ``safe_serialize`` sends a string);
    2. else a Python literal made only of None, booleans, numbers, strings, lists and tuples
       (``HyperparameterTuner`` sends static values as ``str(value)``: ``None``, ``False``,
       ``['never-brake', 'rule-based']``); ``ast.literal_eval`` evaluates no code, and the text
       is bounded to :data:`_LITERAL_MAX_CHARS`;
    3. else the text itself (``smoke``, ``rule-based``, a path), which the model then validates.

    A value that decodes to something the field cannot hold is refused by the model with the key named.
    """
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: thousands of nested brackets
        pass
    if len(text) <= _LITERAL_MAX_CHARS:
        try:
            value = ast.literal_eval(text.strip())
        except _LITERAL_ERRORS:
            return text
        if _plain_literal(value):
            return value
    return text


def _plain_literal(value: Any) -> bool:
    """True for what a config field can hold: None, bool, int, float, str, and lists or tuples of them
    (not dicts, sets, bytes or complex numbers, which ``literal_eval`` also produces)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_plain_literal(item) for item in value)


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p not in SECTIONS]
        key = ".".join(loc) or "config"
        value = err.get("input")
        # The reason first, the value after and cut short: a 3 KB value must not push the reason out of a
        # 1,024-character SageMaker FailureReason.
        shown = "" if isinstance(value, dict) else f" (got {clip(repr(value))})"
        lines.append(f"{key}: {err['msg']}{shown}")
    return "; ".join(lines)


def parse_set_options(items: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` from repeated ``--set`` flags -> ``{"a": "1", "b": "x"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {clip(repr(item))}: expected key=value, e.g. --set total_timesteps=100000")
        key = key.strip()
        if key != "preset":
            _check_key(key)
        out[key] = value.strip()
    return out
