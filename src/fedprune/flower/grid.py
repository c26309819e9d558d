"""Grids for the ServerApp: one that polls for replies at a chosen interval, and one in process.

* :class:`PollingGrid` wraps Flower's grid; its ``send_and_receive`` polls every ``interval``
  seconds (the SuperLink grid polls every 3 s, which is most of a round on a small model).
* :class:`LocalGrid` is an in-process grid whose nodes call the ClientApp directly: the
  ServerApp's logic without any Flower process (tests, reference runs, debugging).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["LocalGrid", "PollingGrid"]


class PollingGrid(Grid):
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


class LocalGrid(Grid):
    """An in-process Grid: each node is the ClientApp called directly, one after the other.

    ``node_configs[i]`` is node ``i``'s node config (its ``partition-id``).  ``dead`` holds
    node ids that never answer; ``tamper(message, reply)`` may replace a reply (tests).
    """

    def __init__(self, client_app: Any, node_configs: Iterable[Mapping[str, Any]],
                 tamper: Callable[[Message, Message], Message] | None = None) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
            if getattr(TaskIdentity, attr) is None:
                setattr(TaskIdentity, attr, value)
        self.client_app = client_app
        self.contexts = {
            1000 + i: Context(run_id=1, node_id=1000 + i, node_config=dict(c),
                              state=RecordDict(), run_config={})
            for i, c in enumerate(node_configs)
        }
        self.dead: set[int] = set()
        self.tamper = tamper
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used in process
        self._run = run

    @property
    def run(self) -> Any:  # pragma: no cover
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now; its reply waits for :meth:`pull_messages`."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.sent.append(msg)
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            if node in self.dead or node not in self.contexts:
                continue
            try:
                reply = self.client_app(msg, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - Flower turns it into an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=msg)
            if self.tamper is not None:
                reply = self.tamper(msg, reply)
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
