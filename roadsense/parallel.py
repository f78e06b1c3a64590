"""The one way this project starts worker processes (training envs, evaluation episodes).

forkserver, not fork: a worker must not inherit the parent's torch threads or a live
libsumo simulation. The server imports the heavy modules once, so each worker it forks
starts in milliseconds instead of re-importing torch and SB3 for seconds.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import ForkServerContext

START_METHOD = "forkserver"
_PRELOAD = ["roadsense.env.convoy_env", "roadsense.evaluation.policies", "roadsense.training.rollout"]


def worker_context() -> ForkServerContext:
    """The forkserver context, with the preload set before the server first starts."""
    mp.set_forkserver_preload(_PRELOAD)
    return mp.get_context(START_METHOD)
