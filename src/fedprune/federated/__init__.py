"""Federated training: client work, FedAvg, and the in-process round loop."""

from .aggregate import AggregationError, check_replies, fedavg
from .client import evaluate, make_optimizer, train_local
from .loop import RunResult, load_checkpoint, run_simulation, save_checkpoint

__all__ = [
    "AggregationError",
    "RunResult",
    "check_replies",
    "evaluate",
    "fedavg",
    "load_checkpoint",
    "make_optimizer",
    "run_simulation",
    "save_checkpoint",
    "train_local",
]
