"""When and how much to cut over a federated run: one :class:`Pruner` per method.

* ``boundary`` and ``ratio`` (:mod:`.schedule`): the rule on a fixed schedule; ``none``: a
  run whose pruning is off;
* ``auto`` (:mod:`.auto`): fedprune's automatic method, paired validation of candidates;
* ``budget`` (:mod:`.budget`): budget mode, the k controller and the accuracy guard.

The server builds a run's method with :func:`make_pruner` and drives every method through
the :class:`Pruner` interface; a new method is one registered subclass (:func:`register`).
What a cut removes (scores, rules, the cut itself) is :mod:`fedprune.pruning`.
"""

from . import auto, budget, schedule  # noqa: F401 - each registers its methods
from .base import Pruner, PruneStep, Validate, Validation, pool_validation, validation_clients
from .registry import NEVER, PRUNERS, make_pruner, method_of, register

__all__ = [
    "NEVER",
    "PRUNERS",
    "PruneStep",
    "Pruner",
    "Validate",
    "Validation",
    "make_pruner",
    "method_of",
    "pool_validation",
    "register",
    "validation_clients",
]
