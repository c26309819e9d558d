"""When and how much to cut over a federated run: one :class:`Pruner` per method.

* ``boundary`` and ``ratio`` (:mod:`.schedule`): the rule on a fixed schedule; ``none``: a
  run whose pruning is off;
* ``auto`` (:mod:`.nested`): fedprune's automatic method, nested widths trained in the
  model in flight and one cut to the narrowest width that validation shows fits;
* ``auto-paired`` (:mod:`.auto`): the earlier automatic method, paired validation of
  candidates trained beside the model;
* ``budget`` (:mod:`.budget`): budget mode, the k controller and the accuracy guard.

The server builds a run's method with :func:`make_pruner` and drives every method through
the :class:`Pruner` interface; a new method is one registered subclass (:func:`register`).
What a cut removes (scores, rules, the cut itself) is :mod:`fedprune.pruning`.
"""

from . import auto, budget, nested, schedule  # noqa: F401 - each registers its methods
from .base import (
    Keep,
    Nested,
    Pruner,
    PruneStep,
    Validate,
    Validation,
    pool_validation,
    screen_validation,
    validation_clients,
)
from .registry import NEVER, PRUNERS, make_pruner, method_of, register

__all__ = [
    "NEVER",
    "PRUNERS",
    "Keep",
    "Nested",
    "PruneStep",
    "Pruner",
    "Validate",
    "Validation",
    "make_pruner",
    "method_of",
    "pool_validation",
    "screen_validation",
    "register",
    "validation_clients",
]
