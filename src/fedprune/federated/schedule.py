"""The pruning rule on its schedule, as the server applies it after aggregating a round.

:class:`SchedulePruner` and budget mode's :class:`~.budget_server.BudgetServer` have the same
interface (:class:`Pruner`), so :class:`~.server.PruningServer` drives either without a branch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from .. import seeds
from ..config import ExperimentConfig
from ..metrics import n_params
from ..models import ModelSpec
from ..pruning import Schedule, ScheduleState, advance, is_active, prune_model

logger = logging.getLogger(__name__)


class Validation(NamedTuple):
    """Federated validation of one model: pooled over the asked clients' validation splits."""

    accuracy: float  # nan without answers
    samples: int  # validation samples that answered (0: none)
    loss: float  # mean cross-entropy over them
    clients: tuple[tuple[int, float, int], ...] = ()  # (client, accuracy, samples) answers


# validate(model, its spec, client ids) -> the clients' pooled validation figures
Validate = Callable[[nn.Module, ModelSpec, Sequence[int]], Validation]


def schedule_of(cfg: ExperimentConfig) -> Schedule:
    p = cfg.prune
    return Schedule(p.start_round, p.max_prune_round, p.patience, p.interval)


@dataclass
class PruneStep:
    """What the server's pruning step did after one aggregated round."""

    model: nn.Module  # the model to train next (a restored one after a rollback)
    spec: ModelSpec
    changed: bool  # the architecture changed (cut or rollback): rebuild client workers
    pruned: bool  # channels were cut this round
    record: dict[str, Any] | None = None  # budget mode: the round's "budget" entry


class Pruner(Protocol):
    """The server's pruning decisions over a run, and their state for a checkpoint."""

    def trial(self) -> list[tuple[nn.Module, ModelSpec]]:
        """Models the sampled clients train this round beside the global one (the automatic
        method's candidate and reference), with the same batches; usually none."""
        ...

    def after_aggregate(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                        last_round: bool = False) -> PruneStep: ...

    def after_skipped(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                      last_round: bool = False) -> PruneStep | None:
        """The step after a round that aggregated nothing (``fed.min_replies``): None, or
        what must still happen then (budget mode: judge a candidate at the last round)."""
        ...

    def state_entries(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(JSON-able checkpoint entries, snapshot {spec, state_dict} or None)."""
        ...

    def restore_entries(self, state: dict[str, Any], snapshot: dict[str, Any] | None) -> None:
        ...

    def summary_entries(self, model: nn.Module) -> dict[str, Any]:
        """``summary.json`` keys: ``prune_steps`` and the pruner's own."""
        ...


class SchedulePruner:
    """The boundary or fixed-ratio rule (methods ``boundary``, ``ratio``), run on
    ``cfg.prune``'s schedule until it stops."""

    def __init__(self, cfg: ExperimentConfig, example: torch.Tensor) -> None:
        self.cfg = cfg
        self.example = example
        self.state = ScheduleState()

    def trial(self) -> list[tuple[nn.Module, ModelSpec]]:
        return []

    def after_skipped(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                      last_round: bool = False) -> PruneStep | None:
        return None  # the rule runs on aggregates only

    def after_aggregate(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                        last_round: bool = False) -> PruneStep:
        """Run the rule on the aggregate of round ``rnd`` if the schedule is active, in place."""
        schedule = schedule_of(self.cfg)
        if not (self.cfg.prune.enabled and is_active(schedule, self.state, rnd)):
            return PruneStep(model, spec, False, False)
        p = self.cfg.prune
        before = n_params(model)
        res = prune_model(
            model, self.example, k=p.k, mode=p.mode, min_channels=p.min_channels,
            max_fraction=p.max_fraction, reinit=p.reinit,
            seed=seeds.pruning_seed(self.cfg.seed, rnd), record=spec.record,
            ratio=p.ratio if p.method == "ratio" else None,
        )
        after = n_params(model)
        self.state = advance(schedule, self.state, rnd, before, after)
        pruned = after < before
        if pruned:
            spec = replace(spec, record=res.record)
            logger.info("round %d: pruned %d -> %d params, widths %s", rnd, before, after,
                        spec.widths_now())
        if self.state.stopped:
            logger.info("round %d: pruning stopped (%d steps accepted)", rnd,
                        self.state.accepted_steps)
        return PruneStep(model, spec, pruned, pruned)

    def state_entries(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return {"schedule": dataclasses.asdict(self.state)}, None

    def restore_entries(self, state: dict[str, Any], snapshot: dict[str, Any] | None) -> None:
        self.state = ScheduleState(**state["schedule"])

    def summary_entries(self, model: nn.Module) -> dict[str, Any]:
        return {"prune_stopped_round": self.state.stopped_round,
                "prune_steps": self.state.accepted_steps}
