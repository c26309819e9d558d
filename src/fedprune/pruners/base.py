"""What every pruning method is to the server: one :class:`Pruner` per run.

After each aggregated round the server calls :meth:`Pruner.after_aggregate` with the
aggregate and a :data:`Validate` callback that asks clients for a model's accuracy on their
own validation splits (no data leaves them); the method answers with a :class:`PruneStep`.
The server writes the step's ``record`` into the round's record under the method's
:attr:`Pruner.record_key`, and the method's :meth:`Pruner.state_entries` into every
checkpoint, so that it drives any method the same way.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import nn

from .. import seeds
from ..config import ExperimentConfig
from ..metrics.compute import ClientCompute
from ..models import ModelSpec


class Validation(NamedTuple):
    """Federated validation of one model: pooled over the asked clients' validation splits."""

    accuracy: float  # nan without answers
    samples: int  # validation samples that answered (0: none)
    loss: float  # mean cross-entropy over them
    clients: tuple[tuple[int, float, int], ...] = ()  # (client, accuracy, samples) answers
    # the same for each sub-model asked in the same query (Validate's ``variants``), in order,
    # on the same samples
    variants: tuple[Any, ...] = ()
    losses: tuple[float, ...] = ()  # each answer's mean loss, in the order of ``clients``


# what describes a sub-model of the unpruned model in a query: the channels each cut group
# keeps (fedprune.pruning.widths.keep_of), so that no second copy of the weights travels
Keep = Mapping[str, Sequence[int]]


class Validate(Protocol):
    """``validate(model, spec, clients, variants=(), calibrate=0)``: the clients' pooled
    validation of ``model`` and, in the same query, of each of its sub-models ``variants``
    (each net's batch-norm statistics first re-estimated on up to ``calibrate`` of each
    client's training samples when > 0)."""

    def __call__(self, model: nn.Module, spec: ModelSpec, clients: Sequence[int],
                 variants: Sequence[Keep] = (), calibrate: int = 0) -> Validation: ...


def pool_validation(answers: Iterable[tuple[int, float, float, int]],
                    variants: Iterable[Sequence[tuple[float, float]]] | None = None
                    ) -> Validation:
    """Pool the clients' answers ``(client, accuracy, loss, samples)``, in their order, into
    one :class:`Validation`: accuracy and loss weighted by samples (nan without samples).
    ``variants``: for each answer, ``(accuracy, loss)`` of every sub-model asked (the same
    samples), pooled the same way into :attr:`Validation.variants`."""
    answers = list(answers)
    per = list(variants) if variants is not None else None
    correct, loss, total = 0.0, 0.0, 0
    clients, losses = [], []
    for client, acc, lo, n in answers:
        correct += acc * n
        loss += lo * n
        total += n
        clients.append((client, acc, n))
        losses.append(lo)
    subs: tuple[Validation, ...] = ()
    if per:
        k = len(per[0])
        if any(len(v) != k for v in per) or len(per) != len(answers):
            raise ValueError("validation: every answer needs a figure for every sub-model")
        subs = tuple(pool_validation([(c, v[j][0], v[j][1], n)
                                      for (c, _, _, n), v in zip(answers, per, strict=True)])
                     for j in range(k))
    if total == 0:
        return Validation(float("nan"), 0, float("nan"), (), subs)
    return Validation(correct / total, total, loss / total, tuple(clients), subs, tuple(losses))


def _answer_problem(i: int, v: Validation, asked: set[int], seen: set[int],
                    val_sizes: Sequence[int]) -> str | None:
    """Why the ``i``-th answer of ``v`` cannot be true, or None."""
    c, _, n = v.clients[i]
    if not isinstance(c, int) or isinstance(c, bool) or c not in asked:
        return "it was not asked"
    if c in seen:
        return "it answered twice"
    expected = val_sizes[c] if 0 <= c < len(val_sizes) else 0
    if not isinstance(n, int) or isinstance(n, bool) or n != expected:
        return f"it reports {n!r} validation samples, its split holds {expected}"
    for name, net in (("the model", v), *((f"sub-model {j}", sub)
                                          for j, sub in enumerate(v.variants))):
        got = net.clients[i] if i < len(net.clients) else None
        if got is None or got[0] != c or got[2] != n:
            return f"its answer for {name} is missing or on other samples"
        a = got[1]
        if not (isinstance(a, (int, float)) and math.isfinite(a) and 0.0 <= a <= 1.0):
            return f"accuracy {a!r} of {name} is not in [0, 1]"
        if abs(a * n - round(a * n)) > 1e-6 * max(n, 1):
            return f"accuracy {a!r} of {name} is not a count of {n} samples"
        lo = net.losses[i] if i < len(net.losses) else math.nan
        if not (isinstance(lo, (int, float)) and math.isfinite(lo) and lo >= 0.0):
            return f"loss {lo!r} of {name} is not a finite non-negative number"
    return None


