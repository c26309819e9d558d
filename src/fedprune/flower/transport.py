"""The Flower engine's transport: the server's rounds as Flower messages (flwr 1.41).

:class:`FlowerTransport` is the :class:`~fedprune.federated.transport.Transport` of the
ServerApp.  :meth:`~fedprune.federated.server.PruningServer.run_round` decides every round
-- sampling, screening and the bounded-influence average, the ``fed.min_replies`` skip,
pruning, evaluation, records, checkpoints -- and hands the transport a plan; the transport
sends a train message to each sampled partition's SuperNode (:mod:`.messages`,
:class:`~.nodes.NodeDirectory`) and returns the replies it can read.  Error and missing
replies count as failures; a reply for a partition not asked of that node, or with other
dtypes, is dropped with its reason (the round's record lists it, with ``sampled``, ``sent``,
``failures``, ``dropped`` and ``arch_version``).  Every message is measured by the one
meter (:mod:`fedprune.federated.meter`) where it is packed or received.  Federated
validation sends ``query`` messages.

A node that does not answer within the round timeout gets no more work while the SuperLink
lists it (Flower's accept-failures behaviour).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord, Message, MessageType
from flwr.serverapp import Grid
from torch import nn

from ..federated.meter import message_bytes, query_content, train_content, wire_models
from ..federated.server import PruningServer
from ..federated.transport import Delivery, Queried, TrainPlan, TrainReply
from ..models import ModelSpec
from ..pruners import Keep, pool_validation
from .grid import PollingGrid
from .messages import content_of, to_message, unpack_train_reply, validation_answer
from .nodes import NodeDirectory

logger = logging.getLogger("flwr.fedprune")  # a child of Flower's logger: shows in its logs

__all__ = ["FlowerTransport", "flower_summary"]


class FlowerTransport:
    """Train and validation messages to the SuperNodes of ``grid``, polled for replies
    every ``poll_interval`` seconds and waited for at most ``timeout`` seconds."""

    reports_delivery = True

    def __init__(self, grid: Grid, nodes: NodeDirectory, *, timeout: float,
                 poll_interval: float = 0.5) -> None:
        self.grid = PollingGrid(grid, poll_interval)
        self.nodes = nodes
        self.timeout = timeout

    def train(self, plan: TrainPlan) -> Delivery:
        """A train message to each planned partition's node; the readable replies."""
        self.nodes.refresh(self.grid)
        models = wire_models(plan.models, plan.payload_dtype)
        records: dict[int, ArrayRecord] = {}  # one record per model, shared by the messages
        messages: dict[int, Message] = {}  # partition id -> train message
        sent: dict[int, int] = {}  # partition id -> node id
        down = failures = 0
        for i, pid in enumerate(plan.clients):
            node = self.nodes.node_of.get(pid)
            if node is None:
                logger.warning("round %d: partition %d has no live SuperNode; skipped",
                               plan.rnd, pid)
                failures += 1
                continue
            mine = models if plan.assign is None else [models[plan.assign[i]]]
            content = train_content(mine, experiment=plan.experiment, rnd=plan.rnd,
                                    arch_version=plan.arch_version, client=pid,
                                    narrower=plan.narrower_of(i))
            down += message_bytes(content)
            messages[pid] = to_message(content, node, MessageType.TRAIN, str(plan.rnd), records)
            sent[pid] = node
        logger.info("round %d: sampled partitions %s, sent to %d nodes (arch-version %d)",
                    plan.rnd, list(plan.clients), len(messages), plan.arch_version)
        answers = self.grid.send_and_receive(list(messages.values()), timeout=self.timeout)
        states = [m.state_dict() for m, _ in plan.models]
        like = {pid: states if plan.assign is None else [states[plan.assign[i]]]
                for i, pid in enumerate(plan.clients)}
        replies, dropped, up, missing = self._read(plan.rnd, answers, messages, sent, like,
                                                   plan.payload_dtype)
        return Delivery(replies, list(sent), down, up, dropped, failures + missing,
                        versions=True)

    def _read(self, rnd: int, answers: Any, messages: dict[int, Message],
              sent: dict[int, int], like: dict[int, list[dict]], payload_dtype: str
              ) -> tuple[list[TrainReply], list[dict[str, Any]], int, int]:
        """The readable replies (by partition), the dropped ones, the bytes received and the
        failures (error replies, and messages not answered in time)."""
        # a reply names the message it answers (the grid set the ids when it pushed them);
        # the SuperLink's own error replies (node unavailable) come from node 0
        asked = {m.metadata.message_id: pid for pid, m in messages.items()}
        answered: set[int] = set()
        replies: dict[int, TrainReply] = {}
        dropped: list[dict[str, Any]] = []
        up = failures = 0
        for msg in answers:
            pid = asked.get(msg.metadata.reply_to_message_id)
            if pid is None or pid in answered:
                logger.warning("round %d: ignored a reply to no message of this round (or a "
                               "second one) from node %d", rnd, msg.metadata.src_node_id)
                continue
            answered.add(pid)
            node = sent[pid]
            if msg.has_error():
                failures += 1
                logger.warning("round %d: node %d (partition %d) replied with error: %s",
                               rnd, node, pid, msg.error.reason)
                continue
            up += message_bytes(content_of(msg))
            reply, reason = unpack_train_reply(msg, pid, node, like[pid][0], like[pid][1:],
                                               payload_dtype)
            if reason is not None or reply is None:
                logger.warning("round %d: dropped the reply of node %d (partition %s): %s",
                               rnd, node, pid, reason)
                dropped.append({"client": pid, "node": node, "reason": str(reason)})
                continue
            trial = reply.trial_states or [None] * (len(like[pid]) - 1)
            replies[pid] = TrainReply(pid, (reply.state, *trial), reply.n, reply.version,
                                      reply.loss, node)
        for pid, node in sent.items():
            if pid not in answered:
                failures += 1
                self.nodes.missed_deadline(node)
                logger.warning("round %d: no reply from node %d (partition %d) in time; it gets "
                               "no more work while it stays listed", rnd, node, pid)
        return [replies[p] for p in sorted(replies)], dropped, up, failures

    def validate(self, model: nn.Module, spec: ModelSpec, clients: Sequence[int],
                 experiment: str, payload_dtype: str, variants: Sequence[Keep] = (),
                 calibrate: int = 0) -> Queried:
        """The partitions' nodes evaluate ``model`` (and its sub-models ``variants``, which
        they cut themselves) on their own validation splits (a ``query`` message each);
        their answers pooled."""
        content = query_content(*wire_models([(model, spec)], payload_dtype),
                                experiment=experiment, variants=variants,
                                calibrate=calibrate)
        records: dict[int, ArrayRecord] = {}
        msgs = {pid: to_message(content, node, MessageType.QUERY, None, records)
                for pid in clients if (node := self.nodes.node_of.get(pid)) is not None}
        answers = self.grid.send_and_receive(list(msgs.values()), timeout=self.nodes.query_timeout)
        asked = {m.metadata.message_id: pid for pid, m in msgs.items()}
        got, up = [], 0
        for msg in answers:
            pid = asked.pop(msg.metadata.reply_to_message_id, None)
            if pid is None:
                continue
            if not msg.has_error():
                up += message_bytes(content_of(msg))
            answer = validation_answer(msg, len(variants))
            if answer is not None:
                (acc, n, loss), subs = answer
                got.append((pid, acc, loss, n, subs))
        if not got:
            logger.warning("validation: no replies; the candidate cannot be judged")
        # pooled in partition order, whatever order the answers came in
        got.sort(key=lambda a: a[0])
        return Queried(pool_validation([a[:4] for a in got],
                                       [a[4] for a in got] if variants else None),
                       list(msgs), len(msgs) * message_bytes(content), up)


def flower_summary(server: PruningServer, nodes: NodeDirectory) -> dict[str, Any]:
    """The server's ``summary.json`` keys, plus ``engine``, ``status`` and per-round replies.

    ``status`` is ``"completed"``, or ``"failed"`` (with ``error``) when no round aggregated
    a valid reply.
    """
    records = server.records
    failures = sum(r.extra["failures"] for r in records)
    dropped = sum(r.extra["dropped"] for r in records)
    failure = None
    if not any(r.clients > 0 for r in records):
        why = "; ".join(f"node {n}: {p}" for n, p in sorted(nodes.problems.items()))
        failure = (f"no round aggregated a valid reply ({len(records)} rounds, {failures} "
                   f"failed or missing replies, {dropped} dropped)"
                   + (f"; SuperNodes excluded: {why}" if why else ""))
    return {
        **server.summary(),
        "engine": "flower",
        "status": "failed" if failure else "completed",
        **({"error": failure} if failure else {}),
        "arch_version": server.arch_version,
        "replies_per_round": [r.clients for r in records],
        "failures_total": failures,
        "dropped_total": dropped,
    }
