"""The server side of a federated round, and its state over a run, for every engine.

:class:`PruningServer` owns what the server decides and keeps: client sampling, screening
and the bounded-influence average (``fed.clip_factor``, ``fed.aggregator``), the
``fed.min_replies`` skip, the pruning step (the method's :class:`~fedprune.pruners.Pruner`),
central evaluation, the meter's totals (bytes on the wire, client FLOPs), the round
records, the checkpoint and the summary.  An engine is a :class:`~.transport.Transport`: it
only carries models to clients and replies back -- the in-process loop trains them itself,
the Flower app sends messages.  Every engine runs a round the same way::

    record = server.run_round(rnd, transport)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .. import seeds
from ..config import ConfigError, ExperimentConfig
from ..data import FederatedData, PixelTransform
from ..device import resolve_device, to_device
from ..metrics import RoundRecord, count_flops, count_macs, n_params
from ..models import ModelSpec, new_model
from ..pruners import (
    Keep,
    Pruner,
    PruneStep,
    Validate,
    Validation,
    make_pruner,
    screen_validation,
)
from ..pruning import mark_fixed
from ..pruning.widths import variant_models
from ..rundir import OpenedRun, RunDir
from .aggregate import Against, Clip, Rejection
from .averaging import Averaged, average_nested, average_round
from .client import dropout_schedule, evaluate
from .meter import ClientCompute, message_bytes, reply_content, train_content, wire_models
from .transport import Delivery, TrainPlan, TrainReply, Transport
from .wire import round_model

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


@dataclass
class _Tally:
    """One round's traffic and client compute, counted as the round goes."""

    bytes_down: int
    bytes_up: int
    train_flops: int
    val_flops: int = 0
    queries: int = 0
    per_client: dict[int, int] = field(default_factory=dict)  # each client's FLOPs


