"""Nested widths of one model: aligned channel counts, the width ladder, and sub-models.

A *width* of a model is a channel count for each prunable group (:func:`~.apply.
initial_record`).  The automatic method (:mod:`fedprune.pruners.nested`) trains and
validates several widths of the one model in flight: each is the model's *sub-model* that
keeps, in every group, the channels of highest L1 norm (so the widths are nested: a
narrower one keeps a subset of a wider one's channels).  A sub-model is an ordinary pruned
model (its record names the original channels it keeps), so it travels, trains and is
rebuilt like any other; :func:`gather_maps` says where each of its weights sits in the
full model, so the server can average sub-models of different widths per coordinate.

Widths are kept on hardware multiples (``prune.round_to``): ONNX Runtime's blocked conv path
on x86 and XNNPACK's kernels run a conv fastest when its input channels are a multiple of
the SIMD block (16 here), and much slower otherwise whatever the FLOPs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .apply import (
    RECORD_FORMAT,
    RECORD_VERSION,
    _build_graph,
    _check_record,
    _groups,
    default_ignored_layers,
    initial_record,
    rebuild,
)
from .importance import group_l1_scores

__all__ = [
    "HELD_SHARE",
    "aligned",
    "batch_schedule",
    "channel_scores",
    "dropout_masks",
    "fixed_groups",
    "gather_maps",
    "has_batchnorm",
    "keep_of",
    "ladder",
    "record_from_keep",
    "sub_model",
    "sub_record",
    "variant_models",
]

#: the widths of the ladder: the full width times 1/8, 2/8, ..., 8/8, each aligned
LADDER_STEPS = 8
#: ordered dropout per batch: the share of a client's batches that train its own width
HELD_SHARE = 0.5


def aligned(k: float, n: int, multiple: int, floor: int = 1) -> int:
    """``k`` channels of a group of ``n``, on a multiple of ``multiple``: the nearest
    multiple (half up), at least one multiple, at most ``n`` (a group of ``multiple``
    channels or fewer keeps all of them, its width is not on a multiple anyway); and at
    least ``floor``."""
    if n < 1 or multiple < 1:
        raise ValueError(f"aligned: need n >= 1 and multiple >= 1, got n={n}, "
                         f"multiple={multiple}")
    if multiple == 1:
        kept = math.floor(k + 0.5)
    elif n <= multiple:
        kept = n
    else:
        kept = multiple * max(1, math.floor(k / multiple + 0.5))
    return int(min(n, max(kept, floor, 1)))


def ladder(widths: Mapping[str, int], multiple: int, floor: int = 1,
           steps: int = LADDER_STEPS, fixed: Collection[str] = ()) -> list[dict[str, int]]:
    """The candidate widths of a model whose groups have ``widths`` channels: the full
    widths times ``i / steps`` (i = 1 ... steps), each group :func:`aligned` (the groups
    ``fixed`` whole, :func:`fixed_groups`), duplicates dropped; narrowest first, the full
    width last.  Every width keeps at most what the next one keeps in every group (they are
    nested)."""
    out: list[dict[str, int]] = []
    for i in range(1, steps + 1):
        w = {root: n if root in fixed else aligned(n * i / steps, n, multiple, floor)
             for root, n in widths.items()}
        if i == steps:
            w = dict(widths)
        if not out or w != out[-1]:
            out.append(w)
    return out


def channel_scores(model: nn.Module, example: torch.Tensor,
                   ignored: Sequence[nn.Module] | None = None) -> dict[str, np.ndarray]:
    """Each prunable group's L1 scores (one per output channel), by root."""
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored) if ignored is not None else default_ignored_layers(model, example)
    dg = _build_graph(model, example)
    out = {}
    for group in _groups(model, dg, ignored):
        gs = group_l1_scores(group, dg, names)
        out[gs.root] = gs.scores.numpy().astype(np.float64)
    return out


