"""The typed config: one source for CLI flags, SageMaker hyperparameters and config.json."""

from __future__ import annotations

import json
import re
import typing

import pytest

from roadsense.config import KEY_SECTION, PRESETS, SECTIONS, ConfigError, PipelineConfig, _parse_value, parse_set_options
from roadsense.evaluation.matrix import PEER_COUNTS
from roadsense.scenarios.scenario import balanced_specs

# Every seed the pipeline draws from; README: "changing one never changes what the others control".
SEEDS = ("dataset_seed", "val_dataset_seed", "eval_dataset_seed", "seed", "val_seed", "eval_seed")


def test_hyperparameters_are_strings_and_round_trip() -> None:
    config = PipelineConfig.from_overrides("smoke", {"total_timesteps": "5000", "sigma_range": "[0.1, 0.2]"})
    hyper = config.to_hyperparameters()
    assert all(isinstance(v, str) for v in hyper.values())
    assert len(hyper) <= 100  # SageMaker's limit
    assert hyper["total_timesteps"] == "5000" and hyper["preset"] == "smoke"
    assert PipelineConfig.from_hyperparameters(hyper) == config


def test_saved_config_json_loads_back(tmp_path) -> None:
    config = PipelineConfig.from_overrides("standard", {"seed": 9, "hazard_window": "[150, 350]"})
    config.save(tmp_path / "config.json")
    assert PipelineConfig.load(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["train"]["seed"] == 9


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("split", ["val", "eval"])
def test_every_presets_val_and_eval_splits_cover_the_peer_counts_of_the_matrix(preset: str, split: str) -> None:
    """A preset's generated val and eval splits hold every peer count the (peer count, hazard rank)
    matrix plans. Catches a preset shrunk below one scenario per count (eval_count 4), or a split
    that stops cycling the counts: every run of it would fail, at plan time or at the first validation."""
    config = PipelineConfig.from_overrides(preset)
    counts = {spec.peer_count for spec in balanced_specs(config.dataset, split)}  # type: ignore[arg-type]
    assert counts == set(PEER_COUNTS), f"{preset}: the {split} split has peer counts {sorted(counts)}"


def test_production_preset_is_the_documented_size() -> None:
    config = PipelineConfig.from_overrides("production")
    assert (config.dataset.train_count, config.dataset.eval_count) == (25, 40)
    assert config.train.total_timesteps == 2_000_000
    assert config.evaluation.episodes_per_bucket >= 10


@pytest.mark.parametrize("seed", SEEDS)
def test_each_seed_changes_only_itself(seed: str) -> None:
    # Catches a seed derived from another (a validator filling eval_seed from seed) or routed to another key.
    before = PipelineConfig.from_overrides("smoke").flat()
    after = PipelineConfig.from_overrides("smoke", {seed: "12345"}).flat()
    assert {key for key in after if after[key] != before[key]} == {seed}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"total_timestep": "5"}, "did you mean 'total_timesteps'"),
        ({"total_timesteps": "-5"}, "total_timesteps"),
        ({"peer_drop_prob": "1.5"}, "peer_drop_prob"),
        ({"sigma_range": "[0.5, 0.1]"}, "sigma_range"),
        ({"batch_size": "9999"}, "batch_size"),
        ({"backend": "carla"}, "backend"),
        ({"hazard_step": "600"}, "hazard step"),
    ],
)
def test_bad_values_name_the_key(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        PipelineConfig.from_overrides("smoke", overrides)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ConfigError, match="preset"):
        PipelineConfig.from_overrides("huge")


