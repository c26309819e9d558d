"""A transport with hand-made replies, to drive :class:`~fedprune.federated.PruningServer`
round by round without an engine."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch

from fedprune import seeds
from fedprune.federated import train_local
from fedprune.federated.transport import Delivery, Queried, TrainPlan, TrainReply
from fedprune.pruners import Validation


class FakeTransport:
    """Answers each plan with ``replies(plan)``; validation with ``validate(model, spec,
    clients)`` (default: no answers).  ``plans`` keeps every plan it was given; the bytes
    are ``bytes_per_message`` per train message and per reply; the replies' architecture
    versions are checked when any reply reports one."""

    reports_delivery = False

    def __init__(self, replies: Callable[[TrainPlan], Sequence[TrainReply]],
                 validate: Callable | None = None, bytes_per_message: int = 0) -> None:
        self.replies, self.validator = replies, validate
        self.bytes_per_message = bytes_per_message
        self.plans: list[TrainPlan] = []

    def train(self, plan: TrainPlan) -> Delivery:
        self.plans.append(plan)
        replies = list(self.replies(plan))
        b = self.bytes_per_message
        return Delivery(replies, list(plan.clients), b * len(plan.clients), b * len(replies),
                        versions=any(r.version is not None for r in replies))

    def validate(self, model, spec, clients, experiment, payload_dtype, variants=(),
                 calibrate=0) -> Queried:
        got = (self.validator(model, spec, clients) if self.validator is not None
               else Validation(math.nan, 0, math.nan))
        return Queried(got, list(clients), 0, 0)


def trained(data, cfg) -> Callable[[TrainPlan], list[TrainReply]]:
    """Replies of honest clients of ``data``: each trains every model of the plan."""
    def replies(plan: TrainPlan) -> list[TrainReply]:
        out = []
        for cid in plan.clients:
            cd = data.clients[cid]
            states = []
            for model, _ in plan.models:
                state, n, metrics = train_local(copy.deepcopy(model), cd.x, cd.y, cfg.train,
                                                seeds.batch_order(cfg.seed, plan.rnd, cid))
                states.append(state)
            out.append(TrainReply(cid, tuple(states), n, loss=metrics["train_loss"]))
        return out
    return replies


def poisoned(replies: Callable[[TrainPlan], list[TrainReply]], first: int
             ) -> Callable[[TrainPlan], list[TrainReply]]:
    """``replies`` with the global model's state of the first ``first`` replies all NaN."""
    def out(plan: TrainPlan) -> list[TrainReply]:
        got = replies(plan)
        for i in range(first):
            r = got[i]
            nan = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                   for k, v in r.states[0].items()}
            got[i] = TrainReply(r.client, (nan, *r.states[1:]), r.n, r.version, r.loss)
        return got
    return out
