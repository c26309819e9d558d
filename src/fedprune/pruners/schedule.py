"""The boundary and fixed-ratio rules on their schedule (methods ``boundary``, ``ratio``).

When the server prunes: start round, last round, and patience on "params dropped".  The
state is a frozen value that :func:`advance` returns anew each round; nothing is global.
:class:`SchedulePruner` runs the rule on that schedule; with pruning off (method ``none``)
it never cuts.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from .. import seeds
from ..config import ExperimentConfig, PruneConfig
from ..metrics import n_params
from ..models import ModelSpec
from ..pruning import BoundaryRule, RatioRule, prune_model
from .base import Pruner, PruneStep, Validate
from .registry import NEVER, register

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """Pruning is tried every ``interval`` rounds from ``start_round`` to ``max_prune_round``.

    It stops for good after ``patience`` consecutive tried rounds in which the parameter count
    did not drop, or after ``max_prune_round``.
    """

    start_round: int = 1
    max_prune_round: int = 50
    patience: int = 3
    interval: int = 1

    def __post_init__(self) -> None:
        if self.start_round < 1:
            raise ValueError(f"start_round must be >= 1, got {self.start_round}")
        if self.max_prune_round < self.start_round:
            raise ValueError(
                f"max_prune_round ({self.max_prune_round}) must be >= start_round "
                f"({self.start_round})"
            )
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")


@dataclass(frozen=True)
class ScheduleState:
    """Progress of the schedule: rounds without a drop, and whether/when pruning stopped."""

    stale_rounds: int = 0
    stopped: bool = False
    stopped_round: int | None = None
    accepted_steps: int = 0


def is_try_round(schedule: Schedule, rnd: int) -> bool:
    """True when ``rnd`` is one of the schedule's rounds (every ``interval`` in the window)."""
    return (schedule.start_round <= rnd <= schedule.max_prune_round
            and (rnd - schedule.start_round) % schedule.interval == 0)


def is_active(schedule: Schedule, state: ScheduleState, rnd: int) -> bool:
    """True when the server should try the pruning rule after aggregating round ``rnd``."""
    return not state.stopped and is_try_round(schedule, rnd)


def advance(
    schedule: Schedule, state: ScheduleState, rnd: int, params_before: int, params_after: int
) -> ScheduleState:
    """Return the state after a tried round; a step counts only if the params dropped."""
    if params_after < params_before:
        state = replace(state, stale_rounds=0, accepted_steps=state.accepted_steps + 1)
    else:
        state = replace(state, stale_rounds=state.stale_rounds + 1)
    last_try = rnd + schedule.interval > schedule.max_prune_round
    if state.stale_rounds >= schedule.patience or last_try:
        state = replace(state, stopped=True, stopped_round=rnd)
    return state


def schedule_of(cfg: ExperimentConfig) -> Schedule:
    p = cfg.prune
    return Schedule(p.start_round, p.max_prune_round, p.patience, p.interval)


def rule_of(p: PruneConfig) -> BoundaryRule | RatioRule:
    """The rule of ``prune.method``: the fixed ratio for ``ratio``, else the boundary rule."""
    if p.method == "ratio":
        return RatioRule(ratio=p.ratio, min_channels=p.min_channels, round_to=p.round_to)
    return BoundaryRule(k=p.k, mode=p.mode, min_channels=p.min_channels,
                        max_fraction=p.max_fraction)


@register(NEVER, selectable=False)
@register("ratio")
@register("boundary")
class SchedulePruner(Pruner):
    """The boundary or fixed-ratio rule, run on ``cfg.prune``'s schedule until it stops."""

    def __init__(self, cfg: ExperimentConfig, **start: Any) -> None:
        super().__init__(cfg, **start)
        self.state = ScheduleState()

    def after_aggregate(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                        last_round: bool = False) -> PruneStep:
        """Run the rule on the aggregate of round ``rnd`` if the schedule is active, in place."""
        schedule = schedule_of(self.cfg)
        if not (self.cfg.prune.enabled and is_active(schedule, self.state, rnd)):
            return PruneStep(model, spec, False, False)
        p = self.cfg.prune
        before = n_params(model)
        res = prune_model(model, self.example, rule_of(p), reinit=p.reinit,
                          seed=seeds.pruning_seed(self.cfg.seed, rnd), record=spec.record)
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
