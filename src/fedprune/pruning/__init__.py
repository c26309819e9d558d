"""Automatic structured pruning of conv nets: score (L1), decide (a rule), cut (DepGraph).

When and how much to cut over a federated run is :mod:`fedprune.pruners`.
"""

from .apply import (
    GroupDecision,
    PruneError,
    PruneResult,
    Refusal,
    default_ignored_layers,
    default_rule,
    initial_record,
    mark_fixed,
    output_tensors,
    prune_model,
    rebuild,
    reinitialise,
    widths_of,
    zero_removed,
)
from .rule import BoundaryRule, Decision, RatioRule, Rule, decide, decide_ratio

__all__ = [
    "BoundaryRule",
    "Decision",
    "GroupDecision",
    "PruneError",
    "PruneResult",
    "RatioRule",
    "Refusal",
    "Rule",
    "decide",
    "decide_ratio",
    "default_ignored_layers",
    "default_rule",
    "initial_record",
    "mark_fixed",
    "output_tensors",
    "prune_model",
    "rebuild",
    "reinitialise",
    "widths_of",
    "zero_removed",
]
