"""The deterministic evaluation matrix: (peer count n, hazard on the rank-k peer ahead), k <= n.

Every episode is planned before anything runs: which scenario (the dataset's eval list for
that peer count, in order, cycling), which hazard rank and which seed. A plan that cannot
be covered is refused up front, not discovered hours into a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from roadsense.errors import UserError
from roadsense.scenarios.dataset import Dataset
from roadsense.scenarios.scenario import BASE_PEERS, Split

PEER_COUNTS = tuple(range(1, BASE_PEERS + 1))  # every peer count a scenario can have
BUCKET_COUNT = sum(PEER_COUNTS)  # (n, k) buckets: hazard rank k = 1..n for each peer count n


class CoverageError(UserError, ValueError):
    """The evaluation set cannot cover the planned matrix."""


@dataclass(frozen=True, slots=True)
class EpisodeSpec:
    n_peers: int
    hazard_rank: int
    episode: int  # index within the bucket
    scenario_id: str
    seed: int


def episode_seed(eval_seed: int, n_peers: int, rank: int, episode: int) -> int:
    """A seed that depends only on the episode's place in the matrix (not on worker count or order)."""
    return int(np.random.SeedSequence([eval_seed, n_peers, rank, episode]).generate_state(1)[0])


def plan_matrix(dataset: Dataset, episodes_per_bucket: int, eval_seed: int,
                peer_counts: tuple[int, ...] = PEER_COUNTS, split: Split = "eval") -> list[EpisodeSpec]:
    """All episodes of the matrix over ``split`` (``eval``, or ``val`` for model selection), in bucket order.

    Raises CoverageError naming every gap.
    """
    by_count: dict[int, list[str]] = {n: [] for n in peer_counts}
    for scenario_id in dataset.ids(split):
        n = dataset.peer_count(split, scenario_id)
        if n in by_count:
            by_count[n].append(scenario_id)
    missing = [n for n, ids in by_count.items() if not ids]
    if missing:
        raise CoverageError(
            f"the {split} split of {dataset.root} has no scenario with {', '.join(map(str, missing))} peer(s); "
            f"the matrix needs every peer count in {list(peer_counts)}: regenerate with --{split}-count >= {len(peer_counts)}"
        )
    plan = []
    for n in peer_counts:
        scenarios = by_count[n]
        for k in range(1, n + 1):
            for e in range(episodes_per_bucket):
                plan.append(EpisodeSpec(n, k, e, scenarios[e % len(scenarios)], episode_seed(eval_seed, n, k, e)))
    return plan
