"""The in-process engine: the server's rounds over a transport that trains the clients here.

No Flower needed.  The server side of each round is :class:`~.server.PruningServer`;
:class:`LocalTransport` trains the sampled clients in process and measures the messages a
deployment would exchange with the one meter (:mod:`.meter`).  Every source of randomness
is a named stream of ``cfg.seed`` (:mod:`fedprune.seeds`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import seeds
from ..config import ExperimentConfig
from ..data import FederatedData, load_federated
from ..device import DeviceData, check_precision, resolve_device, use_threads
from ..metrics import RoundRecord
from ..models import ModelSpec
from ..pruners import Keep, pool_validation
from ..pruning.widths import dropout_masks, variant_models
from ..rundir import CHECKPOINT_FILE, RunDir, load_checkpoint, save_checkpoint  # noqa: F401
from ..runpolicy import OpenedRun
from .batched import BatchedTrainer, ClientJob, batched_support
from .client import Dropout, PerClientTrainer, dropout_schedule, evaluate_widths
from .meter import (
    answer_content,
    message_bytes,
    query_content,
    reply_content,
    train_content,
    wire_models,
)
from .server import PruningServer
from .transport import Delivery, Queried, TrainPlan, TrainReply
from .wire import encode

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    summary: dict[str, Any]
    model: nn.Module
    spec: ModelSpec
    records: list[RoundRecord]


Trainer = BatchedTrainer | PerClientTrainer


def make_trainer(model: nn.Module, cfg: ExperimentConfig,
                 device: torch.device | None = None) -> Trainer:
    """The local-training engine of ``cfg.train.engine`` for ``model``'s architecture, on
    ``device`` (default: ``cfg.device`` as this machine resolves it)."""
    engine = cfg.train.engine
    device = resolve_device(cfg.device) if device is None else device
    reason = batched_support(model)
    if engine == "batched" and reason is not None:
        raise ValueError(f"train.engine = 'batched' cannot train {cfg.model.name}: {reason}; "
                         "use train.engine = 'auto' or 'per_client'")
    if engine == "per_client" or reason is not None:
        return PerClientTrainer(model, cfg.train, device)
    return BatchedTrainer(model, cfg.train, device=device)


class LocalTransport:
    """The in-process :class:`~.transport.Transport`: the clients are ``data``'s, trained on
    ``device`` by the engine of ``cfg.train.engine``: one trainer for the global model while
    its architecture lasts, one for each trial model while it is trained."""

    reports_delivery = False  # nothing is lost in process

    def __init__(self, cfg: ExperimentConfig, data: FederatedData, device: torch.device
                 ) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self.on_device = DeviceData(data, device)
        # (global or trial, the model's id, its architecture) -> (the model, its trainer)
        self._trainers: dict[tuple[bool, int, str], tuple[nn.Module, Trainer]] = {}

    def trainer(self, model: nn.Module, spec: ModelSpec, trial: bool = False) -> Trainer:
        """The trainer of ``model`` (the global one, or a trial model), built on first use."""
        key = (trial, id(model), spec.to_json())
        if key not in self._trainers:
            self._trainers[key] = (model, make_trainer(model, self.cfg, self.device))
        return self._trainers[key][1]

    def _jobs(self, rnd: int, clients: Sequence[int]) -> list[ClientJob]:
        return [ClientJob(self.on_device.get(cid, "x"), self.on_device.get(cid, "y"),
                          seeds.batch_order(self.cfg.seed, rnd, cid), self.data.transform)
                for cid in clients]

    def train(self, plan: TrainPlan) -> Delivery:
        """Every model of the plan trained by every client, with the same batches (or, for
        nested widths, each client's own model)."""
        if plan.assign is not None:
            return self._train_nested(plan)
        trainers = [self.trainer(m, sp, i > 0) for i, (m, sp) in enumerate(plan.models)]
        # trainers of models no longer in the plan (an old architecture, a dropped trial) go
        self._trainers = {k: v for k, v in self._trainers.items()
                          if any(t is v[1] for t in trainers)}
        trained = [t.train(m.state_dict(), self._jobs(plan.rnd, plan.clients))
                   for t, (m, _) in zip(trainers, plan.models, strict=True)]
        wire = plan.payload_dtype
        sent = wire_models(plan.models, wire)
        down = up = 0
        replies = []
        for i, cid in enumerate(plan.clients):
            states = tuple(per_model[i][0] for per_model in trained)
            n, loss = trained[0][i][1], trained[0][i][2]["train_loss"]
            down += message_bytes(train_content(sent, experiment=plan.experiment, rnd=plan.rnd,
                                                arch_version=plan.arch_version, client=cid))
            up += message_bytes(reply_content([encode(s, wire) for s in states], n=n,
                                              loss=loss, arch_version=plan.arch_version,
                                              client=cid))
            replies.append(TrainReply(cid, states, n, loss=loss))
        return Delivery(replies, list(plan.clients), down, up)

    def _train_nested(self, plan: TrainPlan) -> Delivery:
        """Each client trains its own width of the global model (``plan.assign``); one
        trainer per architecture, kept while its shapes come back round after round."""
        assert plan.assign is not None
        trained: dict[int, tuple[dict[str, torch.Tensor], int, dict[str, float]]] = {}
        used: dict[tuple[Any, ...], tuple[nn.Module, Trainer]] = {}
        for a, (m, sp) in enumerate(plan.models):
            mine = [i for i, k in enumerate(plan.assign) if k == a]
            if not mine:
                continue
            shapes = ("nested", *((k, tuple(v.shape)) for k, v in m.state_dict().items()))
            held = self._trainers.get(shapes) or (m, make_trainer(m, self.cfg, self.device))
            used[shapes] = held
            clients = [plan.clients[i] for i in mine]
            jobs = self._jobs(plan.rnd, clients)
            narrower = plan.narrower_of(mine[0])
            if narrower:  # ordered dropout per batch: as each client derives it
                masks = tuple(dropout_masks(m, sp.record, narrower, sp.example_input()))
                jobs = [replace(job, dropout=Dropout(dropout_schedule(
                    self.cfg.seed, plan.rnd, cid, int(job.y.shape[0]), self.cfg.train,
                    len(narrower)), masks)) for cid, job in zip(clients, jobs, strict=True)]
            for cid, out in zip(clients, held[1].train(m.state_dict(), jobs), strict=True):
                trained[cid] = out
        self._trainers = used  # type: ignore[assignment]
        wire = plan.payload_dtype
        sent = wire_models(plan.models, wire)
        down = up = 0
        replies = []
        for i, (cid, a) in enumerate(zip(plan.clients, plan.assign, strict=True)):
            state, n, metrics = trained[cid]
            down += message_bytes(train_content([sent[a]], experiment=plan.experiment,
                                                rnd=plan.rnd, arch_version=plan.arch_version,
                                                client=cid, narrower=plan.narrower_of(i)))
            up += message_bytes(reply_content([encode(state, wire)], n=n,
                                              loss=metrics["train_loss"],
                                              arch_version=plan.arch_version, client=cid))
            replies.append(TrainReply(cid, (state,), n, loss=metrics["train_loss"]))
        return Delivery(replies, list(plan.clients), down, up)

    def validate(self, model: nn.Module, spec: ModelSpec, clients: Sequence[int],
                 experiment: str, payload_dtype: str, variants: Sequence[Keep] = (),
                 calibrate: int = 0) -> Queried:
        """Each client's accuracy on its own validation split, pooled (and that of each
        sub-model ``variants`` of ``model``, cut here as a client would cut it; each
        first calibrated on the client's training samples when ``calibrate`` > 0)."""
        query = message_bytes(query_content(*wire_models([(model, spec)], payload_dtype),
                                            experiment=experiment, variants=variants,
                                            calibrate=calibrate))
        nets = [model] + variant_models(model, spec, variants)
        if self.device.type != "cpu":
            nets = [copy.deepcopy(n).to(self.device) for n in nets]
        answers, per, up = [], [], 0
        for cid in clients:
            cd = self.data.clients[cid]
            answer, subs = None, []
            if cd.val_y is not None and len(cd.val_y) > 0:
                x, y = self.on_device.get(cid, "val_x"), self.on_device.get(cid, "val_y")
                figures = evaluate_widths(
                    nets, x, y, train_x=self.on_device.get(cid, "x") if calibrate else None,
                    calibrate=calibrate, batch_size=self.cfg.train.batch_size,
                    transform=self.data.transform)
                (acc, lo), subs = figures[0], figures[1:]
                answer = (acc, len(cd.val_y), lo)
                answers.append((cid, acc, lo, len(cd.val_y)))
                per.append(subs)
            up += message_bytes(answer_content(cid, answer, subs))
        return Queried(pool_validation(answers, per if variants else None), list(clients),
                       len(clients) * query, up)


def run_simulation(
    cfg: ExperimentConfig,
    run_dir: Path | OpenedRun | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    data: FederatedData | None = None,
    resume: bool = False,
) -> RunResult:
    """Run one federated experiment in process; write records under ``run_dir`` if given.

    With a ``run_dir``, a checkpoint is written atomically after every round; ``resume=True``
    continues from it, giving the same final weights and figures, bit for bit on CPU, as a
    run that was never interrupted.  A folder is opened by :meth:`~fedprune.rundir.RunDir.
    open`, which refuses it where the policy says so (a resumed run's configuration must be
    the run's own, compared by resolved values); an already opened run is written as it was
    opened (``resume`` is then its own).  Either way its lock is released when the run ends.
    """
    t0 = time.perf_counter()
    if resume and run_dir is None:
        raise ValueError("resume needs the run directory of the interrupted run")
    use_threads(cfg)
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
    device = server.device
    transport = LocalTransport(cfg, data, device)
    logger.info("local training engine: %s on %s in %s",
                type(transport.trainer(server.model, server.spec)).__name__, device,
                cfg.train.precision)
    server.run(transport)
    summary = server.summary()
    server.write_summary(summary)
    return RunResult(summary=summary, model=server.model, spec=server.spec,
                     records=server.records)
