"""The typed config: one source for CLI flags, SageMaker hyperparameters and config.json."""

from __future__ import annotations

import json

import pytest

from roadsense.config import KEY_SECTION, PRESETS, SECTIONS, ConfigError, PipelineConfig, parse_set_options


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
def test_presets_are_valid(preset: str) -> None:
    config = PipelineConfig.from_overrides(preset)
    assert config.preset == preset
    assert config.evaluation.episodes_per_bucket >= 1


def test_production_preset_is_the_documented_size() -> None:
    config = PipelineConfig.from_overrides("production")
    assert (config.dataset.train_count, config.dataset.eval_count) == (25, 40)
    assert config.train.total_timesteps == 2_000_000
    assert config.evaluation.episodes_per_bucket >= 10


def test_seeds_are_separate_keys() -> None:
    config = PipelineConfig.from_overrides("smoke", {"seed": "3"})
    flat = config.flat()
    assert flat["seed"] == 3
    assert flat["dataset_seed"] != 3 and flat["eval_seed"] != 3 and flat["eval_dataset_seed"] != 3


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


def test_every_key_lives_in_exactly_one_section() -> None:
    assert sum(len(model.model_fields) for model in SECTIONS.values()) == len(KEY_SECTION)
    assert {"seed", "dataset_seed", "eval_dataset_seed", "eval_seed"} <= set(KEY_SECTION)