def screen_validation(v: Validation, asked: Sequence[int], val_sizes: Sequence[int]
                      ) -> tuple[Validation, list[tuple[int, str]]]:
    """The answers of ``v`` that can be true, pooled again, and those left out:
    ``(client, reason)``.

    Every figure a client reports is bounded by what the server knows: a client answers
    only when asked and once; its sample count is its validation split's size (the server
    partitioned the data, so it knows it); each accuracy, of the model and of every
    sub-model, is in [0, 1] and a count of those samples; each loss finite and not
    negative.  An answer failing any of these is left out whole (all its figures), so that
    no client can outweigh its share of the validation samples.  ``v`` itself is returned
    when every answer passes."""
    asked_set, seen = set(asked), set()
    keep, out = [], []
    for i, (c, _, _) in enumerate(v.clients):
        why = _answer_problem(i, v, asked_set, seen, val_sizes)
        if why is None:
            keep.append(i)
            seen.add(c)
        else:
            out.append((c, why))
    if not out:
        return v, out
    answers = [(v.clients[i][0], v.clients[i][1], v.losses[i], v.clients[i][2]) for i in keep]
    per = [[(sub.clients[i][1], sub.losses[i]) for sub in v.variants] for i in keep]
    return pool_validation(answers, per if v.variants else None), out


def validation_clients(seed: int, rnd: int, pool: Sequence[int], k: int) -> list[int]:
    """The clients asked to validate in round ``rnd``: ``k`` of ``pool`` (all, if fewer),
    drawn from the run's guard stream (:func:`fedprune.seeds.guard_clients`), sorted."""
    rng = seeds.guard_clients(seed, rnd)
    size = min(k, len(pool))
    return sorted(int(c) for c in rng.choice(list(pool), size=size, replace=False))


@dataclass
class PruneStep:
    """What the server's pruning step did after one round."""

    model: nn.Module  # the model to train next (a restored one after a rollback)
    spec: ModelSpec
    changed: bool  # the architecture changed (cut or rollback): rebuild client workers
    pruned: bool  # channels were cut this round
    # the round's entry for the method's record key (Pruner.record_key), or None
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class Nested:
    """A round in which each sampled client trains one nested width of the global model
    (:meth:`Pruner.nested`): the sub-models, where each one's weights sit in the global
    model, and which one each client trains."""

    models: tuple[tuple[nn.Module, ModelSpec], ...]  # the sub-models (the widths)
    # per sub-model: state key -> flat positions of its values in the global model's entry
    maps: tuple[dict[str, torch.Tensor], ...]
    assign: tuple[int, ...]  # per sampled client (in client order): its sub-model's index
    forward_flops: tuple[int, ...]  # per sub-model: forward FLOPs of one sample
    # ordered dropout per batch (``prune.ordered_dropout = "batch"``): per sub-model, the
    # narrower widths (``keep_of`` each) that its clients' batches drop to; () = none
    narrower: tuple[tuple[Keep, ...], ...] = ()


class Pruner(abc.ABC):
    """The server's pruning decisions over a run, and their state for a checkpoint.

    A method is one subclass, registered by name (:func:`fedprune.pruners.register`); the
    server builds it with :func:`fedprune.pruners.make_pruner`, which passes every method
    the same keywords (:meth:`__init__`).
    """

    #: the key of the method's entry in each round's record (``PruneStep.record``); None:
    #: the method records nothing per round
    record_key: ClassVar[str | None] = None

    def __init__(self, cfg: ExperimentConfig, *, model: nn.Module, spec: ModelSpec,
                 example: torch.Tensor, params_initial: int, flops_initial: int,
                 num_clients: int, has_validation: Sequence[bool],
                 train_sizes: Sequence[int] = (), val_sizes: Sequence[int] = ()) -> None:
        """What a method may need at the start of a run: the configuration, the initial
        model and its spec, an example input, the initial size, and the clients (those with
        a validation split form :attr:`val_pool`; their training and validation sizes, where
        the server knows them)."""
        self.cfg = cfg
        self.example = example
        self.val_pool = [i for i in range(num_clients) if has_validation[i]]
        self.train_sizes, self.val_sizes = list(train_sizes), list(val_sizes)
        # what a client's work costs, as the meter counts it (empty sizes: unknown)
        self.compute = ClientCompute(self.train_sizes, self.val_sizes, cfg.train.local_epochs)

    def trial(self) -> list[tuple[nn.Module, ModelSpec]]:
        """Models the sampled clients train this round beside the global one (the automatic
        method's candidate and reference), with the same batches; usually none."""
        return []

    def nested(self, rnd: int, model: nn.Module, spec: ModelSpec, clients: Sequence[int]
               ) -> Nested | None:
        """For a round whose sampled clients each train one width of ``model`` instead of
        the model itself: the widths and who trains which (None: the usual round)."""
        return None

    @abc.abstractmethod
    def after_aggregate(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                        last_round: bool = False) -> PruneStep:
        """The step after round ``rnd`` aggregated ``model``."""

    def after_skipped(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                      last_round: bool = False) -> PruneStep | None:
        """The step after a round that aggregated nothing (``fed.min_replies``): None, or
        what must still happen then (budget mode: judge a candidate at the last round)."""
        return None

    @abc.abstractmethod
    def state_entries(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(JSON-able checkpoint entries, snapshot of tensors or None)."""

    @abc.abstractmethod
    def restore_entries(self, state: dict[str, Any], snapshot: dict[str, Any] | None) -> None:
        """Continue from what :meth:`state_entries` wrote."""

    @abc.abstractmethod
    def summary_entries(self, model: nn.Module) -> dict[str, Any]:
        """``summary.json`` keys: ``prune_steps`` and the method's own."""
