"""How the server reaches its clients: the transport interface every engine implements.

The server (:meth:`~.server.PruningServer.run_round`) decides a round and hands the
transport a :class:`TrainPlan`: which clients, which models (the global one first, then the
trial models that the clients train beside it with the same batches), the round and the
architecture version.  The transport delivers it -- the in-process loop trains the clients
itself (:class:`~.loop.LocalTransport`), the Flower app sends messages to SuperNodes
(:class:`~fedprune.flower.transport.FlowerTransport`) -- and returns a :class:`Delivery`:
the replies it could read, in client order, and what the messages weighed, measured by
:mod:`.meter` where they were encoded.  Federated validation goes the same way
(:meth:`Transport.validate`).  Everything else -- screening, averaging, pruning,
evaluation, records, checkpoints -- is the server's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..models import ModelSpec
from ..pruners import Keep, Validation

StateDict = dict[str, torch.Tensor]

__all__ = ["Delivery", "Queried", "TrainPlan", "TrainReply", "Transport"]


@dataclass(frozen=True)
class TrainPlan:
    """One round's training, as the server asks for it."""

    rnd: int
    clients: tuple[int, ...]  # the sampled clients, sorted
    models: tuple[tuple[nn.Module, ModelSpec], ...]  # the global model, then the trial models
    arch_version: int  # the global model's architecture version
    experiment: str  # the resolved experiment config (JSON) that travels with every message
    payload_dtype: str  # what the weights travel as (fed.payload_dtype)
    # None: every client trains every model (the global one, then the trial models, with
    # the same batches); else, per client (in client order), the index of the one model it
    # trains: the models are nested widths of the global model (the automatic method's
    # search), and a reply holds that model's trained copy alone
    assign: tuple[int, ...] | None = None
    # with ``assign``, under ordered dropout per batch: per model, the narrower widths
    # inside it (as the unpruned model's kept channels) that its clients' batches drop to;
    # None or empty: each client trains its whole model on every batch
    narrower: tuple[tuple[Keep, ...], ...] | None = None

    def narrower_of(self, i: int) -> tuple[Keep, ...]:
        """The narrower widths that the plan's ``i``-th client's batches drop to."""
        if self.assign is None or not self.narrower:
            return ()
        return self.narrower[self.assign[i]]

    def models_of(self, i: int) -> tuple[tuple[nn.Module, ModelSpec], ...]:
        """The models the plan's ``i``-th client trains."""
        return self.models if self.assign is None else (self.models[self.assign[i]],)


@dataclass(frozen=True)
class TrainReply:
    """One client's answer to a train message, as tensors."""

    client: int
    states: tuple[StateDict | None, ...]  # trained copy of each model of the plan (None: none)
    n: int  # training samples the client reports
    version: int | None = None  # architecture version it trained (None: not reported)
    loss: float = math.nan  # mean training loss of its last epoch
    node: int | None = None  # the node that answered, where the transport has nodes


@dataclass(frozen=True)
class Delivery:
    """What a transport did with one round's train messages."""

    replies: list[TrainReply]  # the readable replies, in client order
    sent: list[int]  # the clients a train message went to
    bytes_down: int  # the train messages' bytes (the meter's count)
    bytes_up: int  # the replies' bytes, readable or not
    # replies left out before the server saw them: {"client", "node", "reason"}
    dropped: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0  # error replies and replies missing at the deadline
    # the replies say which architecture version they trained, and a reply that does not,
    # or names another, is rejected (messages can be stale); in process they cannot be
    versions: bool = False


@dataclass(frozen=True)
class Queried:
    """A validation query's answers and the bytes of the query and its answers."""

    validation: Validation
    sent: list[int]  # the clients a query went to
    bytes_down: int  # the queries' bytes
    bytes_up: int  # the answers' bytes


class Transport(Protocol):
    """What an engine provides to the server."""

    # whether each round's record tells what became of every message (sampled, sent,
    # failures, dropped, with node ids): true where messages can be lost
    reports_delivery: bool

    def train(self, plan: TrainPlan) -> Delivery:
        """Send the plan's models to its clients; the readable replies, in client order."""
        ...

    def validate(self, model: nn.Module, spec: ModelSpec, clients: Sequence[int],
                 experiment: str, payload_dtype: str, variants: Sequence[Keep] = (),
                 calibrate: int = 0) -> Queried:
        """Ask ``clients`` for ``model``'s accuracy on their validation splits, and in the
        same query for that of each of its sub-models ``variants`` (the channels they keep;
        the clients cut them from ``model`` themselves); with ``calibrate`` > 0, each
        client first re-estimates each net's batch-norm statistics on up to that many of
        its training samples (:func:`~fedprune.federated.client.evaluate_widths`)."""
        ...