def test_set_options_parse_and_check_keys() -> None:
    assert parse_set_options(["seed=3", "preset=smoke"]) == {"seed": "3", "preset": "smoke"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_options(["seed"])
    with pytest.raises(ConfigError, match="did you mean"):
        parse_set_options(["sed=3"])


def test_the_flat_view_names_every_setting_once_and_sets_back_to_the_same_config() -> None:
    """flat() is how --set, SageMaker and the launcher name settings. Catches a setting whose name
    another one (or ``preset``) shadows in it, and a value whose flat form --set cannot read back."""
    config = PipelineConfig.from_overrides("standard", {"seed": 9, "hazard_window": [150, 350],
                                                        "baselines": ["rule-based"], "emulator_params": "p.json"})
    flat = config.flat()
    assert len(flat) == 1 + sum(len(model.model_fields) for model in SECTIONS.values())
    preset = flat.pop("preset")
    sets = [f"{key}={json.dumps(value)}" for key, value in flat.items()]
    assert PipelineConfig.from_overrides(preset, parse_set_options(sets)) == config


# --- hostile numbers: every numeric key, every way a value arrives --------------------------------


def _number_kinds(annotation: object) -> set[type]:
    """int and float found anywhere in a field's annotation (``tuple[float, float] | None`` -> {float})."""
    if annotation in (int, float):
        return {annotation}
    return set().union(*(_number_kinds(arg) for arg in typing.get_args(annotation))) if typing.get_args(annotation) else set()


def _is_pair(annotation: object) -> bool:
    return any(typing.get_origin(a) is tuple for a in (annotation, *typing.get_args(annotation)))


NUMERIC_KEYS = sorted(key for key, section in KEY_SECTION.items()
                      if _number_kinds(SECTIONS[section].model_fields[key].annotation))
NAN, INF = float("nan"), float("inf")


def _hostile(key: str) -> list[object]:
    if _is_pair(SECTIONS[KEY_SECTION[key]].model_fields[key].annotation):
        return [[NAN, 1.0], [1.0, INF], [-INF, 1.0], [True, 2], [1, False]]
    return [True, False, NAN, INF, -INF]


def test_the_numeric_keys_are_found_from_the_model() -> None:
    # The table below covers whatever keys the model has; this guards the discovery itself.
    assert {"total_timesteps", "log_std_init", "ent_coef", "instance_price_per_hour", "sigma_range",
            "hazard_window", "learning_rate", "episodes_per_bucket"} <= set(NUMERIC_KEYS)
    assert "domain_randomization" not in NUMERIC_KEYS and "backend" not in NUMERIC_KEYS


@pytest.mark.parametrize(("key", "value"), [(k, v) for k in NUMERIC_KEYS for v in _hostile(k)], ids=repr)
def test_bools_and_non_finite_numbers_are_refused_naming_the_key(tmp_path, key: str, value: object) -> None:
    named = re.escape(key) + r"(\.\d)?: "
    text = json.dumps(value)  # how --set, SageMaker and config.json spell it: true, NaN, Infinity, [NaN, 1.0]
    with pytest.raises(ConfigError, match=named):
        PipelineConfig.from_overrides("smoke", {key: value})  # typed, from Python
    with pytest.raises(ConfigError, match=named):
        PipelineConfig.from_overrides("smoke", parse_set_options([f"{key}={text}"]))  # the CLI
    with pytest.raises(ConfigError, match=named):
        PipelineConfig.from_hyperparameters({"preset": "smoke", key: text})  # SageMaker
    saved = tmp_path / "config.json"
    PipelineConfig.from_overrides("smoke").save(saved)
    data = json.loads(saved.read_text())
    data[KEY_SECTION[key]][key] = value
    saved.write_text(json.dumps(data))  # Python's json writes NaN and Infinity, and reads them back
    with pytest.raises(ConfigError, match=named):
        PipelineConfig.load(saved)


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e999"])
def test_non_finite_spellings_that_are_not_json_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="learning_rate: Input should be a finite number"):
        PipelineConfig.from_overrides("smoke", {"learning_rate": text})


def test_numbers_as_strings_and_lists_as_json_are_still_accepted() -> None:
    config = PipelineConfig.from_overrides("smoke", {"total_timesteps": "5000", "sigma_range": "[0.1, 0.2]",
                                                     "hazard_window": [100, 300], "log_std_init": -1,
                                                     "domain_randomization": "false"})
    assert config.train.total_timesteps == 5000 and config.dataset.sigma_range == (0.1, 0.2)
    assert config.env.hazard_window == (100, 300) and config.train.log_std_init == -1.0
    assert config.env.domain_randomization is False


