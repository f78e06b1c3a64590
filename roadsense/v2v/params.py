"""ESP-NOW link parameters: the JSON file, its validation, and its hash for dataset manifests.

The measured defaults ship as ``espnow_params.json`` next to this module (docs/design.md,
"The radio link"). Every problem found on load raises :class:`ParamsError` whose message
names the offending key (or file) and what a valid value looks like.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from roadsense.config import StrictNumbers
from roadsense.errors import UserError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]

DEFAULT_PARAMS_FILE = "espnow_params.json"


class ParamsError(UserError, ValueError):
    """The parameter file is missing, is not JSON, or holds a key or value that is not allowed."""


class RandomizationRanges(StrictNumbers):
    """Per-episode domain randomisation: each value is drawn U(low, high) once per episode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_base_ms: tuple[NonNegative, NonNegative] = Field(description="Base latency per hop, ms.")
    loss_rate: tuple[Probability, Probability] = Field(
        description="Loss probability of the nearest distance bin; the other bins keep their ratio to it."
    )
    latency_jitter_ms: tuple[NonNegative, NonNegative] = Field(description="Latency jitter std per hop, ms.")
    gps_noise_m: tuple[NonNegative, NonNegative] = Field(description="GPS noise std per axis, m.")

    @field_validator("*")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"must be [low, high] with low <= high, got {list(value)}; swap the two values")
        return value


class EspNowParams(StrictNumbers):
    """The mesh model of docs/design.md, "The radio link". Units are in the field names (m, ms, m/s, m/s^2, deg)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_range_m: float = Field(gt=0.0, description="Beyond this distance a link never delivers.")
    max_hops: int = Field(ge=1, le=8, description="Links a message may travel, source to ego (1 = direct only).")
    relay_cone_half_angle_deg: float = Field(
        ge=0.0, le=180.0, description="A relay forwards sources within +- this angle of its heading."
    )
    loss_bin_upper_m: list[float] = Field(min_length=1, description="Upper edges of the distance bins, m, increasing.")
    loss_prob: list[Probability] = Field(min_length=1, description="Loss probability per distance bin.")
    burst_loss_multiplier: float = Field(ge=1.0, description="Loss probability factor right after a loss on a link.")
    burst_loss_cap: Probability = Field(description="Upper bound of the loss probability right after a loss.")
    latency_base_ms: NonNegative = Field(description="Mean latency per hop, ms.")
    latency_jitter_ms: NonNegative = Field(description="Latency std per hop, ms.")
    latency_min_ms: NonNegative = Field(description="Floor of a single hop's latency, ms.")
    gps_noise_m: NonNegative = Field(description="Position noise std per axis, m.")
    speed_noise_mps: NonNegative = Field(description="Speed noise std, m/s.")
    accel_noise_mps2: NonNegative = Field(description="Acceleration noise std, m/s^2.")
    heading_noise_deg: NonNegative = Field(description="Heading noise std, degrees.")
    staleness_ms: float = Field(gt=0.0, description="A held message older than this is dropped.")
    randomization: RandomizationRanges

    @model_validator(mode="after")
    def _consistent_bins(self) -> "EspNowParams":
        edges, probs = self.loss_bin_upper_m, self.loss_prob
        if len(edges) != len(probs):
            raise ValueError(
                f"loss_bin_upper_m has {len(edges)} edges but loss_prob has {len(probs)} values; give one probability per bin"
            )
        # strict=False: [0.0, *edges] is one longer on purpose, pairing each edge with the one below it.
        if any(low >= high for low, high in zip([0.0, *edges], edges, strict=False)):
            raise ValueError(f"loss_bin_upper_m must be positive and strictly increasing, got {edges}")
        if edges[-1] != self.max_range_m:
            raise ValueError(
                f"loss_bin_upper_m must end at max_range_m={self.max_range_m} (the last bin reaches max range), got {edges[-1]}"
            )
        if self.burst_loss_cap < max(probs):
            raise ValueError(
                f"burst_loss_cap={self.burst_loss_cap} is below the largest loss_prob {max(probs)}; "
                "a burst must not make loss less likely, so raise the cap"
            )
        return self


def load_params(path: str | os.PathLike[str] | None = None) -> EspNowParams:
    """Read and validate a parameter JSON file; ``None`` loads the measured defaults shipped with roadsense."""
    if path is None:
        source = resources.files(__package__) / DEFAULT_PARAMS_FILE
        label = f"{__package__}/{DEFAULT_PARAMS_FILE}"
    else:
        source = Path(path)
        label = str(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{label}: no such file; pass an existing ESP-NOW parameter JSON, or None for the shipped defaults") from None
    except OSError as exc:
        raise ParamsError(f"{label}: cannot read the file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParamsError(f"{label}: not valid JSON ({exc}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{label}: expected a JSON object of parameters, got {type(data).__name__}")
    try:
        return EspNowParams.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(f"{label}: {_explain(exc)}") from None


def params_hash(params: EspNowParams) -> str:
    """sha256 hex digest of the canonical JSON (sorted keys, no whitespace): equal parameters, equal hash."""
    canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _explain(exc: ValidationError) -> str:
    """One clause per problem, each starting with the dotted key it is about."""
    clauses = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            clauses.append(f"unknown key {key!r}; remove it{_did_you_mean(err['loc'])}")
        elif err["type"] == "missing":
            clauses.append(f"missing key {key!r}; add it (the shipped {DEFAULT_PARAMS_FILE} lists every key)")
        elif not key:
            # Cross-field checks name their keys in the message itself.
            clauses.append(err["msg"].removeprefix("Value error, "))
        else:
            clauses.append(f"{key} = {err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(clauses)


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    model: type[BaseModel] = RandomizationRanges if loc[0] == "randomization" and len(loc) > 1 else EspNowParams
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"

