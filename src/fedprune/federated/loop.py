"""The in-process reference loop: sample -> train -> aggregate -> maybe prune -> broadcast.

No Flower needed.  Every source of randomness is derived from ``cfg.seed``: the data split,
the model's initial weights, client sampling, and each client's batch order per round.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, ExperimentConfig
from ..data import FederatedData, load_federated
from ..metrics import (
    Recorder,
    RoundRecord,
    count_macs,
    n_params,
    payload_bytes,
)
from ..models import ModelSpec, new_model
from ..pruning import ScheduleState
from ..rundir import CHECKPOINT_FILE, RunDir, load_checkpoint, save_checkpoint  # noqa: F401
from .aggregate import fedavg, screen_replies
from .batched import BatchedTrainer, ClientJob, batched_support
from .budget_server import BudgetServer
from .client import PerClientTrainer, evaluate
from .server import maybe_prune, run_summary

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    summary: dict[str, Any]
    model: nn.Module
    spec: ModelSpec
    records: list[RoundRecord]


def client_generator(seed: int, rnd: int, cid: int) -> torch.Generator:
    """The batch-order generator of client ``cid`` in round ``rnd`` (independent streams)."""
    state = np.random.SeedSequence([seed, 3, rnd, cid]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def sample_clients(rng: np.random.Generator, num_clients: int, k: int) -> list[int]:
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def make_trainer(model: nn.Module, cfg: ExperimentConfig) -> BatchedTrainer | PerClientTrainer:
    """The local-training engine of ``cfg.train.engine`` for ``model``'s architecture."""
    engine = cfg.train.engine
    reason = batched_support(model)
    if engine == "batched" and reason is not None:
        raise ValueError(f"train.engine = 'batched' cannot train {cfg.model.name}: {reason}; "
                         "use train.engine = 'auto' or 'per_client'")
    if engine == "per_client" or reason is not None:
        return PerClientTrainer(model, cfg.train)
    return BatchedTrainer(model, cfg.train)


