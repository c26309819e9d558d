"""fedprune's strategy for Flower's message API (flwr 1.41): Flower messages <-> the server.

:class:`PruningFedAvg` subclasses :class:`flwr.serverapp.strategy.FedAvg` and hands every
decision -- sampling, screening and the bounded-influence average, the ``fed.min_replies``
skip, pruning or budget mode, evaluation, records, checkpoints -- to
:class:`~fedprune.federated.server.PruningServer`, the server of the in-process loop too.
It adds the messaging: a train message to each sampled partition's SuperNode
(:mod:`.messages`, :class:`~.nodes.NodeDirectory`); error and missing replies count as
failures, a reply for a partition not asked of that node or with other dtypes is dropped,
and the server screens and clips the rest; every drop is logged and listed in the round's
record (a clipped reply in ``clipped``, by partition), with ``sampled``, ``sent``,
``failures``, ``dropped`` and ``arch_version``.  Budget mode's guard validates by ``query`` messages
(:meth:`~.nodes.NodeDirectory.validate`).

A node that does not answer within the round timeout gets no more work while the SuperLink
lists it (Flower's accept-failures behaviour).  A resumed run's Flower rounds 1, 2, ... are
the server's rounds after the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from ..federated.server import PruningServer
from .grid import PollingGrid
from .messages import (
    ARRAYS_KEY,
    CONFIG_KEY,
    Reply,
    array_payload,
    pack,
    train_message,
    trial_key,
    unpack_train_reply,
)
from .nodes import NodeDirectory

logger = logging.getLogger("flwr.fedprune")  # a child of Flower's logger: shows in its logs


@dataclass
class RoundStats:
    """What happened to the messages of one round (reset by ``configure_train``)."""

    sampled: list[int] = field(default_factory=list)
    sent: dict[int, int] = field(default_factory=dict)  # partition id -> node id
    messages: dict[int, Message] = field(default_factory=dict)  # partition id -> train message
    bytes_down: int = 0
    bytes_up: int = 0
    failures: int = 0  # error replies (node gone, ClientApp raised) and missing replies
    rejected: list[dict[str, Any]] = field(default_factory=list)  # replies with content, dropped
    trial_rejected: list[dict[str, Any]] = field(default_factory=list)  # trial copies left out


class PruningFedAvg(FedAvg):
    """FedAvg over the partitions of a fedprune experiment, with automatic pruning after it.

    :meth:`run` runs the server's remaining rounds (all of them, or those after the
    checkpoint of a resumed server).
    """

    def __init__(self, server: PruningServer, nodes: NodeDirectory, *,
                 query_timeout: float = 60.0, poll_interval: float = 0.5) -> None:
        cfg = server.cfg
        super().__init__(
            fraction_train=cfg.fed.clients_per_round / cfg.data.num_clients,
            fraction_evaluate=1.0,  # never used: configure_evaluate sends nothing
            min_train_nodes=1, min_evaluate_nodes=0, min_available_nodes=1,
            arrayrecord_key=ARRAYS_KEY, configrecord_key=CONFIG_KEY,
        )
        self.server, self.nodes, self.cfg = server, nodes, cfg
        self.query_timeout = query_timeout
        self.poll_interval = poll_interval
        self.stats = RoundStats()
        self.offset = 0  # rounds done before this start (a resumed run)
        self.grid: Grid | None = None

    # ------------------------------------------------------------------ Flower hooks

    def run(self, grid: Grid, timeout: float) -> Result:
        """Flower's round loop over the server's remaining rounds."""
        arrays = ArrayRecord.from_torch_state_dict(self.server.model.state_dict())
        return self.start(grid, arrays, num_rounds=self.cfg.fed.rounds - self.server.rounds_done,
                          timeout=timeout, evaluate_fn=self.evaluate_round)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Flower's round loop, on a grid that polls for replies every ``poll_interval`` s."""
        self.offset = self.server.rounds_done
        return super().start(PollingGrid(grid, self.poll_interval), initial_arrays,
                             num_rounds=num_rounds, timeout=timeout, train_config=train_config,
                             evaluate_config=evaluate_config, evaluate_fn=evaluate_fn)

    def summary(self) -> None:
        """Log the strategy's configuration (Flower calls this when the run starts)."""
        p = self.cfg.prune
        logger.info("PruningFedAvg: %d partitions, %d per round, pruning %s (k=%s, mode=%s, "
                    "rounds %d-%d every %d)", self.cfg.data.num_clients,
                    self.cfg.fed.clients_per_round, "on" if p.enabled else "off", p.k, p.mode,
                    p.start_round, p.max_prune_round, p.interval)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample partitions like the loop and send each its node the weights and the spec."""
        rnd = self.offset + server_round
        self.grid = grid
        self.nodes.refresh(grid)
        srv = self.server
        self.stats = st = RoundStats(sampled=srv.sample(rnd))
        wire = srv.payload_dtype
        record = pack(srv.model.state_dict(), wire)
        spec_json, experiment = srv.spec.to_json(), self.cfg.to_json()
        trial_msg = [(pack(m.state_dict(), wire), sp.to_json()) for m, sp in srv.trial()]
        for pid in st.sampled:
            node = self.nodes.node_of.get(pid)
            if node is None:
                logger.warning("round %d: partition %d has no live SuperNode; skipped", rnd, pid)
                st.failures += 1
                continue
            st.messages[pid] = train_message(record, spec_json=spec_json, experiment=experiment,
                                             rnd=rnd, arch_version=srv.arch_version, pid=pid,
                                             node=node, trial=trial_msg)
            st.sent[pid] = node
        st.bytes_down = srv.bytes_down(len(st.messages))
        logger.info("round %d: sampled partitions %s, sent to %d nodes (arch-version %d)",
                    rnd, st.sampled, len(st.messages), srv.arch_version)
        return list(st.messages.values())

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop bad replies, let the server FedAvg the rest in partition order and prune."""
        rnd = self.offset + server_round
        st, srv = self.stats, self.server
        like = srv.model.state_dict()
        trial_like = [m.state_dict() for m, _ in srv.trial()]
        candidates: dict[int, Reply] = {}
        # a reply names the message it answers (the grid set the ids when it pushed them);
        # the SuperLink's own error replies (node unavailable) come from node 0
        asked = {m.metadata.message_id: pid for pid, m in st.messages.items()}
        answered: set[int] = set()
        for msg in replies:
            pid = asked.get(msg.metadata.reply_to_message_id)
            if pid is None or pid in answered:
                logger.warning("round %d: ignored a reply to no message of this round (or a "
                               "second one) from node %d", rnd, msg.metadata.src_node_id)
                continue
            answered.add(pid)
            node = st.sent[pid]
            if msg.has_error():
                st.failures += 1
                logger.warning("round %d: node %d (partition %d) replied with error: %s",
                               rnd, node, pid, msg.error.reason)
                continue
            st.bytes_up += array_payload(msg.content.array_records.get(ARRAYS_KEY))
            st.bytes_up += sum(array_payload(msg.content.array_records.get(trial_key(i)))
                               for i in range(len(trial_like)))
            reply, reason = unpack_train_reply(msg, pid, node, like, trial_like,
                                               srv.payload_dtype)
            if reason is not None or reply is None:
                self._reject(rnd, node, pid, str(reason))
                continue
            candidates[pid] = reply
        for pid, node in st.sent.items():
            if pid not in answered:
                st.failures += 1
                self.nodes.missed_deadline(node)
                logger.warning("round %d: no reply from node %d (partition %d) in time; it gets "
                               "no more work while it stays listed", rnd, node, pid)
        order = [candidates[p] for p in sorted(candidates)]  # the loop's (sampled) order
        trial_replies = [[r.trial_states[i] if r.trial_states else None for r in order]
                         for i in range(len(trial_like))]
        outcome = srv.aggregate(rnd, [(r.state, r.n) for r in order],
                                versions=[r.version for r in order], trial_replies=trial_replies,
                                clients=[r.pid for r in order])
        for rej in outcome.rejections:
            self._reject(rnd, order[rej.index].node, order[rej.index].pid, rej.reason)
        for rej in outcome.trial_rejections:
            self._reject(rnd, order[rej.index].node, order[rej.index].pid, rej.reason,
                         trial=True)
        # the pruning step also after a skipped round (a candidate due at the last round)
        srv.after_aggregate(rnd, lambda model, spec, pids: self.nodes.validate(
            self.grid, model, spec, pids))  # type: ignore[arg-type]
        if outcome.skipped:
            return None, None
        bad = {rej.index for rej in outcome.rejections}
        kept = [r for i, r in enumerate(order) if i not in bad]
        train_loss = sum(r.loss * r.n for r in kept) / sum(r.n for r in kept)
        metrics = MetricRecord({"train-loss": train_loss, "replies": outcome.clients,
                                "arch-version": srv.arch_version})
        return ArrayRecord.from_torch_state_dict(srv.model.state_dict()), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """No federated evaluation: like the loop, the server evaluates on the test split."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> None:
        return None

    def evaluate_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """``evaluate_fn`` for :meth:`start`: the server finishes the round (evaluation when
        due, record, checkpoint)."""
        if server_round == 0:
            return None
        st, srv = self.stats, self.server
        rec = srv.finish_round(
            self.offset + server_round, bytes_down=st.bytes_down, bytes_up=st.bytes_up,
            rejected=st.rejected,
            extra={"sampled": len(st.sampled), "sent": len(st.sent), "failures": st.failures,
                   "dropped": len(st.rejected), "arch_version": srv.arch_version,
                   **({"trial_rejected": st.trial_rejected} if st.trial_rejected else {})})
        out = MetricRecord({"params": rec.params, "replies": rec.clients})
        if rec.accuracy is not None:
            out["accuracy"], out["loss"] = rec.accuracy, rec.loss
        return out

    # ------------------------------------------------------------------ the run's outcome

    def failure(self) -> str | None:
        """Why the run failed -- no round aggregated a valid reply -- or ``None``."""
        records = self.server.records
        if any(r.clients > 0 for r in records):
            return None
        failures = sum(r.extra["failures"] for r in records)
        dropped = sum(r.extra["dropped"] for r in records)
        why = "; ".join(f"node {n}: {p}" for n, p in sorted(self.nodes.problems.items()))
        return (f"no round aggregated a valid reply ({len(records)} rounds, {failures} "
                f"failed or missing replies, {dropped} dropped)"
                + (f"; SuperNodes excluded: {why}" if why else ""))

    def run_summary(self) -> dict[str, Any]:
        """The loop's ``summary.json`` keys, plus ``engine``, ``status`` and per-round replies.

        ``status`` is ``"completed"``, or ``"failed"`` (with ``error``) when no round
        aggregated a valid reply.
        """
        failure = self.failure()
        records = self.server.records
        return {
            **self.server.summary(),
            "engine": "flower",
            "status": "failed" if failure else "completed",
            **({"error": failure} if failure else {}),
            "arch_version": self.server.arch_version,
            "replies_per_round": [r.clients for r in records],
            "failures_total": sum(r.extra["failures"] for r in records),
            "dropped_total": sum(r.extra["dropped"] for r in records),
        }

    # ------------------------------------------------------------------ helpers

    def _reject(self, rnd: int, node: int, pid: int | None, reason: str,
                trial: bool = False) -> None:
        st = self.stats
        index = st.sampled.index(pid) if pid in st.sampled else -1
        entry = {"index": index, "reason": reason, "partition": pid, "node": node}
        if trial:  # a trial model's copy: the reply itself counted
            st.trial_rejected.append(entry)
            logger.warning("round %d: left out node %d's copy (partition %s): %s", rnd, node,
                           pid, reason)
            return
        st.rejected.append(entry)
        logger.warning("round %d: dropped the reply of node %d (partition %s): %s",
                       rnd, node, pid, reason)
