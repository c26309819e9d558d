"""Which SuperNode serves which partition, learnt once per node with a ``query`` message.

A node that cannot serve the experiment (no partition id, one out of range or already taken,
a ``num-partitions`` other than ``data.num_clients``), fails the query, or misses a round's
deadline is excluded while the SuperLink lists it; a node that leaves is forgotten, and asked
again if it comes back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.serverapp import Grid

from ..config import ConfigError, ExperimentConfig
from .grid import PollingGrid
from .messages import partition_answer, partition_query

logger = logging.getLogger("flwr.fedprune")


class NodeDirectory:
    """Partition id of every node that can serve the experiment, and why the others cannot."""

    def __init__(self, cfg: ExperimentConfig, query_timeout: float = 60.0,
                 poll_interval: float = 0.5, simulation: bool = False) -> None:
        self.cfg = cfg
        self.query_timeout = query_timeout
        self.poll_interval = poll_interval
        self.simulation = simulation  # error messages name num-supernodes
        self.partition_of: dict[int, int] = {}  # node id -> partition id
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.excluded: set[int] = set()  # nodes that failed a query or missed a deadline
        self.problems: dict[int, str] = {}  # node id -> why it cannot serve (for errors)

    def refresh(self, grid: Grid, strict: bool = False) -> None:
        """Learn the partition id of every SuperNode not seen before (one ``query`` each).

        With ``strict`` (before round 1) a ``num-partitions`` mismatch raises
        :class:`~fedprune.config.ConfigError`: it is a setting of the run or of the
        federation, and no round could use that node.
        """
        live = set(grid.get_node_ids())
        for node in list(self.partition_of):
            if node not in live:
                logger.warning("node %d (partition %d) left", node, self.partition_of[node])
                self.forget(node)
        self.excluded &= live  # a node that reappears after leaving is asked again
        new = sorted(live - set(self.partition_of) - self.excluded)
        if not new:
            return
        experiment = self.cfg.to_json()
        msgs = {n: partition_query(experiment, n) for n in new}
        replies = list(grid.send_and_receive(list(msgs.values()), timeout=self.query_timeout))
        asked = {m.metadata.message_id: n for n, m in msgs.items()}
        answered = set()
        n_clients = self.cfg.data.num_clients
        for msg in replies:
            node = asked.get(msg.metadata.reply_to_message_id)
            if node is None or node in answered:
                continue
            answered.add(node)
            pid, parts = partition_answer(msg)
            if isinstance(parts, int) and not isinstance(parts, bool) and parts != n_clients:
                problem = self.mismatch(node, parts)
                if strict:
                    raise ConfigError(problem)
                logger.warning("%s; excluded", problem)
                self._exclude(node, problem)
                continue
            if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < n_clients:
                reason = msg.error.reason if msg.has_error() else f"partition id {pid!r}"
                logger.warning("node %d cannot serve this experiment (%s); excluded", node,
                               reason.strip())
                self._exclude(node, reason.strip())
                continue
            if pid in self.node_of:
                logger.warning("node %d also serves partition %d (node %d has it); excluded",
                               node, pid, self.node_of[pid])
                self._exclude(node, f"partition {pid} is served by node {self.node_of[pid]}")
                continue
            self.partition_of[node] = pid
            self.node_of[pid] = node
        for node in set(new) - answered:
            logger.warning("node %d did not answer the partition query; excluded", node)
            self._exclude(node, "no answer to the partition query")
        logger.info("partitions served: %s", dict(sorted(self.node_of.items())))

    def probe(self, grid: Grid) -> int:
        """Before round 1: query the SuperNodes not seen yet; the number serving a partition.

        Raises :class:`~fedprune.config.ConfigError` when a node's ``num-partitions`` differs
        from ``data.num_clients``.
        """
        self.refresh(PollingGrid(grid, self.poll_interval), strict=True)
        return len(self.node_of)

    def missed_deadline(self, node: int) -> None:
        """``node`` did not reply in time: no more work while the SuperLink lists it."""
        self.excluded.add(node)
        self.forget(node)

    def forget(self, node: int) -> None:
        pid = self.partition_of.pop(node, None)
        if pid is not None and self.node_of.get(pid) == node:
            del self.node_of[pid]

    def _exclude(self, node: int, problem: str) -> None:
        self.excluded.add(node)
        self.problems[node] = problem

    def mismatch(self, node: int, parts: int) -> str:
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


def wait_for_nodes(grid: Grid, n: int, timeout: float, poll: float = 0.5,
                   probe: Callable[[], int] | None = None,
                   problems: dict[int, str] | None = None) -> int:
    """Wait until ``n`` SuperNodes are there, at most ``timeout`` seconds.

    Without ``probe`` a node counts once connected; with it, ``probe()`` (called every
    ``poll`` seconds) returns how many nodes can serve the experiment.  Returns that count.
    Past the timeout the run goes on with the nodes there are (partitions without a node are
    skipped each round); with none it raises ``RuntimeError`` (listing ``problems``: node id
    -> why it cannot serve).
    """
    deadline = time.monotonic() + timeout
    while True:
        connected = len(list(grid.get_node_ids()))
        have = probe() if probe is not None else connected
        if have >= n:
            return have
        if time.monotonic() >= deadline:
            if have == 0:
                if connected == 0:
                    raise RuntimeError(f"no SuperNode connected within {timeout:.0f} s "
                                       "(node-wait-timeout)")
                why = "; ".join(f"node {k}: {v}" for k, v in sorted((problems or {}).items()))
                raise RuntimeError(f"{connected} SuperNode(s) connected within {timeout:.0f} s "
                                   "but none can serve this experiment"
                                   + (f": {why}" if why else ""))
            logger.warning("only %d of %d SuperNodes serve a partition after %.0f s "
                           "(node-wait-timeout); going on", have, n, timeout)
            return have
        time.sleep(poll)