def fixed_groups(model: nn.Module, example: torch.Tensor,
                 ignored: Sequence[nn.Module] | None = None,
                 record: dict[str, Any] | None = None) -> set[str]:
    """The groups whose width nested sub-models leave whole: those a grouped conv or a
    GroupNorm splits into blocks (a width would have to keep the same positions in every
    block), those the pruning cannot keep aligned (:func:`~.apply._decide_group` leaves them
    too) and those ``record`` marks ``fixed`` (:func:`~.apply.mark_fixed`)."""
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored) if ignored is not None else default_ignored_layers(model, example)
    dg = _build_graph(model, example)
    out = set()
    for group in _groups(model, dg, ignored):
        gs = group_l1_scores(group, dg, names)
        if gs.channel_groups > 1 or not gs.prunable:
            out.add(gs.root)
    if record is not None:
        out |= {g["root"] for g in record["groups"] if g.get("fixed")}
    return out


def _unpruned(record: dict[str, Any]) -> None:
    _check_record(record)
    for g in record["groups"]:
        if g["kept"] != list(range(g["channels"])):
            raise ValueError(f"nested widths need the unpruned model: group {g['root']!r} "
                             f"keeps {len(g['kept'])} of {g['channels']} channels")


def sub_record(record: dict[str, Any], scores: Mapping[str, np.ndarray],
               widths: Mapping[str, int]) -> dict[str, Any]:
    """The record of the unpruned model's sub-model that keeps, in each group, its
    ``widths[root]`` channels of highest score (ties: the lower index), in channel order."""
    _unpruned(record)
    groups = []
    for g in record["groups"]:
        n, k = g["channels"], int(widths.get(g["root"], g["channels"]))
        if not 1 <= k <= n:
            raise ValueError(f"width {k} of group {g['root']!r} is not in [1, {n}]")
        s = scores.get(g["root"])
        if s is None or s.size != n:
            kept = list(range(k))
        else:
            order = np.argsort(-s, kind="stable")  # highest first; ties by index
            kept = sorted(int(i) for i in order[:k])
        groups.append({**g, "kept": kept})
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "groups": groups}


def keep_of(record: dict[str, Any]) -> dict[str, list[int]]:
    """What travels to describe a sub-model: the kept channels of each group that is cut."""
    return {g["root"]: list(g["kept"]) for g in record["groups"]
            if len(g["kept"]) < g["channels"]}


def record_from_keep(record: dict[str, Any], keep: Mapping[str, Sequence[int]]
                     ) -> dict[str, Any]:
    """The sub-model record that :func:`keep_of` describes, on the unpruned ``record``."""
    _unpruned(record)
    roots = {g["root"] for g in record["groups"]}
    unknown = sorted(set(keep) - roots)
    if unknown:
        raise ValueError(f"sub-model: unknown groups {unknown[:3]}")
    out = {"format": RECORD_FORMAT, "version": RECORD_VERSION,
           "groups": [{**g, "kept": [int(i) for i in keep.get(g["root"], g["kept"])]}
                      for g in record["groups"]]}
    _check_record(out)
    return out


def sub_model(model: nn.Module, record: dict[str, Any], example: torch.Tensor) -> nn.Module:
    """A copy of the unpruned ``model`` cut to the sub-model ``record`` (its weights are the
    model's weights of the channels it keeps)."""
    return rebuild(copy.deepcopy(model), record, example)


