"""Shared fixtures for the tests that run real SUMO (tests/test_sim.py, test_env.py, test_reward.py).

Scenario files are written into the session's temporary folder (never ~/.cache), and every
env a test makes is closed at teardown: libsumo holds one simulation per process, so an env
left open by a failing test would otherwise break every test after it.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:
    import boto3

SHIPPED_EMULATOR_PARAMS = Path(__file__).resolve().parents[1] / "roadsense" / "v2v" / "espnow_params.json"


@pytest.fixture(scope="session")
def scenario_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(n_peers=5, road="straight")`` -> the ``.sumocfg`` of a built-in-style convoy scenario.

    Same car as ``builtin_scenario`` (speedFactor 1, sigma 0.25, decel 4.5, tau 1), written
    once per (n_peers, road) into the session's temporary folder.
    """
    from roadsense.config import DatasetConfig
    from roadsense.scenarios.generate import write_scenario
    from roadsense.scenarios.network import build_network
    from roadsense.scenarios.scenario import SUMOCFG_FILE, ScenarioSpec, VehicleType

    root = tmp_path_factory.mktemp("scenarios")
    networks: dict[str, bytes] = {}
    made: dict[tuple[int, str], Path] = {}

    def make(n_peers: int = 5, road: str = "straight") -> Path:
        key = (n_peers, road)
        if key not in made:
            if road not in networks:
                networks[road] = build_network(road)
            folder = root / f"{road}-n{n_peers}"
            spec = ScenarioSpec(folder.name, "eval", n_peers, road, VehicleType(1.0, 0.25, 4.5, 1.0))
            write_scenario(folder, spec, networks[road], DatasetConfig().scenario_end_s)
            made[key] = folder / SUMOCFG_FILE
        return made[key]

    return make


@pytest.fixture
def make_env() -> Iterator[Callable[..., object]]:
    """``make_env(scenario, split="train", **env_config)`` -> a ConvoyEnv, closed at teardown."""
    from roadsense.config import EnvConfig
    from roadsense.env.convoy_env import ConvoyEnv

    envs: list[ConvoyEnv] = []

    def make(scenario: Path | str | None, split: str = "train", **config: object) -> ConvoyEnv:
        env = ConvoyEnv(scenario, split, EnvConfig(**config))
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def params_file(tmp_path: Path) -> Callable[..., Path]:
    """``params_file(name, **changes)`` -> an ESP-NOW parameter JSON: the shipped one with ``changes``."""

    def write(name: str = "params.json", **changes: object) -> Path:
        data = json.loads(SHIPPED_EMULATOR_PARAMS.read_text())
        for key, value in changes.items():
            if key == "randomization":
                data["randomization"] = {**data["randomization"], **value}  # type: ignore[dict-item]
            else:
                data[key] = value
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return path

    return write


class Proc(NamedTuple):
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int


def processes() -> list[Proc]:
    """Every live or zombie process, read from /proc (no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after the last ')'.
        match = re.match(r"(\d+) \((.*)\) (\S) (\d+) (\d+)", stat, re.S)
        if match:
            found.append(Proc(int(match[1]), match[2], match[3], int(match[4]), int(match[5])))
    return found


def child_sumo_processes() -> list[int]:
    """PIDs of ``sumo`` processes (zombies included) whose parent is this test process.

    Only our own children are counted, so SUMO runs of other people on the machine do not
    disturb the count.
    """
    me = os.getpid()
    return [p.pid for p in processes() if p.comm in ("sumo", "sumo-gui") and p.ppid == me]


def children(pid: int) -> list[int]:
    return [p.pid for p in processes() if p.ppid == pid]


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group: a trainer started with start_new_session and its workers."""
    return [p.pid for p in processes() if p.pgrp == pgid and p.state != "Z"]


@pytest.fixture
def sumo_children() -> Callable[[], list[int]]:
    """The :func:`child_sumo_processes` counter, as a fixture."""
    return child_sumo_processes


# --- pipeline fixtures (training, evaluation, run, container adapter) -------------------------

TINY = {
    # Short episodes and rollouts: every stage runs for real, in seconds.
    "train_count": 2,
    "val_count": 5,
    "eval_count": 5,
    "total_timesteps": 512,
    "rollout_steps": 256,
    "n_envs": 2,
    "checkpoint_every": 256,
    "episodes_per_bucket": 1,
    "episode_steps": 150,
    "hazard_step": 60,
    "eval_workers": 2,
}


def tiny_config(**overrides: object):
    """A smoke-preset PipelineConfig shrunk further for tests; ``overrides`` are flat keys."""
    from roadsense.config import PipelineConfig

    return PipelineConfig.from_overrides("smoke", {**TINY, **overrides})


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified dataset of 2 train, 5 val and 5 eval scenarios (val and eval: one per peer count), shared read-only."""
    from roadsense.scenarios.generate import generate_dataset
    from roadsense.v2v import load_params, params_hash

    root = tmp_path_factory.mktemp("pipeline") / "dataset"
    return generate_dataset(root, tiny_config().dataset, params_hash(load_params(None)))


# --- AWS, in-process moto --------------------------------------------------------------------


@pytest.fixture
def moto_session(monkeypatch: pytest.MonkeyPatch):
    """A boto3 session in il-central-1 against in-process moto, with no real profile or endpoint in reach."""
    import boto3
    from moto import mock_aws

    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.Session(region_name="il-central-1")


def push_test_image(session: boto3.Session, tag: str = "abc") -> None:
    """An image manifest tagged ``tag`` in a new ``roadsense-training`` ECR repository (moto keeps no layers)."""
    ecr = session.client("ecr")
    ecr.create_repository(repositoryName="roadsense-training")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {}, "layers": []})
    ecr.put_image(repositoryName="roadsense-training", imageManifest=manifest, imageTag=tag)


def tag_test_image_latest(session: boto3.Session) -> str:
    """Tag the pushed ``abc`` image ``latest`` as well; returns the image's digest."""
    ecr = session.client("ecr")
    image = ecr.batch_get_image(repositoryName="roadsense-training", imageIds=[{"imageTag": "abc"}])["images"][0]
    ecr.put_image(repositoryName="roadsense-training", imageManifest=image["imageManifest"], imageTag="latest")
    details = ecr.describe_images(repositoryName="roadsense-training", imageIds=[{"imageTag": "latest"}])["imageDetails"]
    return details[0]["imageDigest"]


def metrics_archive(overall: dict) -> bytes:
    """A model.tar.gz (in memory) holding only a metrics.json with this ``overall`` section."""
    data = json.dumps({"policy": "model", "overall": overall}).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member = tarfile.TarInfo("metrics.json")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