def test_a_huge_value_is_quoted_short_after_the_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        PipelineConfig.from_overrides("smoke", {"total_timesteps": "7" * 3000 + "x"})
    message = str(caught.value)
    assert message.startswith("total_timesteps: Input should be a valid integer")
    assert message.endswith("…)") and len(message) < 200


# --- hyperparameter strings as each SageMaker path sends them ---------------------------------------

# What reaches hyperparameters.json from each sender, spelled out (the SDK's own serializers are
# compared with these in tests/test_sdk.py where the SDK is installed):
# - roadsense-launch: PipelineConfig.to_hyperparameters() (strings as is, JSON for the rest);
# - ModelTrainer: safe_serialize(), i.e. strings as is and json.dumps() for the rest;
# - a JSON-encoding sender (json.dumps of every value, strings included): '"smoke"';
# - HyperparameterTuner static values: str(value), i.e. Python's spelling.
SENDERS: dict[str, dict[str, str]] = {
    "json-encoded": {"preset": '"smoke"', "backend": '"traci"', "baselines": '["rule-based"]',
                     "emulator_params": "null", "domain_randomization": "false", "sigma_range": "[0.1, 0.2]"},
    "tuner str()": {"preset": "smoke", "backend": "traci", "baselines": "['rule-based']",
                    "emulator_params": "None", "domain_randomization": "False", "sigma_range": "(0.1, 0.2)"},
}


@pytest.mark.parametrize("sender", SENDERS)
def test_every_sagemaker_spelling_decodes_to_the_same_config(sender: str) -> None:
    config = PipelineConfig.from_hyperparameters(SENDERS[sender])
    assert config.preset == "smoke" and config.env.backend == "traci"
    assert config.evaluation.baselines == ("rule-based",)
    assert config.env.emulator_params is None  # not the path "None"
    assert config.env.domain_randomization is False and config.dataset.sigma_range == (0.1, 0.2)


def test_tuner_str_of_the_default_baselines_and_a_quoted_preset() -> None:
    hyper = {"preset": json.dumps("standard"), "baselines": str(["never-brake", "rule-based"]), "hazard_window": str((100, 150))}
    config = PipelineConfig.from_hyperparameters(hyper)
    assert config.preset == "standard" and config.evaluation.baselines == ("never-brake", "rule-based")
    assert config.env.hazard_window == (100, 150)


@pytest.mark.parametrize(
    ("hyper", "named"),
    [
        ({"preset": '"huge"'}, "preset: 'huge' is not a preset"),
        ({"preset": "[1, 2]"}, "preset: '\\[1, 2\\]' is not a preset"),
        ({"preset": "None"}, "preset: 'None' is not a preset"),
        ({"total_timesteps": "True"}, "total_timesteps: expected a number, not true/false"),  # the tuner's str(True)
        ({"learning_rate": "float('nan')"}, "learning_rate: "),  # a call, not a literal: stays text and is refused
        ({"baselines": "{'rule-based'}"}, "baselines: "),  # a set literal is not a config value
        ({"emulator_params": "['a']"}, "emulator_params: "),
        ({"seed": "__import__('os').getpid()"}, "seed: "),  # never evaluated
    ],
)
def test_nonsense_is_still_refused_naming_the_key(hyper: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        PipelineConfig.from_hyperparameters({"preset": "smoke", **hyper})


def test_literal_decoding_is_bounded() -> None:
    # Thousands of nested brackets break neither json nor literal_eval: the text stays text and is refused.
    for text in ("[" * 5000, "(" * 2000 + ")" * 2000, "[" * 100_000):
        with pytest.raises(ConfigError, match="sigma_range: "):
            PipelineConfig.from_hyperparameters({"sigma_range": text})
    assert _parse_value("[0.1, 0.2]" + " " * 3000) == [0.1, 0.2]  # JSON has no length bound
    assert _parse_value("(0.1, 0.2)" + " " * 3000).startswith("(")  # a literal over 2,500 characters stays text