def gather_maps(model: nn.Module, record: dict[str, Any], example: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    """For each floating entry of the sub-model's state: the flat positions, in the unpruned
    ``model``'s entry of the same name, of its values (so ``full[k].flatten()[maps[k]]`` is
    the sub-model's ``k``, flattened)."""
    probe = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        for t in list(probe.parameters()) + list(probe.buffers()):
            if t.is_floating_point():
                t.copy_(torch.arange(t.numel(), dtype=torch.float64).view_as(t))
    rebuild(probe, record, example.to(torch.float64))
    full = model.state_dict()
    return {k: v.detach().reshape(-1).round().long()
            for k, v in probe.state_dict().items()
            if v.is_floating_point() and full[k].is_floating_point()}


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a batch-norm layer: running statistics that its narrower
    widths share with the wider ones (what a client re-estimates before measuring them,
    :func:`fedprune.federated.client.calibrate_batchnorm`)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def variant_models(model: nn.Module, spec: Any, variants: Sequence[Mapping[str, Sequence[int]]]
                   ) -> list[nn.Module]:
    """The sub-models of the unpruned ``model`` (its :class:`~fedprune.models.ModelSpec`
    ``spec``) that a validation query describes (:func:`keep_of` each): what a client
    evaluates beside the model."""
    example = spec.example_input()
    return [sub_model(model, record_from_keep(spec.record, keep), example) for keep in variants]


def dropout_masks(model: nn.Module, record: dict[str, Any],
                  narrower: Sequence[Mapping[str, Sequence[int]]], example: torch.Tensor
                  ) -> list[dict[str, torch.Tensor]]:
    """For each narrower width of a nested width ``model`` (its sub-model ``record``, on the
    unpruned model's channels), the 0/1 mask of every floating state entry of ``model``
    that the narrower width keeps: ``model`` with its parameters times the mask computes
    exactly the narrower sub-model (what ordered dropout trains in place).  A narrower width
    is given as :func:`keep_of` describes it (the unpruned model's channels it keeps, per
    group cut); it must keep a subset of ``model``'s channels in every group."""
    _check_record(record)
    own = {g["root"]: {int(c): i for i, c in enumerate(g["kept"])} for g in record["groups"]}
    as_unpruned = initial_record(model, example)
    if {g["root"] for g in as_unpruned["groups"]} != set(own):
        raise ValueError("ordered dropout: the model's groups are not those of its record")
    shapes = {k: v.shape for k, v in model.state_dict().items() if v.is_floating_point()}
    out = []
    cut = {g["root"] for g in record["groups"] if len(g["kept"]) < g["channels"]}
    for keep in narrower:
        whole = sorted(cut - set(keep))  # a width that keeps all of a group this one cuts
        if whole:
            raise ValueError(f"ordered dropout: group {whole[0]!r} of this model does not keep "
                             "every channel, as a narrower width does")
        rel = {}
        for root, kept in keep.items():
            if root not in own:
                raise ValueError(f"ordered dropout: unknown group {root!r}")
            missing = [int(c) for c in kept if int(c) not in own[root]]
            if missing:
                raise ValueError(f"ordered dropout: group {root!r} of this model does not keep "
                                 f"channels {missing[:5]} of a narrower width")
            rel[root] = sorted(own[root][int(c)] for c in kept)
        maps = gather_maps(model, record_from_keep(as_unpruned, rel), example)
        masks = {}
        for k, shape in shapes.items():
            m = torch.zeros(math.prod(shape))
            m[maps[k]] = 1.0
            masks[k] = m.view(shape)
        out.append(masks)
    return out


def batch_schedule(rng: np.random.Generator, n: int, batch_size: int, epochs: int,
                   narrower: int) -> list[int]:
    """Ordered dropout per batch: for each batch of a client's round (``epochs`` epochs of
    ``ceil(n / batch_size)`` batches, in order), -1 to train the client's own width
    (probability :data:`HELD_SHARE`), else the index of one of its ``narrower`` widths,
    uniformly.  One draw per batch from ``rng`` (:func:`fedprune.seeds.batch_widths`)
    whatever ``narrower`` is, so the client and the server that counts its compute agree."""
    if n < 1 or batch_size < 1 or epochs < 1 or narrower < 0:
        raise ValueError(f"batch_schedule: need n, batch_size, epochs >= 1 and narrower >= 0, "
                         f"got {n}, {batch_size}, {epochs}, {narrower}")
    out = []
    for _ in range(epochs * math.ceil(n / batch_size)):
        u = float(rng.random())
        if narrower == 0 or u < HELD_SHARE:
            out.append(-1)
        else:
            out.append(min(narrower - 1, int((u - HELD_SHARE) / (1 - HELD_SHARE) * narrower)))
    return out
