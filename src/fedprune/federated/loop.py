"""The in-process engine: sample -> train -> aggregate -> maybe prune -> broadcast.

No Flower needed.  The server side of each round is :class:`~.server.PruningServer`; this
module trains the sampled clients in process.  Every source of randomness is a named stream
of ``cfg.seed`` (:mod:`fedprune.seeds`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import seeds
from ..config import ExperimentConfig
from ..data import FederatedData, load_federated
from ..device import check_precision, resolve_device, to_device
from ..metrics import RoundRecord
from ..models import ModelSpec
from ..rundir import CHECKPOINT_FILE, RunDir, load_checkpoint, save_checkpoint  # noqa: F401
from ..runpolicy import OpenedRun
from .batched import BatchedTrainer, ClientJob, batched_support
from .client import PerClientTrainer, evaluate
from .schedule import Validation
from .server import PruningServer

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    summary: dict[str, Any]
    model: nn.Module
    spec: ModelSpec
    records: list[RoundRecord]


def make_trainer(model: nn.Module, cfg: ExperimentConfig) -> BatchedTrainer | PerClientTrainer:
    """The local-training engine of ``cfg.train.engine`` for ``model``'s architecture, on
    ``cfg.device``."""
    engine = cfg.train.engine
    device = resolve_device(cfg.device)
    reason = batched_support(model)
    if engine == "batched" and reason is not None:
        raise ValueError(f"train.engine = 'batched' cannot train {cfg.model.name}: {reason}; "
                         "use train.engine = 'auto' or 'per_client'")
    if engine == "per_client" or reason is not None:
        return PerClientTrainer(model, cfg.train, device)
    return BatchedTrainer(model, cfg.train, device=device)


class DeviceData:
    """The clients' tensors on the training device, each moved there once (on first use)
    and kept; on the CPU, the tensors themselves."""

    def __init__(self, data: FederatedData, device: torch.device) -> None:
        self.data, self.device = data, device
        self._moved: dict[tuple[int, str], torch.Tensor] = {}

    def get(self, cid: int, name: str) -> torch.Tensor:
        t = getattr(self.data.clients[cid], name)
        if self.device.type == "cpu" or t is None:
            return t
        key = (cid, name)
        if key not in self._moved:
            self._moved[key] = to_device(t, self.device)
        return self._moved[key]


def run_simulation(
    cfg: ExperimentConfig,
    run_dir: Path | OpenedRun | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    data: FederatedData | None = None,
    resume: bool = False,
) -> RunResult:
    """Run one federated experiment in process; write records under ``run_dir`` if given.

    With a ``run_dir``, a checkpoint is written atomically after every round; ``resume=True``
    continues from it (same config), giving the same final weights and figures, bit for bit
    on CPU, as a run that was never interrupted.  A folder is opened by
    :meth:`~fedprune.rundir.RunDir.open` (which may refuse it); an already opened run is
    written as it was opened (``resume`` is then its own).
    """
    t0 = time.perf_counter()
    if resume and run_dir is None:
        raise ValueError("resume needs the run directory of the interrupted run")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_precision(resolve_device(cfg.device), cfg.train.precision)  # before any work
    run = (RunDir(run_dir).open(cfg, resume=resume, engine="in-process")
           if run_dir is not None and not isinstance(run_dir, OpenedRun) else run_dir)
    try:
        data = data if data is not None else load_federated(cfg.data, cfg.seed)
        server = PruningServer.for_data(cfg, data, on_round=on_round)
        server.begin(run)
        try:
            return _run_rounds(cfg, data, server, t0)
        finally:
            server.close()
    finally:
        if run is not None:
            run.close()


def _run_rounds(cfg: ExperimentConfig, data: FederatedData, server: PruningServer,
                t0: float) -> RunResult:
    """The rounds of :func:`run_simulation`, from the server's next round to the last."""
    server.start_clock(t0)
    trainer = make_trainer(server.model, cfg)
    device = resolve_device(cfg.device)
    on_device = DeviceData(data, device)
    logger.info("local training engine: %s on %s in %s", type(trainer).__name__, device,
                cfg.train.precision)

    def validate(net: nn.Module, _spec: ModelSpec, ids: list[int]) -> Validation:
        """Federated validation: each client's accuracy on its own validation split."""
        correct, loss, total = 0.0, 0.0, 0
        answers = []
        if device.type != "cpu":
            net = copy.deepcopy(net).to(device)
        for cid in ids:
            cd = data.clients[cid]
            if cd.val_y is None or len(cd.val_y) == 0:
                continue
            acc, lo = evaluate(net, on_device.get(cid, "val_x"), on_device.get(cid, "val_y"))
            correct += acc * len(cd.val_y)
            loss += lo * len(cd.val_y)
            total += len(cd.val_y)
            answers.append((cid, acc, len(cd.val_y)))
        if total == 0:
            return Validation(float("nan"), 0, float("nan"))
        return Validation(correct / total, total, loss / total, tuple(answers))

    def jobs_of(rnd: int, sampled: list[int]) -> list[ClientJob]:
        return [ClientJob(on_device.get(cid, "x"), on_device.get(cid, "y"),
                          seeds.batch_order(cfg.seed, rnd, cid)) for cid in sampled]

    # trainers of the trial models (candidate, reference), built once per model
    trial_trainers: list[tuple[nn.Module, BatchedTrainer | PerClientTrainer]] = []
    for rnd in range(server.rounds_done + 1, cfg.fed.rounds + 1):
        sampled = server.sample(rnd)
        bytes_down = server.bytes_down(len(sampled))
        replies = [(s, n) for s, n, _ in trainer.train(server.model.state_dict(),
                                                       jobs_of(rnd, sampled))]
        trial = server.trial()  # trained on the same clients with the same batches
        trial_trainers = [(m, next((t for m2, t in trial_trainers if m2 is m), None)
                           or make_trainer(m, cfg)) for m, _ in trial]
        trial_replies = [[s for s, _, _ in t.train(m.state_dict(), jobs_of(rnd, sampled))]
                         for m, t in trial_trainers]
        server.aggregate(rnd, replies, trial_replies=trial_replies, clients=sampled)
        if server.after_aggregate(rnd, validate).changed:
            trainer = make_trainer(server.model, cfg)
        up = sum(server.payload_bytes(s) for s, _ in replies)
        up += sum(server.payload_bytes(s) for copies in trial_replies for s in copies)
        server.finish_round(rnd, bytes_down=bytes_down, bytes_up=up)

    summary = server.summary()
    server.write_summary(summary)
    return RunResult(summary=summary, model=server.model, spec=server.spec,
                     records=server.records)
