"""Federated training: client work, aggregation, the server's round, and the in-process loop.

Engine-neutral: nothing here imports Flower (the Flower app is :mod:`fedprune.flower`).
"""

from .aggregate import AggregationError, check_replies, fedavg, robust_aggregate
from .client import evaluate, make_optimizer, train_local
from .loop import RunResult, load_checkpoint, run_simulation, save_checkpoint
from .server import PruningServer

__all__ = [
    "AggregationError",
    "PruningServer",
    "RunResult",
    "check_replies",
    "evaluate",
    "fedavg",
    "load_checkpoint",
    "make_optimizer",
    "robust_aggregate",
    "run_simulation",
    "save_checkpoint",
    "train_local",
]
