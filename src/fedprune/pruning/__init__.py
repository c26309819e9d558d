"""Automatic structured pruning of conv nets: score (L1), decide (boundary rule), cut (DepGraph)."""

from .apply import (
    GroupDecision,
    PruneResult,
    default_ignored_layers,
    initial_record,
    prune_model,
    rebuild,
    reinitialise,
    widths_of,
)
from .rule import BoundaryRule, Decision, RatioRule, decide, decide_ratio
from .schedule import Schedule, ScheduleState, advance, is_active, is_try_round

__all__ = [
    "BoundaryRule",
    "Decision",
    "GroupDecision",
    "PruneResult",
    "RatioRule",
    "Schedule",
    "ScheduleState",
    "advance",
    "decide",
    "decide_ratio",
    "default_ignored_layers",
    "initial_record",
    "is_active",
    "is_try_round",
    "prune_model",
    "rebuild",
    "reinitialise",
    "widths_of",
]
