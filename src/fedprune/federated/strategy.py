"""fedprune's pruning strategy for Flower's message API (flwr 1.41): FedAvg, then prune.

:class:`PruningFedAvg` subclasses :class:`flwr.serverapp.strategy.FedAvg` and reproduces the
round of the in-process loop (:func:`fedprune.federated.run_simulation`):

1. **sample** ``fed.clients_per_round`` partition ids with the loop's generator
   (``np.random.default_rng([seed, 2])``) and send each to the SuperNode serving that
   partition (learnt once per node with a ``query`` message);
2. the train message carries the weights as an ``ArrayRecord`` and, in a ``ConfigRecord``,
   the architecture as JSON (:class:`~fedprune.models.ModelSpec`: model name, constructor
   arguments and the pruning record), its ``arch-version``, the resolved experiment config and
   the partition id -- never a pickled module or code;
3. **check** every reply: error and missing replies (a dead or failing node) count as
   failures; a reply for a partition not asked of that node, or with other dtypes, is
   dropped; the rest are screened like the loop's replies
   (:func:`~fedprune.federated.aggregate.screen_replies`: keys and shapes of the current
   architecture, NaN/Inf, sample count, ``arch-version``).  Every drop is logged and listed in
   the round's record.  Fewer valid replies than ``fed.min_replies`` skip the round; otherwise
   they are averaged with fedprune's :func:`~fedprune.federated.fedavg` in partition order
   (the loop's order);
4. **prune** with :func:`~fedprune.pruning.prune_model` on the schedule of the loop
   (:class:`~fedprune.pruning.Schedule`); when the parameter count drops the spec gets the new
   record and ``arch-version`` goes up by one;
5. **record** one :class:`~fedprune.metrics.RoundRecord` per round from the central
   evaluation hook -- the loop's fields (``clients`` = replies aggregated, ``rejected``,
   ``skipped``) plus ``sampled``, ``sent``, ``failures``, ``dropped``, ``arch_version`` -- a
   checkpoint after each round, and the loop's ``summary.json`` keys at the end.

A node that does not answer within the round timeout is not sent work again while it stays
listed by the SuperLink (its heartbeat expires after about a minute); the run goes on with
the others, which is Flower's accept-failures behaviour.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from torch import nn

from ..config import ConfigError, ExperimentConfig
from ..metrics import Recorder, RoundRecord, count_macs, n_params, payload_bytes
from ..models import ModelSpec
from ..pruning import ScheduleState
from .aggregate import fedavg, screen_replies
from .budget_server import BudgetServer
from .client import evaluate
from .loop import CHECKPOINT_FILE, sample_clients, save_checkpoint
from .server import maybe_prune, run_summary

logger = logging.getLogger("flwr.fedprune")  # a child of Flower's logger: shows in its logs

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
QUERY_KIND = "fedprune.partition"
VALIDATE_KIND = "fedprune.validate"  # budget guard: accuracy on the client's validation split


@dataclass
class RoundStats:
    """What happened to the messages of one round (reset by ``configure_train``)."""

    sampled: list[int] = field(default_factory=list)
    sent: dict[int, int] = field(default_factory=dict)  # partition id -> node id
    messages: dict[int, Message] = field(default_factory=dict)  # partition id -> train message
    bytes_down: int = 0
    bytes_up: int = 0
    replies: int = 0  # aggregated (0 when the round is skipped)
    failures: int = 0  # error replies (node gone, ClientApp raised) and missing replies
    rejected: list[dict[str, Any]] = field(default_factory=list)  # replies with content, dropped
    skipped: bool = False  # fewer valid replies than fed.min_replies: nothing averaged
    pruned: bool = False
    train_loss: float | None = None


class PruningFedAvg(FedAvg):
    """FedAvg over the partitions of a fedprune experiment, with automatic pruning after it.

    Use :meth:`start` with ``evaluate_fn=strategy.evaluate_round`` (as
    :func:`fedprune.federated.flower_app.run_server` does): it evaluates the global model on
    the held-out test split every ``fed.eval_every`` rounds and writes each round's record.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: nn.Module,
        spec: ModelSpec,
        *,
        test_x: torch.Tensor,
        test_y: torch.Tensor,
        recorder: Recorder | None = None,
        max_client_size: int | None = None,
        query_timeout: float = 60.0,
        poll_interval: float = 0.5,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        m = cfg.fed.clients_per_round
        super().__init__(
            fraction_train=m / cfg.data.num_clients,
            fraction_evaluate=1.0,  # never used: configure_evaluate sends nothing
            min_train_nodes=1,
            min_evaluate_nodes=0,
            min_available_nodes=1,
            arrayrecord_key=ARRAYS_KEY,
            configrecord_key=CONFIG_KEY,
        )
        self.cfg = cfg
        self.model = model
        self.spec = spec
        self.arch_version = 0
        self.test_x, self.test_y = test_x, test_y
        self.recorder = recorder
        self.max_client_size = max_client_size
        self.query_timeout = query_timeout
        self.poll_interval = poll_interval
        self.on_round = on_round
        self.example = spec.example_input()
        self.sched_state = ScheduleState()
        self.sample_rng = np.random.default_rng([cfg.seed, 2])  # the loop's sampling stream
        self.partition_of: dict[int, int] = {}  # node id -> partition id
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.excluded: set[int] = set()  # nodes that failed a query or missed a deadline
        self.node_problems: dict[int, str] = {}  # node id -> why it cannot serve (for errors)
        self.simulation = False  # set by run_server: error messages name num-supernodes
        self.params_initial = n_params(model)
        self.macs_initial = count_macs(model, self.example)
        self.widths_initial = spec.widths_now()
        self.dense_payload = payload_bytes(model)
        self.bytes_total = 0
        self.bytes_total_dense = 0
        self.accuracy = float("nan")
        self.loss = float("nan")
        self.records: list[RoundRecord] = []
        self.stats = RoundStats()
        self.t0 = time.perf_counter()
        self.grid: Grid | None = None
        self.budget: BudgetServer | None = None
        self.budget_record: dict[str, Any] | None = None
        if cfg.budget.active:
            # the server holds no client data: every partition is asked, and one without a
            # validation split answers with 0 examples
            self.budget = BudgetServer(cfg, model, self.example, spec, self.params_initial,
                                       2 * self.macs_initial, cfg.data.num_clients,
                                       [True] * cfg.data.num_clients)

    # ------------------------------------------------------------------ Flower hooks

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Flower's round loop, on a grid that polls for replies every ``poll_interval`` s.

        (The SuperLink grid polls every 3 s, which is most of a round on a small model.)
        """
        return super().start(_PollingGrid(grid, self.poll_interval), initial_arrays,
                             num_rounds=num_rounds, timeout=timeout, train_config=train_config,
                             evaluate_config=evaluate_config, evaluate_fn=evaluate_fn)

    def summary(self) -> None:
        """Log the strategy's configuration (Flower calls this when the run starts)."""
        p = self.cfg.prune
        logger.info("PruningFedAvg: %d partitions, %d per round, pruning %s (k=%s, mode=%s, "
                    "rounds %d-%d every %d)", self.cfg.data.num_clients,
                    self.cfg.fed.clients_per_round, "on" if p.enabled else "off", p.k, p.mode,
                    p.start_round, p.max_prune_round, p.interval)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample partitions like the loop and send each its node the weights and the spec."""
        if server_round == 1:
            self.t0 = time.perf_counter()
        self.grid = grid
        self.refresh_nodes(grid)
        sampled = sample_clients(self.sample_rng, self.cfg.data.num_clients,
                                 self.cfg.fed.clients_per_round)
        self.stats = RoundStats(sampled=sampled)
        state = self.model.state_dict()
        record = ArrayRecord.from_torch_state_dict(state)
        spec_json = self.spec.to_json()
        experiment = self.cfg.to_json()
        messages = []
        for pid in sampled:
            node = self.node_of.get(pid)
            if node is None:
                logger.warning("round %d: partition %d has no live SuperNode; skipped",
                               server_round, pid)
                self.stats.failures += 1
                continue
            cfg_rec = ConfigRecord({
                "server-round": server_round,
                "arch-version": self.arch_version,
                "model-spec": spec_json,
                "experiment": experiment,
                "partition-id": pid,
            })
            content = RecordDict({ARRAYS_KEY: record, CONFIG_KEY: cfg_rec})
            msg = Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN,
                          group_id=str(server_round))
            messages.append(msg)
            self.stats.sent[pid] = node
            self.stats.messages[pid] = msg
        spec_bytes = len(spec_json.encode()) if self.cfg.prune.enabled else 0
        self.stats.bytes_down = len(messages) * (payload_bytes(state) + spec_bytes)
        logger.info("round %d: sampled partitions %s, sent to %d nodes (arch-version %d)",
                    server_round, sampled, len(messages), self.arch_version)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop bad replies, FedAvg the rest in partition order, then maybe prune.

        Mirrors the loop: replies are screened with :func:`~.aggregate.screen_replies`
        (keys, shapes, NaN/Inf, sample count, arch-version) after the message checks
        (records present, partition asked of that node, dtypes); fewer valid replies than
        ``fed.min_replies`` skip the round (no average, no pruning).
        """
        st = self.stats
        global_state = self.model.state_dict()
        dtypes = {k: _np_dtype(v) for k, v in global_state.items()}
        candidates: dict[int, _Reply] = {}
        # a reply names the message it answers (the grid set the ids when it pushed them);
        # the SuperLink's own error replies (node unavailable) come from node 0
        asked = {m.metadata.message_id: pid for pid, m in st.messages.items()}
        answered: set[int] = set()
        for msg in replies:
            pid = asked.get(msg.metadata.reply_to_message_id)
            if pid is None or pid in answered:
                logger.warning("round %d: ignored a reply to no message of this round (or a "
                               "second one) from node %d", server_round,
                               msg.metadata.src_node_id)
                continue
            answered.add(pid)
            node = st.sent[pid]
            if msg.has_error():
                st.failures += 1
                logger.warning("round %d: node %d (partition %d) replied with error: %s",
                               server_round, node, pid, msg.error.reason)
                continue
            st.bytes_up += _array_payload(msg.content.array_records.get(ARRAYS_KEY))
            reply, reason = self._unpack(msg, pid, node, dtypes)
            if reason is not None or reply is None:
                self._reject(server_round, node, pid, str(reason))
                continue
            candidates[pid] = reply
        for pid, node in st.sent.items():
            if pid not in answered:
                st.failures += 1
                self.excluded.add(node)
                self._forget(node)
                logger.warning("round %d: no reply from node %d (partition %d) in time; it gets "
                               "no more work while it stays listed", server_round, node, pid)

        order = [candidates[p] for p in sorted(candidates)]  # the loop's (sampled) order
        accepted, rejected = screen_replies(
            [(r.state, r.n) for r in order], global_state,
            versions=[r.version for r in order], arch_version=self.arch_version,
            max_samples=self.max_client_size,
        )
        for rej in rejected:
            self._reject(server_round, order[rej.index].node, order[rej.index].pid, rej.reason)
        bad = {rej.index for rej in rejected}
        kept = [r for i, r in enumerate(order) if i not in bad]
        st.skipped = len(accepted) < self.cfg.fed.min_replies
        if st.skipped:
            logger.warning("round %d skipped: %d valid replies, fed.min_replies = %d",
                           server_round, len(accepted), self.cfg.fed.min_replies)
            return None, None
        st.replies = len(accepted)
        self.model.load_state_dict(fedavg(accepted))
        n_total = sum(r.n for r in kept)
        st.train_loss = sum(r.loss * r.n for r in kept) / n_total
        self._maybe_prune(server_round)
        metrics = MetricRecord({"train-loss": st.train_loss, "replies": st.replies,
                                "arch-version": self.arch_version})
        return ArrayRecord.from_torch_state_dict(self.model.state_dict()), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: like the loop, the server evaluates on the test split."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> None:
        return None

    # ------------------------------------------------------------------ central evaluation

    def evaluate_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """``evaluate_fn`` for :meth:`start`: evaluate when due and write the round's record."""
        if server_round == 0:
            return None
        st = self.stats
        cfg = self.cfg
        evaluated = server_round % cfg.fed.eval_every == 0 or server_round == cfg.fed.rounds
        if evaluated:
            self.accuracy, self.loss = evaluate(self.model, self.test_x, self.test_y)
        self.bytes_total += st.bytes_down + st.bytes_up
        self.bytes_total_dense += 2 * cfg.fed.clients_per_round * self.dense_payload
        macs = count_macs(self.model, self.example)
        rec = RoundRecord(
            round=server_round,
            accuracy=self.accuracy if evaluated else None,
            loss=self.loss if evaluated else None,
            params=n_params(self.model), macs=macs, flops=2 * macs,
            widths=self.spec.widths_now(), bytes_down=st.bytes_down, bytes_up=st.bytes_up,
            bytes_cumulative=self.bytes_total, clients=st.replies, pruned=st.pruned,
            seconds=time.perf_counter() - self.t0,
            extra={"rejected": st.rejected, "skipped": st.skipped, "sampled": len(st.sampled),
                   "sent": len(st.sent), "failures": st.failures, "dropped": len(st.rejected),
                   "arch_version": self.arch_version,
                   **({"budget": self.budget_record} if self.budget is not None else {})},
        )
        self.records.append(rec)
        if self.recorder is not None:
            self.recorder.append(rec)
            self.save(self.recorder.run_dir)
        if self.on_round is not None:
            self.on_round(rec)
        out = MetricRecord({"params": rec.params, "replies": st.replies})
        if evaluated:
            out["accuracy"] = self.accuracy
            out["loss"] = self.loss
        return out

    def failure(self) -> str | None:
        """Why the run failed -- no round aggregated a valid reply -- or ``None``."""
        if any(r.clients > 0 for r in self.records):
            return None
        failures = sum(r.extra["failures"] for r in self.records)
        dropped = sum(r.extra["dropped"] for r in self.records)
        why = "; ".join(f"node {n}: {p}" for n, p in sorted(self.node_problems.items()))
        return (f"no round aggregated a valid reply ({len(self.records)} rounds, {failures} "
                f"failed or missing replies, {dropped} dropped)"
                + (f"; SuperNodes excluded: {why}" if why else ""))

    def run_summary(self) -> dict[str, Any]:
        """The loop's ``summary.json`` keys, plus ``engine``, ``status`` and per-round replies.

        ``status`` is ``"completed"``, or ``"failed"`` (with ``error``) when no round
        aggregated a valid reply.
        """
        failure = self.failure()
        return {
            **run_summary(
                self.cfg, self.model, self.example, self.spec, self.sched_state,
                accuracy=self.accuracy, loss=self.loss, params_initial=self.params_initial,
                macs_initial=self.macs_initial, widths_initial=self.widths_initial,
                bytes_total=self.bytes_total, bytes_total_dense=self.bytes_total_dense,
                seconds=time.perf_counter() - self.t0,
            ),
            "engine": "flower",
            "status": "failed" if failure else "completed",
            **({"error": failure} if failure else {}),
            "arch_version": self.arch_version,
            "replies_per_round": [r.clients for r in self.records],
            "failures_total": sum(r.extra["failures"] for r in self.records),
            "dropped_total": sum(r.extra["dropped"] for r in self.records),
            **(self.budget.summary_entries(self.model) if self.budget is not None else {}),
        }

    def save(self, run_dir: Path) -> None:
        """Write ``checkpoint.pt`` like the loop: spec JSON, weights and the loop state."""
        save_checkpoint(Path(run_dir) / CHECKPOINT_FILE, self.spec, self.model,
                        len(self.records), {
                            "schedule": dataclasses.asdict(self.sched_state),
                            "sample_rng": self.sample_rng.bit_generator.state,
                            "bytes_total": self.bytes_total,
                            "bytes_total_dense": self.bytes_total_dense,
                            "accuracy": self.accuracy, "loss": self.loss,
                            "seconds": time.perf_counter() - self.t0,
                        })

    # ------------------------------------------------------------------ nodes

    def refresh_nodes(self, grid: Grid, strict: bool = False) -> None:
        """Learn the partition id of every SuperNode not seen before (one ``query`` each).

        A node that cannot serve this experiment (no partition id, one out of range or taken,
        a ``num-partitions`` other than ``data.num_clients``) is excluded with a warning.
        With ``strict`` (before round 1) a ``num-partitions`` mismatch raises
        :class:`~fedprune.config.ConfigError` instead: it is a setting of the run or of the
        federation, and no round could use that node.
        """
        live = set(grid.get_node_ids())
        for node in list(self.partition_of):
            if node not in live:
                logger.warning("node %d (partition %d) left", node, self.partition_of[node])
                self._forget(node)
        self.excluded &= live  # a node that reappears after leaving is asked again
        new = sorted(live - set(self.partition_of) - self.excluded)
        if not new:
            return
        cfg_rec = ConfigRecord({"fedprune": QUERY_KIND, "experiment": self.cfg.to_json()})
        msgs = {n: Message(content=RecordDict({CONFIG_KEY: cfg_rec}), dst_node_id=n,
                           message_type=MessageType.QUERY) for n in new}
        replies = list(grid.send_and_receive(list(msgs.values()), timeout=self.query_timeout))
        asked = {m.metadata.message_id: n for n, m in msgs.items()}
        answered = set()
        for msg in replies:
            node = asked.get(msg.metadata.reply_to_message_id)
            if node is None or node in answered:
                continue
            answered.add(node)
            pid = parts = None
            if not msg.has_error():
                rec = msg.content.metric_records.get(METRICS_KEY)
                pid = rec.get("partition-id") if rec is not None else None
                parts = rec.get("num-partitions") if rec is not None else None
            n_clients = self.cfg.data.num_clients
            if isinstance(parts, int) and not isinstance(parts, bool) and parts != n_clients:
                problem = self._partitions_mismatch(node, parts)
                if strict:
                    raise ConfigError(problem)
                logger.warning("%s; excluded", problem)
                self.excluded.add(node)
                self.node_problems[node] = problem
                continue
            if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < n_clients:
                reason = msg.error.reason if msg.has_error() else f"partition id {pid!r}"
                logger.warning("node %d cannot serve this experiment (%s); excluded", node,
                               reason.strip())
                self.excluded.add(node)
                self.node_problems[node] = reason.strip()
                continue
            if pid in self.node_of:
                logger.warning("node %d also serves partition %d (node %d has it); excluded",
                               node, pid, self.node_of[pid])
                self.excluded.add(node)
                self.node_problems[node] = f"partition {pid} is served by node {self.node_of[pid]}"
                continue
            self.partition_of[node] = pid
            self.node_of[pid] = node
        for node in set(new) - answered:
            logger.warning("node %d did not answer the partition query; excluded", node)
            self.excluded.add(node)
            self.node_problems[node] = "no answer to the partition query"
        logger.info("partitions served: %s", dict(sorted(self.node_of.items())))

    def probe_nodes(self, grid: Grid) -> int:
        """Before round 1: query the SuperNodes not seen yet; the number serving a partition.

        Raises :class:`~fedprune.config.ConfigError` when a node's ``num-partitions`` differs
        from ``data.num_clients``.
        """
        self.refresh_nodes(_PollingGrid(grid, self.poll_interval), strict=True)
        return len(self.node_of)

    def _partitions_mismatch(self, node: int, parts: int) -> str:
        n = self.cfg.data.num_clients
        if self.simulation:
            return (f"the simulation has num-supernodes = {parts} (each virtual SuperNode's "
                    f"num-partitions) but the run config has data.num-clients = {n}: they "
                    f"must be equal; run with --federation-config \"num-supernodes={n}\" or "
                    f"--run-config \"data.num-clients={parts}\"")
        return (f"SuperNode {node} has num-partitions = {parts} in its node config but the run "
                f"config has data.num-clients = {n}: they must be equal; start the SuperNodes "
                f"with --node-config 'partition-id=I num-partitions={n}' or run with "
                f"--run-config \"data.num-clients={parts}\"")

    def _forget(self, node: int) -> None:
        pid = self.partition_of.pop(node, None)
        if pid is not None and self.node_of.get(pid) == node:
            del self.node_of[pid]

    # ------------------------------------------------------------------ helpers

    def _unpack(
        self, msg: Message, pid: int, node: int, dtypes: dict[str, str]
    ) -> tuple[_Reply | None, str | None]:
        """The reply's content as tensors, or why it cannot be used (message-level checks)."""
        content = msg.content
        arrays = content.array_records.get(ARRAYS_KEY)
        metrics = content.metric_records.get(METRICS_KEY)
        if arrays is None or metrics is None:
            return None, f"no '{ARRAYS_KEY}' arrays or '{METRICS_KEY}' metrics record"
        if msg.metadata.src_node_id != node or metrics.get("partition-id") != pid:
            return None, (f"answer from node {msg.metadata.src_node_id} for partition "
                          f"{metrics.get('partition-id')!r}; asked node {node} for {pid}")
        n, version = metrics.get("num-examples"), metrics.get("arch-version")
        loss = metrics.get("train-loss", float("nan"))
        reply = _Reply(pid, node, {}, n, version, float(loss))  # type: ignore[arg-type]
        for key, arr in arrays.items():
            if key in dtypes and arr.dtype != dtypes[key]:
                return None, f"{key} is {arr.dtype}, the current architecture has {dtypes[key]}"
        try:
            reply.state.update({k: torch.from_numpy(np.array(a.numpy()))
                                for k, a in arrays.items()})
        except Exception as exc:  # noqa: BLE001 - a malformed array from a client
            return None, f"arrays cannot be read: {exc}"
        return reply, None

    def _reject(self, server_round: int, node: int, pid: int | None, reason: str) -> None:
        st = self.stats
        index = st.sampled.index(pid) if pid in st.sampled else -1
        st.rejected.append({"index": index, "reason": reason, "partition": pid, "node": node})
        logger.warning("round %d: dropped the reply of node %d (partition %s): %s",
                       server_round, node, pid, reason)

    def _validate(self, model: nn.Module, spec: ModelSpec, pids: Sequence[int]
                  ) -> tuple[float, int]:
        """Federated validation: the partitions' nodes evaluate ``model`` on their own
        validation splits (a ``query`` message each); the accuracy weighted by their counts."""
        if self.grid is None:
            raise RuntimeError("no grid yet: validation happens after a training round")
        arrays = ArrayRecord.from_torch_state_dict(model.state_dict())
        cfg_rec = ConfigRecord({"fedprune": VALIDATE_KIND, "experiment": self.cfg.to_json(),
                                "model-spec": spec.to_json()})
        msgs = {}
        for pid in pids:
            node = self.node_of.get(pid)
            if node is not None:
                msgs[node] = Message(content=RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: cfg_rec}),
                                     dst_node_id=node, message_type=MessageType.QUERY)
        replies = list(self.grid.send_and_receive(list(msgs.values()),
                                                  timeout=self.query_timeout))
        asked = {m.metadata.message_id: n for n, m in msgs.items()}
        correct, total = 0.0, 0
        for msg in replies:
            node = asked.pop(msg.metadata.reply_to_message_id, None)
            if node is None or msg.has_error():
                continue
            rec = msg.content.metric_records.get(METRICS_KEY)
            acc = rec.get("val-accuracy") if rec is not None else None
            n = rec.get("val-examples") if rec is not None else None
            if (isinstance(n, int) and not isinstance(n, bool) and n > 0
                    and isinstance(acc, float) and 0.0 <= acc <= 1.0):
                correct += acc * n
                total += n
        if total == 0:
            logger.warning("budget guard: no validation replies; the candidate cannot be judged")
            return float("nan"), 0
        return correct / total, total

    def _maybe_prune(self, server_round: int) -> None:
        if self.budget is not None:
            step = self.budget.after_aggregate(server_round, self.model, self.spec,
                                               self._validate,
                                               last_round=server_round == self.cfg.fed.rounds)
            self.budget_record = step.record
            if step.changed:
                self.model, self.spec = step.model, step.spec
                self.stats.pruned = step.pruned
                self.arch_version += 1
                logger.info("round %d: arch-version %d", server_round, self.arch_version)
            return
        step = maybe_prune(self.cfg, self.sched_state, self.model, self.example, self.spec,
                           server_round)
        self.spec, self.sched_state = step.spec, step.state
        if step.pruned:
            self.stats.pruned = True
            self.arch_version += 1
            logger.info("round %d: arch-version %d", server_round, self.arch_version)


class _PollingGrid(Grid):
    """Delegates to ``inner``; ``send_and_receive`` polls every ``interval`` seconds."""

    def __init__(self, inner: Grid, interval: float) -> None:
        self.inner = inner
        self.interval = interval

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        pending = {m for m in self.inner.push_messages(list(messages)) if m}
        end = None if timeout is None else time.monotonic() + timeout
        out: list[Message] = []
        while pending:
            got = list(self.inner.pull_messages(pending))
            out.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (end is not None and time.monotonic() >= end):
                break
            time.sleep(self.interval)
        return out


@dataclass
class _Reply:
    pid: int
    node: int
    state: dict[str, torch.Tensor]
    n: int
    version: int
    loss: float


def _array_payload(arrays: ArrayRecord | None) -> int:
    """Bytes of the float arrays of a reply, counted like :func:`~fedprune.metrics.payload_bytes`."""
    if arrays is None:
        return 0
    return int(sum(4 * int(np.prod(a.shape)) for a in arrays.values()
                   if np.dtype(a.dtype).kind == "f"))


def _np_dtype(t: torch.Tensor) -> str:
    """The numpy dtype string an ArrayRecord stores for tensor ``t``."""
    return str(torch.empty(0, dtype=t.dtype).numpy().dtype)
