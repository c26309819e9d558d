"""The pruning methods by name, and the one way the server builds one.

A method is added by writing a :class:`~.base.Pruner` subclass and registering it::

    @register("quarter")
    class Quarter(Pruner):
        ...

The registry is filled once, as the method modules are imported; :data:`PRUNERS` is a
read-only view of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TypeVar

import torch
from torch import nn

from ..config import ExperimentConfig
from ..config_pruning import PRUNE_METHODS
from ..models import ModelSpec
from .base import Pruner

P = TypeVar("P", bound=type[Pruner])

_REGISTERED: dict[str, type[Pruner]] = {}

#: every registered method: name -> class
PRUNERS: Mapping[str, type[Pruner]] = MappingProxyType(_REGISTERED)

# the method of a run whose pruning is off (prune.enabled = false): it never cuts
NEVER = "none"


def register(name: str, *, selectable: bool = True) -> Callable[[P], P]:
    """Class decorator: register a :class:`~.base.Pruner` subclass as method ``name``;
    ``selectable``: ``prune.method = name`` chooses it (budget mode and dense runs are
    chosen by other settings)."""
    def add(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Pruner)):
            raise TypeError(f"pruning method {name!r}: {cls!r} is not a Pruner subclass")
        if name in _REGISTERED and _REGISTERED[name] is not cls:
            raise ValueError(f"pruning method {name!r} is already registered "
                             f"({_REGISTERED[name].__qualname__})")
        _REGISTERED[name] = cls
        if selectable:
            PRUNE_METHODS.add(name)
        return cls
    return add


def method_of(cfg: ExperimentConfig) -> str:
    """The method that runs ``cfg``: ``budget`` in budget mode, else ``prune.method`` while
    pruning is on, else :data:`NEVER` (dense FedAvg)."""
    if cfg.budget.active:
        return "budget"
    return cfg.prune.method if cfg.prune.enabled else NEVER


def make_pruner(cfg: ExperimentConfig, *, model: nn.Module, spec: ModelSpec,
                example: torch.Tensor, params_initial: int, flops_initial: int,
                num_clients: int, has_validation: Sequence[bool],
                train_sizes: Sequence[int] = (), val_sizes: Sequence[int] = ()) -> Pruner:
    """The pruner of a run of ``cfg`` (:func:`method_of`), built from the initial model."""
    name = method_of(cfg)
    cls = PRUNERS.get(name)
    if cls is None:
        raise ValueError(f"unknown pruning method {name!r}: the registered methods are "
                         f"{', '.join(sorted(PRUNERS))}")
    return cls(cfg, model=model, spec=spec, example=example, params_initial=params_initial,
               flops_initial=flops_initial, num_clients=num_clients,
               has_validation=has_validation, train_sizes=train_sizes, val_sizes=val_sizes)
