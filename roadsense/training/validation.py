"""Model selection on the validation split.

PPO's policy does not improve monotonically: the last update of a run can be worse than one
a few hundred thousand steps earlier, and by how much depends on the training seed. So every
``val_every`` env steps (and at the end) the current checkpoint is scored on the dataset's
``val`` matrix, which is made of scenarios of its own (own seed, disjoint from ``eval``), and
the best one so far is kept in ``<checkpoints>/best/``. The package's ``model.zip`` is that
best checkpoint; the last one is published beside it as ``model_last.zip``.

The ``eval`` split is never read here: the final evaluation stays an unbiased estimate of
the selected policy.

Files in the checkpoint folder (synced by SageMaker with the checkpoints, so a restarted job
keeps its history and its best model):

* ``best/`` -- a copy of the best checkpoint (``model.zip``, ``vecnormalize.pkl``, ``state.json``);
* ``validation.json`` -- every score so far and which one is best.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from roadsense.artifacts.status import write_json_atomic
from roadsense.config import PipelineConfig
from roadsense.evaluation.matrix import plan_matrix
from roadsense.evaluation.metrics import aggregate
from roadsense.evaluation.runner import run_episodes
from roadsense.scenarios.dataset import Dataset
from roadsense.training.checkpoints import Checkpoint, read_valid_checkpoint

log = logging.getLogger(__name__)

BEST_DIR = "best"
HISTORY_FILE = "validation.json"
SELECTION_FILE = "model_selection.json"  # beside the published model.zip
CRITERION = "highest behavioural success, then fewest collisions, then largest mean min gap after the hazard"


@dataclass(frozen=True)
class ValidationScore:
    """One checkpoint's result on the val matrix."""

    num_timesteps: int
    episodes: int
    behavioral_success_rate: float
    collision_rate: float
    mean_min_distance_post_hazard_m: float | None  # metres; None if no episode reached the hazard
    wall_s: float  # seconds the validation took

    def rank(self) -> tuple[float, float, float]:
        """Larger is better, in the order of :data:`CRITERION`."""
        gap = self.mean_min_distance_post_hazard_m
        return self.behavioral_success_rate, -self.collision_rate, float("-inf") if gap is None else gap


class Validator:
    """Scores checkpoints on the val matrix and keeps the best one.

    Args:
        dataset: the run's verified dataset; it must have a ``val`` split.
        config: episodes per bucket, the val seed and the env settings come from here.
        checkpoint_dir: where ``best/`` and ``validation.json`` live.
        resumed_at: env steps of the checkpoint training resumes from (0 for a fresh run).
            Scores made later than that belong to an abandoned stretch of training and are dropped.
    """

    def __init__(self, dataset: Path, config: PipelineConfig, checkpoint_dir: Path, resumed_at: int = 0) -> None:
        eval_config = config.evaluation
        self.dataset = dataset
        self.config = config
        self.every = eval_config.val_every
        self.plan = plan_matrix(Dataset.open(dataset), eval_config.val_episodes_per_bucket, eval_config.val_seed, split="val")
        self.best_dir = checkpoint_dir / BEST_DIR
        self.history_path = checkpoint_dir / HISTORY_FILE
        self.history: list[ValidationScore] = []
        self.best: ValidationScore | None = None
        self._load(resumed_at)

    @classmethod
    def for_run(cls, dataset: Path | None, config: PipelineConfig, checkpoint_dir: Path,
                resumed_at: int = 0) -> "Validator | None":
        """A validator, or None when validation is off (``val_every=0``) or there is no dataset to validate on."""
        if dataset is None or config.evaluation.val_every == 0:
            return None
        return cls(dataset, config, checkpoint_dir, resumed_at)

    def due(self, num_timesteps: int, previous: int, total: int) -> bool:
        """True when training went from ``previous`` to ``num_timesteps`` steps across a multiple of
        ``val_every``, or reached the end."""
        return num_timesteps >= total or num_timesteps // self.every > previous // self.every

    def validate(self, checkpoint: Checkpoint) -> ValidationScore:
        """Score ``checkpoint`` on the val matrix; if it is the best so far, copy it to ``best/``."""
        started = time.monotonic()
        episodes = run_episodes(self.plan, [str(checkpoint.model)], self.dataset, self.config.env,
                                self.config.evaluation.eval_workers, split="val")[str(checkpoint.model)]
        overall = aggregate(episodes)
        score = ValidationScore(checkpoint.num_timesteps, overall["episodes"], overall["behavioral_success_rate"],
                                overall["collision_rate"], overall["mean_min_distance_post_hazard_m"],
                                round(time.monotonic() - started, 2))
        if self.best is None or score.rank() > self.best.rank():
            _copy_atomic(checkpoint.path, self.best_dir)
            self.best = score
        self.history.append(score)
        write_json_atomic(self.history_path, {
            "criterion": CRITERION,
            "best": self.best.num_timesteps,
            "history": [asdict(s) for s in self.history],
        })
        return score

    def best_checkpoint(self) -> Checkpoint | None:
        """The best checkpoint, if one was validated and its files still verify."""
        if self.best is None:
            return None
        return read_valid_checkpoint(self.best_dir)

    def _load(self, resumed_at: int) -> None:
        if not self.history_path.exists():
            return
        try:
            saved = json.loads(self.history_path.read_text())
            history = [ValidationScore(**entry) for entry in saved["history"]]
            best_steps = int(saved["best"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s (%s): validation starts over", self.history_path, exc)
            return
        self.history = [s for s in history if s.num_timesteps <= resumed_at]
        kept = [s for s in self.history if s.num_timesteps == best_steps]
        on_disk = read_valid_checkpoint(self.best_dir)
        if kept and on_disk is not None and on_disk.num_timesteps == best_steps:
            self.best = kept[0]
        else:
            # The best was made after the resume point (or is damaged): pick again from here on.
            self.history = []
            shutil.rmtree(self.best_dir, ignore_errors=True)


def selection_record(validator: Validator | None, selected: Checkpoint, last: Checkpoint) -> dict[str, Any]:
    """What ``model.zip`` is and why: written as ``model_selection.json`` and into metrics and provenance."""
    if validator is None:
        return {"selected": "last", "reason": "validation off (val_every=0) or no dataset with a val split",
                "selected_timesteps": last.num_timesteps, "last_timesteps": last.num_timesteps}
    best = validator.best
    return {
        "selected": "best" if selected.path != last.path else "last",
        "criterion": CRITERION,
        "selected_timesteps": selected.num_timesteps,
        "last_timesteps": last.num_timesteps,
        "validation": asdict(best) if best is not None else None,
        "val_episodes": len(validator.plan),
        "val_seed": validator.config.evaluation.val_seed,
        "history": [asdict(s) for s in validator.history],
    }


def _copy_atomic(source: Path, target: Path) -> None:
    """Replace ``target`` with a copy of the folder ``source``, never leaving half a copy under that name."""
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    old = target.with_name(f".old-{target.name}-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
