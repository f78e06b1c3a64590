"""Time MeshEmulator.step() for 1 ego + 5 peers in a moving convoy; prints one JSON line {"emulator_step_us": ...}."""

from __future__ import annotations

import json
import time

import numpy as np

from roadsense.v2v import MeshEmulator, load_params

STEPS = 20_000
WARMUP_STEPS = 1_000
N_VEHICLES = 6  # ego + 5 peers
DT_S = 0.1
SPEED_MPS = 20.0


def main() -> None:
    emulator = MeshEmulator(load_params())
    emulator.reset(np.random.default_rng(0), N_VEHICLES)
    # Single-lane convoy along +x: the ego at the back, peers 25 m apart ahead of it.
    start = np.column_stack([np.arange(N_VEHICLES) * 25.0, np.zeros(N_VEHICLES)])
    positions = [start + [SPEED_MPS * DT_S * i, 0.0] for i in range(WARMUP_STEPS + STEPS)]
    speed = np.full(N_VEHICLES, SPEED_MPS)
    accel = np.zeros(N_VEHICLES)
    heading = np.zeros(N_VEHICLES)
    for i in range(WARMUP_STEPS):
        emulator.step(i * DT_S, positions[i], speed, accel, heading)
    began = time.perf_counter()
    for i in range(WARMUP_STEPS, WARMUP_STEPS + STEPS):
        emulator.step(i * DT_S, positions[i], speed, accel, heading)
    elapsed = time.perf_counter() - began
    print(json.dumps({"emulator_step_us": round(elapsed / STEPS * 1e6, 2)}))


if __name__ == "__main__":
    main()
