"""The road networks every scenario drives on, built with the wheel's ``netconvert``.

Each road variant is a single one-lane edge ``road`` described in plain XML (nodes and one
edge); the curved variant gets its geometry from the edge ``shape``. The roads are about
3 km long: the lead car of a convoy covers at most 65 s x 24 m/s (1.2 x the limit) = 1.6 km
in an episode, so no car reaches the end of the road before the scenario ends.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from roadsense.errors import RunFailed
from roadsense.sim.sumo_home import sumo_binary, sumo_env

EDGE_ID = "road"
SPEED_LIMIT_MPS = 20.0
ROAD_LENGTH_M = 3000.0

# Curved road: straight run-in and run-out around four alternating arcs (left, right, left,
# right) of radius 500 m, 74 degrees each. A peer 160 m ahead then stays within about
# 10 degrees of the ego heading, well inside the +-45 degree forward cone of the V2V mesh.
_CURVE_RADIUS_M = 500.0
_CURVE_ARC_M = 650.0
_RUN_IN_M = 200.0
_SHAPE_STEP_M = 10.0


class NetworkError(RunFailed):
    """netconvert failed on a road the generator describes; the message carries its output."""


@dataclass(frozen=True)
class RoadVariant:
    """One base road: a name, a sentence for the manifest, and its centre line (x, y in m)."""

    name: str
    description: str
    shape: tuple[tuple[float, float], ...]


def _centre_line(segments: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Centre-line points along ``(length_m, curvature_1_per_m)`` segments from (0, 0), heading east; arcs every 10 m."""
    x, y, heading = 0.0, 0.0, 0.0
    points = [(x, y)]
    for length, curvature in segments:
        steps = math.ceil(length / _SHAPE_STEP_M) if curvature else 1
        for _ in range(steps):
            step = length / steps
            # The chord of a circular arc points along the mid-step heading.
            mid = heading + curvature * step / 2
            x += step * math.cos(mid)
            y += step * math.sin(mid)
            heading += curvature * step
            points.append((round(x, 2), round(y, 2)))
    return tuple(points)


_ARCS = [(_CURVE_ARC_M, sign / _CURVE_RADIUS_M) for sign in (1, -1, 1, -1)]

ROADS: dict[str, RoadVariant] = {
    "straight": RoadVariant(
        name="straight",
        description=f"straight single-lane road, {ROAD_LENGTH_M:.0f} m, limit {SPEED_LIMIT_MPS:.0f} m/s",
        shape=_centre_line([(ROAD_LENGTH_M, 0.0)]),
    ),
    "curved": RoadVariant(
        name="curved",
        description=(
            f"curved single-lane road, {ROAD_LENGTH_M:.0f} m, limit {SPEED_LIMIT_MPS:.0f} m/s: "
            f"{_RUN_IN_M:.0f} m straight, four alternating {_CURVE_ARC_M:.0f} m arcs of radius "
            f"{_CURVE_RADIUS_M:.0f} m, {_RUN_IN_M:.0f} m straight"
        ),
        shape=_centre_line([(_RUN_IN_M, 0.0), *_ARCS, (_RUN_IN_M, 0.0)]),
    ),
}


def _plain_xml(road: RoadVariant) -> tuple[str, str]:
    """The netconvert inputs: a nodes file and an edges file."""
    (x0, y0), (x1, y1) = road.shape[0], road.shape[-1]
    nodes = (
        "<nodes>\n"
        f'    <node id="start" x="{x0:.2f}" y="{y0:.2f}"/>\n'
        f'    <node id="end" x="{x1:.2f}" y="{y1:.2f}"/>\n'
        "</nodes>\n"
    )
    shape = " ".join(f"{x:.2f},{y:.2f}" for x, y in road.shape)
    edges = (
        "<edges>\n"
        f'    <edge id="{EDGE_ID}" from="start" to="end" numLanes="1" speed="{SPEED_LIMIT_MPS:.2f}" shape="{shape}"/>\n'
        "</edges>\n"
    )
    return nodes, edges


def build_network(road: str) -> bytes:
    """The ``.net.xml`` bytes of a road variant, byte-identical for the same inputs and SUMO version.

    netconvert starts its output with a comment holding a timestamp and the file names it
    was called with; that comment is removed so that identical roads give identical bytes.
    """
    variant = ROADS[road]
    nodes, edges = _plain_xml(variant)
    with tempfile.TemporaryDirectory(prefix="roadsense-net-") as tmp:
        work = Path(tmp)
        (work / "road.nod.xml").write_text(nodes)
        (work / "road.edg.xml").write_text(edges)
        command = [
            sumo_binary("netconvert"),
            "--node-files", "road.nod.xml",
            "--edge-files", "road.edg.xml",
            "--output-file", "road.net.xml",
            "--no-internal-links", "true",
            "--no-turnarounds", "true",
            "--xml-validation", "never",
        ]  # fmt: skip
        result = subprocess.run(command, cwd=work, env=sumo_env(), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise NetworkError(f"netconvert failed for the {road} road: {result.stderr.strip() or result.stdout.strip()}")
        text = (work / "road.net.xml").read_text()
    return re.sub(r"<!--.*?-->\n*", "", text, flags=re.DOTALL).encode()