def run_simulation(
    cfg: ExperimentConfig,
    run_dir: Path | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    data: FederatedData | None = None,
    resume: bool = False,
) -> RunResult:
    """Run one federated experiment in process; write records under ``run_dir`` if given.

    With a ``run_dir``, a checkpoint is written atomically after every round; ``resume=True``
    continues from it (same config), giving the same final weights and figures, bit for bit
    on CPU, as a run that was never interrupted.
    """
    t0 = time.perf_counter()
    if resume and run_dir is None:
        raise ValueError("resume needs the run directory of the interrupted run")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = data if data is not None else load_federated(cfg.data, cfg.seed)
    if cfg.fed.clients_per_round > len(data.clients):
        raise ConfigError(f"fed.clients_per_round = {cfg.fed.clients_per_round} but the data "
                          f"give only {len(data.clients)} clients: lower fed.clients_per_round")
    c, h, _ = data.input_shape
    model, spec = new_model(cfg.model.name, num_classes=data.num_classes, in_channels=c,
                            image_size=h, widths=cfg.model.widths, seed=cfg.seed)
    example = spec.example_input()
    recorder = Recorder(Path(run_dir)) if run_dir is not None else None
    if recorder is not None and not resume:
        recorder.write_config(cfg.to_dict())

    params_initial, macs_initial = n_params(model), count_macs(model, example)
    widths_initial = spec.widths_now()
    dense_payload = payload_bytes(model)
    sched_state = ScheduleState()
    sample_rng = np.random.default_rng([cfg.seed, 2])
    m = cfg.fed.clients_per_round
    max_client_size = max(len(c) for c in data.clients)
    bytes_total = bytes_total_dense = 0
    accuracy = loss = float("nan")
    records: list[RoundRecord] = []
    first_round, seconds_before = 1, 0.0
    budget = None
    if cfg.budget.active:
        budget = BudgetServer(cfg, model, example, spec, params_initial, 2 * macs_initial,
                              len(data.clients),
                              [c.val_y is not None and len(c.val_y) > 0 for c in data.clients])
    if resume:
        rd = RunDir(run_dir)  # type: ignore[arg-type]
        spec, model, done, state = rd.load_checkpoint(with_state=True)
        sched_state = ScheduleState(**state["schedule"])
        sample_rng.bit_generator.state = state["sample_rng"]
        bytes_total, bytes_total_dense = state["bytes_total"], state["bytes_total_dense"]
        accuracy, loss, seconds_before = state["accuracy"], state["loss"], state["seconds"]
        fields = set(RoundRecord.__dataclass_fields__) - {"extra"}
        records = [RoundRecord(**{k: v for k, v in r.items() if k in fields},
                               extra={k: v for k, v in r.items() if k not in fields})
                   for r in rd.truncate_rounds(done)]
        first_round = done + 1
        if budget is not None:
            if "budget" not in state:
                raise ValueError(f"checkpoint in {run_dir} holds no budget-mode state: it was "
                                 "written by a run without budget mode")
            budget.restore(state["budget"], rd.load_snapshot())
        logger.info("resuming %s after round %d", run_dir, done)

    trainer = make_trainer(model, cfg)
    logger.info("local training engine: %s", type(trainer).__name__)

    def validate(net: nn.Module, _spec: ModelSpec, ids: list[int]) -> tuple[float, int]:
        """Federated validation: each client's accuracy on its own validation split."""
        correct, total = 0.0, 0
        for cid in ids:
            cd = data.clients[cid]
            acc, _ = evaluate(net, cd.val_x, cd.val_y)
            correct += acc * len(cd.val_y)
            total += len(cd.val_y)
        return correct / total, total

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t0

    for rnd in range(first_round, cfg.fed.rounds + 1):
        sampled = sample_clients(sample_rng, len(data.clients), m)
        global_state = model.state_dict()
        spec_bytes = len(spec.to_json().encode()) if cfg.prune.enabled else 0
        bytes_down = m * (payload_bytes(global_state) + spec_bytes)
        jobs = [ClientJob(data.clients[cid].x, data.clients[cid].y,
                          client_generator(cfg.seed, rnd, cid)) for cid in sampled]
        replies = [(state, n) for state, n, _ in trainer.train(global_state, jobs)]
        bytes_up = sum(payload_bytes(s) for s, _ in replies)
        accepted, rejected = screen_replies(replies, global_state, max_samples=max_client_size)
        skipped = len(accepted) < cfg.fed.min_replies
        if skipped:
            logger.warning("round %d skipped: %d valid replies, fed.min_replies = %d", rnd,
                           len(accepted), cfg.fed.min_replies)
        else:
            model.load_state_dict(fedavg(accepted))
        bytes_total += bytes_down + bytes_up
        bytes_total_dense += 2 * m * dense_payload

        pruned = False
        budget_record = None
        if not skipped and budget is not None:
            bstep = budget.after_aggregate(rnd, model, spec, validate,
                                           last_round=rnd == cfg.fed.rounds)
            model, spec, pruned, budget_record = bstep.model, bstep.spec, bstep.pruned, \
                bstep.record
            if bstep.changed:
                trainer = make_trainer(model, cfg)
        elif not skipped:
            step = maybe_prune(cfg, sched_state, model, example, spec, rnd)
            spec, sched_state, pruned = step.spec, step.state, step.pruned
            if pruned:
                trainer = make_trainer(model, cfg)

        evaluated = rnd % cfg.fed.eval_every == 0 or rnd == cfg.fed.rounds
        if evaluated:
            accuracy, loss = evaluate(model, data.test_x, data.test_y)
        macs = count_macs(model, example)
        rec = RoundRecord(
            round=rnd, accuracy=accuracy if evaluated else None, loss=loss if evaluated else None,
            params=n_params(model), macs=macs, flops=2 * macs, widths=spec.widths_now(),
            bytes_down=bytes_down, bytes_up=bytes_up, bytes_cumulative=bytes_total,
            clients=0 if skipped else len(accepted), pruned=pruned,
            seconds=elapsed(),
            extra={"rejected": [r._asdict() for r in rejected], "skipped": skipped,
                   **({"budget": budget_record} if budget is not None else {})},
        )
        records.append(rec)
        if recorder is not None:
            recorder.append(rec)
            loop_state = {
                "schedule": dataclasses.asdict(sched_state),
                "sample_rng": sample_rng.bit_generator.state,
                "bytes_total": bytes_total, "bytes_total_dense": bytes_total_dense,
                "accuracy": accuracy, "loss": loss, "seconds": elapsed(),
            }
            snapshot = None
            if budget is not None:
                loop_state["budget"], snapshot = budget.checkpoint_state()
            RunDir(run_dir).save_checkpoint(spec, model, rnd,  # type: ignore[arg-type]
                                            loop_state, snapshot=snapshot)
        if on_round is not None:
            on_round(rec)

    summary = run_summary(
        cfg, model, example, spec, sched_state, accuracy=accuracy, loss=loss,
        params_initial=params_initial, macs_initial=macs_initial, widths_initial=widths_initial,
        bytes_total=bytes_total, bytes_total_dense=bytes_total_dense, seconds=elapsed(),
    )
    if budget is not None:
        summary.update(budget.summary_entries(model))
    if recorder is not None:
        recorder.write_summary(summary)
    return RunResult(summary=summary, model=model, spec=spec, records=records)