class PruningServer:
    """The server of one run: the global model, the pruning state, the records.

    ``train_sizes`` and ``val_sizes`` (per client: training and validation samples) describe
    the population the server samples from and what the meter counts the clients' compute
    by; ``test_x``/``test_y`` are the held-out test split for central evaluation.  A
    client's training size bounds the sample count its reply may claim.  With a run directory
    (opened by :meth:`fedprune.rundir.RunDir.open`, given to :meth:`begin`), every finished
    round is appended to ``rounds.jsonl`` and checkpointed.
    """

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, spec: ModelSpec, *,
                 train_sizes: Sequence[int], val_sizes: Sequence[int], test_x: torch.Tensor,
                 test_y: torch.Tensor, test_transform: PixelTransform | None = None,
                 on_round: Callable[[RoundRecord], None] | None = None) -> None:
        if len(train_sizes) != len(val_sizes):
            raise ValueError(f"{len(train_sizes)} training sizes but {len(val_sizes)} "
                             "validation sizes: one of each per client")
        self.cfg = cfg
        self.model, self.spec = model, spec
        self.num_clients = len(train_sizes)
        # central evaluation runs on cfg.device as this machine resolves it
        self.device = resolve_device(cfg.device)
        self.test_x, self.test_y = to_device(test_x, self.device), to_device(test_y, self.device)
        self.compute = ClientCompute(list(train_sizes), list(val_sizes), cfg.train.local_epochs)
        self.val_sizes = list(val_sizes)  # bound each client's validation answers
        self.test_transform = test_transform  # of test_x
        self.run_dir: RunDir | None = None  # set by begin
        self.on_round = on_round
        self.example = spec.example_input()
        self.params_initial = n_params(model)
        self.macs_initial = count_macs(model, self.example)
        self.widths_initial = spec.widths_now()
        # what the weights travel as (fed.payload_dtype): the model is kept rounded to it
        self.payload_dtype = cfg.fed.payload_dtype
        round_model(model, self.payload_dtype)
        self.experiment = cfg.to_json()  # travels with every train message
        # one dense FedAvg client's round: its train message and its reply
        dense = wire_models([(model, spec)], self.payload_dtype)
        self.dense_client_bytes = message_bytes(train_content(
            dense, experiment=self.experiment, rnd=1, arch_version=0, client=0)) + message_bytes(
            reply_content([dense[0][0]], n=0, loss=0.0, arch_version=0, client=0))
        self.pruner: Pruner = make_pruner(
            cfg, model=model, spec=spec, example=self.example,
            params_initial=self.params_initial, flops_initial=2 * self.macs_initial,
            num_clients=self.num_clients, has_validation=[v > 0 for v in val_sizes],
            train_sizes=train_sizes, val_sizes=val_sizes)
        self.sample_rng = seeds.client_sampling(cfg.seed)
        self.arch_version = 0  # +1 whenever the architecture changes (cut or rollback)
        self.bytes_total = self.bytes_total_dense = 0
        self.client_flops_total = self.client_flops_total_dense = 0
        self.client_flops_peak = 0.0  # the most one client spent in a round, over dense
        self.accuracy = self.loss = float("nan")
        self.records: list[RoundRecord] = []
        self.rounds_done = 0
        self.t0 = time.perf_counter()
        self.seconds_before = 0.0
        self._run: OpenedRun | None = None

    @classmethod
    def for_data(cls, cfg: ExperimentConfig, data: FederatedData, *,
                 on_round: Callable[[RoundRecord], None] | None = None) -> PruningServer:
        """The server of ``cfg`` over ``data``, with the seeded initial model: what every
        engine starts from (the clients sampled are ``data``'s, with their validation splits
        and sizes; the test split is evaluated centrally)."""
        if cfg.fed.clients_per_round > len(data.clients):
            raise ConfigError(f"fed.clients_per_round = {cfg.fed.clients_per_round} but the "
                              f"data give only {len(data.clients)} clients: lower "
                              "fed.clients_per_round")
        c, h, _ = data.input_shape
        model, spec = new_model(cfg.model.name, num_classes=data.num_classes, in_channels=c,
                                image_size=h, widths=cfg.model.widths, seed=cfg.seed)
        # the groups a cut would break are left whole for the run, said before round 1
        spec = replace(spec, record=mark_fixed(model, spec.example_input(), spec.record))
        return cls(cfg, model, spec, train_sizes=[len(cl) for cl in data.clients],
                   val_sizes=[0 if cl.val_y is None else len(cl.val_y) for cl in data.clients],
                   test_x=data.test_x, test_y=data.test_y, test_transform=data.transform,
                   on_round=on_round)

    # ------------------------------------------------------------------ run

    def begin(self, run: OpenedRun | None = None) -> None:
        """Write into ``run``, the run directory opened (and locked, until :meth:`close`) by
        :meth:`fedprune.rundir.RunDir.open`: its ``config.json``, or, when it resumes,
        continue from its checkpoint.  Without one, nothing is written."""
        if run is None:
            return
        self.run_dir, self._run = run.run_dir, run
        try:
            if run.resume:
                self.restore()
            else:
                run.write_config(self.cfg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run directory's lock (idempotent; the engines call it when the run
        ends, finished or not)."""
        if self._run is not None:
            self._run.close()
            self._run = None

    def start_clock(self, started: float | None = None) -> None:
        """Count the run's wall time from ``started`` (a ``time.perf_counter()`` value) or
        now; a resumed run adds the seconds of the interrupted one."""
        self.t0 = time.perf_counter() if started is None else started

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def run(self, transport: Transport) -> list[RoundRecord]:
        """The run's remaining rounds, through ``transport``; their records."""
        return [self.run_round(rnd, transport)
                for rnd in range(self.rounds_done + 1, self.cfg.fed.rounds + 1)]

    # ------------------------------------------------------------------ one round

    def run_round(self, rnd: int, transport: Transport) -> RoundRecord:
        """Round ``rnd``: sample, train through ``transport``, screen and average, the
        pruning step (validating through ``transport``), evaluation when due; the round's
        record, written with the checkpoint."""
        clients = tuple(self._sample())
        nested = self.pruner.nested(rnd, self.model, self.spec, clients)
        if nested is None:
            plan = TrainPlan(rnd, clients, ((self.model, self.spec), *self.pruner.trial()),
                             self.arch_version, self.experiment, self.payload_dtype)
            flops = [count_flops(m, self.example) for m, _ in plan.models]
            per_client = {c: sum(self.compute.train_one(f, c) for f in flops)
                          for c in plan.clients}
        else:
            plan = TrainPlan(rnd, clients, nested.models, self.arch_version, self.experiment,
                             self.payload_dtype, assign=nested.assign,
                             narrower=nested.narrower or None)
            per_client = {c: self._nested_compute(plan, i, nested.forward_flops)
                          for i, c in enumerate(plan.clients)}
        delivery = transport.train(plan)
        replies, dropped = _readable(plan, delivery)
        if nested is None:
            averaged = average_round(rnd, self.cfg.fed, [m for m, _ in plan.models], replies,
                                     arch_version=plan.arch_version,
                                     sizes=self.compute.train_sizes,
                                     check_versions=delivery.versions)
        else:
            averaged = average_nested(
                rnd, self.cfg.fed, self.model, [m for m, _ in nested.models], nested.maps,
                [nested.assign[plan.clients.index(r.client)] for r in replies], replies,
                arch_version=plan.arch_version, sizes=self.compute.train_sizes,
                check_versions=delivery.versions)
        sent = set(delivery.sent)
        per_client = {c: f for c, f in per_client.items() if c in sent}
        tally = _Tally(delivery.bytes_down, delivery.bytes_up, sum(per_client.values()),
                       per_client=per_client)
        step = self._prune(rnd, averaged, self._validator(transport, tally))
        return self._finish(plan, delivery, replies, dropped, averaged, step, tally,
                            transport.reports_delivery)

    def _nested_compute(self, plan: TrainPlan, i: int, forward_flops: Sequence[int]) -> int:
        """FLOPs of the plan's ``i``-th client training its width (batch by batch under
        ordered dropout, each batch at the width it draws)."""
        c, a = plan.clients[i], plan.assign[i]  # type: ignore[index]
        narrower = plan.narrower_of(i)
        if not narrower:
            return self.compute.train_one(forward_flops[a], c)
        schedule = dropout_schedule(self.cfg.seed, plan.rnd, c, self.compute.train_sizes[c],
                                    self.cfg.train, len(narrower))
        return self.compute.train_batches(forward_flops[: a + 1], c,
                                          self.cfg.train.batch_size, schedule)

    def _sample(self) -> list[int]:
        """The clients of the next round (sorted), from the sampling stream."""
        m = self.cfg.fed.clients_per_round
        return sorted(int(c) for c in self.sample_rng.choice(self.num_clients, size=m,
                                                              replace=False))

    def _prune(self, rnd: int, averaged: Averaged, validate: Validate) -> PruneStep:
        """The pruning step after an aggregated round (after a skipped one only what the
        pruner must still do: budget mode judges a candidate left at the last round)."""
        last_round = rnd == self.cfg.fed.rounds
        step: PruneStep | None
        if averaged.skipped:
            step = self.pruner.after_skipped(rnd, self.model, self.spec, validate,
                                             last_round=last_round)
        else:
            step = self.pruner.after_aggregate(rnd, self.model, self.spec, validate,
                                               last_round=last_round)
        if step is None:
            return PruneStep(self.model, self.spec, False, False)
        self.model, self.spec = step.model, step.spec
        if step.changed:
            self.arch_version += 1
            logger.info("round %d: arch-version %d", rnd, self.arch_version)
        return step

    def _validator(self, transport: Transport, tally: _Tally) -> Validate:
        """Federated validation through ``transport``, its bytes and FLOPs counted."""
        def validate(model: nn.Module, spec: ModelSpec, ids: Sequence[int],
                     variants: Sequence[Keep] = (), calibrate: int = 0) -> Validation:
            q = transport.validate(model, spec, ids, self.experiment, self.payload_dtype,
                                   variants, calibrate)
            v, dropped = screen_validation(q.validation, ids, self.val_sizes)
            for client, why in dropped:
                logger.warning("validation: the answer of client %s left out: %s", client, why)
            tally.bytes_down += q.bytes_down
            tally.bytes_up += q.bytes_up
            tally.queries += len(q.sent)
            flops = sum(count_flops(m, self.example)
                        for m in (model, *variant_models(model, spec, variants)))
            for c in q.sent:
                f = self.compute.validate_one(flops, c, calibrate)
                tally.val_flops += f
                tally.per_client[c] = tally.per_client.get(c, 0) + f
            return v
        return validate

    def _finish(self, plan: TrainPlan, delivery: Delivery, replies: list[TrainReply],
                dropped: list[dict[str, Any]], averaged: Averaged, step: PruneStep,
                tally: _Tally, reports_delivery: bool) -> RoundRecord:
        """Evaluate when due, count the round, record it, write it and the checkpoint."""
        rnd, cfg = plan.rnd, self.cfg
        self.bytes_total += tally.bytes_down + tally.bytes_up
        self.bytes_total_dense += cfg.fed.clients_per_round * self.dense_client_bytes
        client_flops = tally.train_flops + tally.val_flops
        self.client_flops_total += client_flops
        self.client_flops_total_dense += self.compute.train([2 * self.macs_initial],
                                                            plan.clients)
        evaluated = rnd % cfg.fed.eval_every == 0 or rnd == cfg.fed.rounds
        if evaluated:
            self.accuracy, self.loss = evaluate(self.model, self.test_x, self.test_y,
                                                device=self.device, transform=self.test_transform)
        macs = count_macs(self.model, self.example)

        def entry(client: int, node: int | None, reason: str) -> dict[str, Any]:
            index = plan.clients.index(client) if client in plan.clients else -1
            return {"index": index, "reason": reason,
                    **({"partition": client, "node": node} if reports_delivery else {})}

        def of(r: Rejection) -> dict[str, Any]:
            reply = replies[r.index]
            if reply.node is not None:
                logger.warning("round %d: dropped the reply of node %d (partition %d): %s",
                               rnd, reply.node, reply.client, r.reason)
            return entry(reply.client, reply.node, r.reason)

        def clip(c: Clip) -> dict[str, Any]:
            return {"client": replies[c.index].client, "norm": c.norm, "bound": c.bound}

        def against(a: Against) -> dict[str, Any]:
            return {"client": replies[a.index].client, "cosine": a.cosine}

        rejected = [entry(d["client"], d.get("node"), d["reason"]) for d in dropped]
        rejected += [of(r) for r in averaged.rejections]
        extra: dict[str, Any] = {"rejected": rejected, "skipped": averaged.skipped,
                                 "clipped": [clip(c) for c in averaged.clips]}
        if averaged.trial_rejections:
            extra["trial_rejected"] = [of(r) for r in averaged.trial_rejections]
        if averaged.trial_clips:
            extra["trial_clipped"] = [{"trial": t, **clip(c)} for t, c in averaged.trial_clips]
        if averaged.against:
            extra["against"] = [against(a) for a in averaged.against]
        if averaged.trial_against:
            extra["trial_against"] = [{"trial": t, **against(a)}
                                      for t, a in averaged.trial_against]
        if reports_delivery:
            extra.update(sampled=len(plan.clients), sent=len(delivery.sent),
                         failures=delivery.failures, dropped=len(rejected),
                         arch_version=self.arch_version)
        if self.pruner.record_key is not None:
            extra[self.pruner.record_key] = step.record
        # the most one client spent this round, over what a dense FedAvg client would
        # spend training on the same samples
        peak = max((f / max(1, self.compute.train_one(2 * self.macs_initial, c))
                    for c, f in tally.per_client.items()), default=0.0)
        self.client_flops_peak = max(self.client_flops_peak, peak)
        extra.update(client_flops_train=tally.train_flops, client_flops_val=tally.val_flops,
                     client_flops=client_flops, client_flops_peak=round(peak, 6),
                     messages={"train": len(delivery.sent), "validate": tally.queries})
        rec = RoundRecord(
            round=rnd, accuracy=self.accuracy if evaluated else None,
            loss=self.loss if evaluated else None, params=n_params(self.model), macs=macs,
            flops=2 * macs, widths=self.spec.widths_now(), bytes_down=tally.bytes_down,
            bytes_up=tally.bytes_up, bytes_cumulative=self.bytes_total,
            clients=averaged.clients, pruned=step.pruned, seconds=self.elapsed(), extra=extra)
        self.records.append(rec)
        self.rounds_done = rnd
        if self.run_dir is not None:
            self.run_dir.recorder().append(rec)
            self.checkpoint()
        if self.on_round is not None:
            self.on_round(rec)
        return rec

    # ------------------------------------------------------------------ state

    def state(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the server's JSON-able state, budget mode's snapshot or None)."""
        entries, snapshot = self.pruner.state_entries()
        return {**entries, "sample_rng": self.sample_rng.bit_generator.state,
                "bytes_total": self.bytes_total, "bytes_total_dense": self.bytes_total_dense,
                "client_flops_total": self.client_flops_total,
                "client_flops_total_dense": self.client_flops_total_dense,
                "client_flops_peak": self.client_flops_peak,
                "accuracy": self.accuracy, "loss": self.loss, "seconds": self.elapsed(),
                "arch_version": self.arch_version}, snapshot

    def checkpoint(self) -> None:
        """Write ``checkpoint.pt``: spec, weights, rounds done and :meth:`state`."""
        assert self.run_dir is not None
        state, snapshot = self.state()
        self.run_dir.save_checkpoint(self.spec, self.model, self.rounds_done, state,
                                     snapshot=snapshot)

    def restore(self) -> None:
        """Continue from the run directory's checkpoint; its later round records are dropped."""
        assert self.run_dir is not None
        rd = self.run_dir
        self.spec, self.model, done, state, snapshot = rd.load_resume_point(expected=self.spec)
        try:
            self.pruner.restore_entries(state, snapshot)
            self.sample_rng.bit_generator.state = state["sample_rng"]
            self.bytes_total = int(state["bytes_total"])
            self.bytes_total_dense = int(state["bytes_total_dense"])
            self.client_flops_total = int(state["client_flops_total"])
            self.client_flops_total_dense = int(state["client_flops_total_dense"])
            self.client_flops_peak = float(state.get("client_flops_peak", 0.0))
            self.accuracy, self.loss = state["accuracy"], state["loss"]
            self.seconds_before = float(state["seconds"])
            self.arch_version = int(state.get("arch_version", 0))
        except KeyError as exc:
            raise ValueError(f"checkpoint in {rd.path}: its loop state lacks {exc} (written by "
                             "another fedprune version, or altered)") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint in {rd.path}: its loop state does not fit this run "
                             f"({exc})") from None
        fields = set(RoundRecord.__dataclass_fields__) - {"extra"}
        if not rd.rounds_file.is_file():
            raise ValueError(f"{rd.path} holds a checkpoint but no {rd.rounds_file.name}: the "
                             "run's round records are gone, so it cannot continue from it")
        rows = rd.truncate_rounds(done)
        if [r.get("round") for r in rows] != list(range(1, done + 1)):
            raise ValueError(f"{rd.rounds_file} does not hold the records of rounds 1 to {done}, "
                             f"where the checkpoint is: a record is missing or out of order, "
                             "so the run cannot continue from it")
        self.records = [RoundRecord(**{k: v for k, v in r.items() if k in fields},
                                    extra={k: v for k, v in r.items() if k not in fields})
                        for r in rows]
        self.rounds_done = done
        logger.info("resuming %s after round %d", rd.path, done)

    def summary(self) -> dict[str, Any]:
        """The ``summary.json`` keys every engine writes."""
        macs_final = count_macs(self.model, self.example)
        out = {
            "accuracy": self.accuracy, "loss": self.loss,
            "params_initial": self.params_initial, "params_final": n_params(self.model),
            "macs_initial": self.macs_initial, "macs_final": macs_final,
            "flops_initial": 2 * self.macs_initial, "flops_final": 2 * macs_final,
            "bytes_total": self.bytes_total, "bytes_total_dense": self.bytes_total_dense,
            "client_flops_total": self.client_flops_total,
            "client_flops_total_dense": self.client_flops_total_dense,
            "client_flops_peak": self.client_flops_peak,
            "widths_initial": self.widths_initial, "widths_final": self.spec.widths_now(),
            "prune_stopped_round": None, "prune_steps": 0,
            "rounds": self.cfg.fed.rounds, "seconds": self.elapsed(),
            "config": self.cfg.to_dict(),
        }
        out.update(self.pruner.summary_entries(self.model))
        return out

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.run_dir is not None:
            self.run_dir.recorder().write_summary(summary)


def _readable(plan: TrainPlan, delivery: Delivery
              ) -> tuple[list[TrainReply], list[dict[str, Any]]]:
    """The replies the server can average, in client order, one per planned client, each
    with one (possibly missing) state per model of the plan; and the transport's and the
    server's drops (a reply for a client not asked, a second reply, no trained copy of the
    global model)."""
    dropped = list(delivery.dropped)
    asked = set(plan.clients)
    seen: dict[int, TrainReply] = {}
    counts = {c: len(plan.models_of(i)) for i, c in enumerate(plan.clients)}
    for r in delivery.replies:
        why = ("answer for a client not asked this round" if r.client not in asked
               else "a second answer for the same client" if r.client in seen
               else "no trained copy of the model" if not r.states or r.states[0] is None
               else None)
        if why is not None:
            dropped.append({"client": r.client, "node": r.node, "reason": why})
            continue
        k = counts[r.client]
        states = (*r.states[:k], *[None] * (k - len(r.states)))
        seen[r.client] = TrainReply(r.client, states, r.n, r.version, r.loss, r.node)
    return [seen[c] for c in sorted(seen)], dropped
