"""ConvoyEnv's outputs, bit for bit, against digests recorded from the code before the env-step speed work.

The speed work on the env step (SUMO reads, the mesh emulator, the observation) must not change
a single output: for the same seeds every observation array, reward, terminated/truncated flag,
info dict (reward terms, true gap, episode summary) and trace point must be exactly equal. Each
case below runs two full episodes (hazard on, domain randomisation on, random actions from a
seeded generator) and hashes all of it, episode by episode.

The golden digests were recorded from commit 1e60488 (before the speed work), checked out on its
own. They also depend on SUMO's and numpy's versions (SUMO's car-following, numpy's random
streams), so an upgrade of either may change them legitimately: then re-record them from the code
before any change of your own (the failure message prints the new digests) and say so in the
commit. They did not change with the CPU features numpy or OpenBLAS use (checked at 1e60488 with
NPY_DISABLE_CPU_FEATURES=X86_V3,X86_V4,AVX512_ICL and OPENBLAS_CORETYPE=Haswell, Sandybridge,
Nehalem, Prescott).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

# (n_peers, road, seed, brake probability per step, reset options of the first episode)
CASES = [
    (1, "straight", 0, 0.05, {}),
    (2, "curved", 1, 0.2, {}),
    (3, "straight", 2, 0.1, {"hazard_rank": 2}),
    (4, "curved", 3, 0.05, {}),
    (5, "straight", 4, 0.3, {}),
    (5, "curved", 5, 0.1, {"hazard_rank": 5}),
]
EPISODES = 2
GOLDEN = {  # case -> per-episode digests, recorded from commit 1e60488 (before the speed work)
    0: ["9f62d2fadc053e4ca42c52c25a19c9fe1654c03d8dab09f15469079f93c90e2d",
        "289fc46d9ccf0254ed549d8c9dcea715c165fcd3a5f39147a6789cb8119cb12b"],
    1: ["fcf30027118bf365f3d47217c0f770b04ad5c8cd011e4abdbb7d3153bde767c4",
        "8d211e84d70032718d7eac2d153a17726a478c8bdbed7aa2c1bd28ec62be79bc"],
    2: ["deded0bcc5987a963ae86f71de58ddf128d00b07427e4571e4fbfb9e1d2fa4b4",
        "c181f538fb9f5790f47e94b197b4cd081cd59caf94f65abb1891285c47dfb6b1"],
    3: ["31dcdf506dfb0c46d869d662464322bc9fd53cffe3b9d9ebe22d1d70c7fd9e6a",
        "225eedf607cde5f049d703c512814e8c8fdc5778d3ccfc448b7073aaec014f3e"],
    4: ["a4e50b163f3a7de4f6b657566c87e18aad5f26d25cc434224fbe17f3f7302dfb",
        "73e7c5d685bd8ffc2826f3e910ef4f7062d08b4499bc80d0d5e0bd945b78dfab"],
    5: ["ca14314eef4f1b95183dbad369e3f13b046cfa80bedbec05a1a96622d35d767f",
        "7047aa84804ef0555781c2a0b5bd1347f243599dfcdd580ee0d74304d6fdc7d5"],
}


def _canonical(value: Any) -> str:
    """An exact text of ``value``: floats as hex (every bit), arrays by dtype, shape and bytes, types named."""
    if isinstance(value, np.ndarray):
        return f"array({value.dtype},{value.shape},{hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()})"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key!r}:{_canonical(item)}" for key, item in sorted(value.items())) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    if isinstance(value, float):
        return f"{type(value).__name__}:{value.hex()}"
    return f"{type(value).__name__}:{value!r}"


def _episode_digests(env: Any, seed: int, brake_prob: float, options: dict[str, Any]) -> tuple[list[str], list[bool]]:
    """Per episode: a sha256 over everything the env returned, and whether it ended in a collision."""
    rng = np.random.default_rng(seed)
    digests, collisions = [], []
    for episode in range(EPISODES):
        digest = hashlib.sha256()
        obs, info = env.reset(seed=seed, options=options) if episode == 0 else env.reset()
        digest.update(_canonical((obs, info)).encode())
        while True:
            brake = rng.random() < brake_prob
            action = np.array([rng.random() if brake else 0.0], np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            digest.update(_canonical((obs, reward, terminated, truncated, info, env.trace_point())).encode())
            if terminated or truncated:
                break
        digests.append(digest.hexdigest())
        collisions.append(terminated)
    return digests, collisions


def test_env_outputs_are_bit_identical_to_the_recorded_digests(make_env, scenario_factory) -> None:
    got: dict[int, list[str]] = {}
    collisions: list[bool] = []
    for case, (n_peers, road, seed, brake_prob, options) in enumerate(CASES):
        env = make_env(scenario_factory(n_peers, road), episode_steps=300, hazard_window=(40, 200))
        got[case], ended = _episode_digests(env, seed, brake_prob, options)
        collisions += ended
    # The cases cover both ways an episode ends, so both paths are compared.
    assert any(collisions) and not all(collisions), f"collisions per episode: {collisions}"
    differ = [case for case in got if got[case] != GOLDEN.get(case)]
    assert not differ, f"cases {differ} differ from the recorded digests; now: {got}"
