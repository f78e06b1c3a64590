"""The route-file invariants (docs/design.md, "Invariants"), checked on every file written and every file verified.

1. ``V001`` (the ego) is the first vehicle and departs at t = 0.
2. Departures are sorted: SUMO silently drops vehicles from an unsorted route file.
3. No peer spawns behind (or overlapping) the ego: all cars share one route and lane, and
   every peer's front bumper is at least one car length ahead of the ego's.
4. The file holds only what the generator writes (one vType, one route, the vehicles,
   none with children), so a route file cannot bring in stops, detectors or other inputs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from roadsense.errors import RunFailed
from roadsense.scenarios.scenario import BASE_PEERS, EGO_ID, VEHICLE_LENGTH_M

_ROUTE_ELEMENTS = ("vType", "route", "vehicle")


class InvariantError(RunFailed):
    """A scenario file the generator wrote breaks an invariant: a generator bug, which stops the generation (exit 1)."""


def routes_problems(path: Path) -> list[str]:
    """Every invariant the route file at ``path`` breaks (empty when it is sound)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        return [f"{path.name}: not a readable route file ({exc})"]
    foreign = sorted({child.tag for child in root if child.tag not in _ROUTE_ELEMENTS or len(child)})
    if root.tag != "routes" or foreign:
        return [f"{path.name}: only <routes> holding {', '.join(_ROUTE_ELEMENTS)} (no children) is allowed, found {root.tag}: {foreign}"]
    vehicles = root.findall("vehicle")
    if not vehicles:
        return [f"{path.name}: no vehicles"]
    problems = []
    ids = [v.get("id") for v in vehicles]
    expected = [f"V{i:03d}" for i in range(1, len(vehicles) + 1)]
    if ids != expected:
        problems.append(f"{path.name}: vehicles must be {', '.join(expected)} in that order, found {ids}")
    if not 2 <= len(vehicles) <= BASE_PEERS + 1:
        problems.append(f"{path.name}: {len(vehicles) - 1} peers, expected 1..{BASE_PEERS}")

    departs = [depart for depart in (_number(v.get("depart")) for v in vehicles) if depart is not None]
    if len(departs) < len(vehicles):
        problems.append(f"{path.name}: every depart must be a number of seconds")
    else:
        if departs[0] != 0.0 or ids[0] != EGO_ID:
            problems.append(f"{path.name}: {EGO_ID} must be the first vehicle and depart at 0")
        if departs != sorted(departs):
            problems.append(f"{path.name}: vehicles are not sorted by depart time")

    ego = vehicles[0]
    ego_pos = _number(ego.get("departPos"))
    if ego_pos is None:
        problems.append(f"{path.name}: {ids[0]} needs a numeric departPos")
        return problems
    for peer in vehicles[1:]:
        if (peer.get("route"), peer.get("departLane")) != (ego.get("route"), ego.get("departLane")):
            problems.append(f"{path.name}: {peer.get('id')} is not on the ego's route and lane")
        position = _number(peer.get("departPos"))
        if position is None or position < ego_pos + VEHICLE_LENGTH_M:
            problems.append(f"{path.name}: {peer.get('id')} departs behind or inside the ego (departPos {peer.get('departPos')})")
    return problems


def check_routes(path: Path) -> None:
    """Raise :class:`InvariantError` naming every invariant the route file breaks."""
    problems = routes_problems(path)
    if problems:
        raise InvariantError("scenario invariant broken (a generator bug): " + "; ".join(problems))


def formation(path: Path) -> list[float]:
    """departPos (m) of every car, ego first, in a route file that passed :func:`routes_problems`."""
    return [float(v.get("departPos", "")) for v in ET.parse(path).getroot().findall("vehicle")]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
