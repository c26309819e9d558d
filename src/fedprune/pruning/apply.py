"""Score, decide and cut: structured pruning of any ``nn.Module`` with Conv2d layers.

The model is traced once into a Torch-Pruning ``DependencyGraph``; every group rooted at a
Conv2d (coupled layers: residual adds, concatenations, BatchNorm, depthwise convs, and the input
features of the consumers, including the classifier) is scored by :mod:`.importance`, decided by
:mod:`.rule`, and the removed channels are cut in place, so the surviving filters keep their
trained weights.  The classifier's outputs are never pruned.

What the cut leaves behind is described by a JSON-serialisable *record*: for each group, its
root conv, its members, its original channel count and the original indices of the channels
kept.  :func:`rebuild` prunes a fresh copy of the original architecture to the same shapes from
that record alone; this record, plus the weights, is what travels to the clients.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ..config import PruneConfig
from .importance import GroupScores, group_l1_scores
from .rule import BoundaryRule, Decision, Rule

logger = logging.getLogger(__name__)

RECORD_FORMAT = "fedprune.prune-record"
RECORD_VERSION = 1


@dataclass(frozen=True)
class GroupDecision:
    """One group's decision, for logs and records."""

    root: str
    members: tuple[str, ...]
    channels: int  # before this step
    kept: int  # after this step
    lower: float
    upper: float


@dataclass
class PruneResult:
    """Output of :func:`prune_model`."""

    model: nn.Module
    record: dict[str, Any]
    decisions: list[GroupDecision] = field(default_factory=list)

    @property
    def n_removed(self) -> int:
        return sum(d.channels - d.kept for d in self.decisions)


def _output_modules(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The Conv2d/Linear layers whose outputs reach the model's output.

    Each output tensor is traced back through the modules that produced it (Flatten, BN,
    activations, pooling, ...) to the first Conv2d or Linear.  Functional ops between modules
    break the chain; models that use them should expose ``get_classifier()``.
    """
    produced: dict[int, tuple[nn.Module, list[int]]] = {}

    def hook(module: nn.Module, inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            produced[id(out)] = (module, [id(t) for t in inp if isinstance(t, torch.Tensor)])

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(example_inputs)
            outs = out if isinstance(out, (tuple, list)) else [out]
            found: list[nn.Module] = []
            for o in outs:
                key = id(o) if isinstance(o, torch.Tensor) else None
                while key in produced:
                    module, inputs = produced[key]
                    if isinstance(module, (nn.Conv2d, nn.Linear)):
                        found.append(module)
                        break
                    key = inputs[0] if len(inputs) == 1 else None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found


def default_ignored_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The classifier (``model.get_classifier()`` if present) and the model's output layer."""
    ignored: list[nn.Module] = []
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        ignored.append(get_classifier())
    for m in _output_modules(model, example_inputs):
        if all(m is not i for i in ignored):
            ignored.append(m)
    return ignored


def _build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    finally:
        model.train(was_training)


def _groups(model: nn.Module, dg: tp.DependencyGraph, ignored: Sequence[nn.Module]):
    return dg.get_all_groups(ignored_layers=list(ignored), root_module_types=[nn.Conv2d])


def _check_record(record: dict[str, Any]) -> None:
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a pruning record: expected format {RECORD_FORMAT!r}")
    if record.get("version") != RECORD_VERSION:
        raise ValueError(
            f"pruning record version {record.get('version')!r} is not supported "
            f"(this fedprune reads version {RECORD_VERSION})"
        )
    groups = record.get("groups")
    if not isinstance(groups, list):
        raise ValueError("pruning record: 'groups' must be a list")
    for g in groups:
        if not isinstance(g, dict) or not {"root", "members", "channels", "kept"} <= set(g):
            raise ValueError("pruning record: each group needs root, members, channels, kept")
        ch, kept = g["channels"], g["kept"]
        if not isinstance(g["root"], str) or not isinstance(ch, int) or ch < 1:
            raise ValueError("pruning record: bad root or channel count in group "
                             f"{g.get('root')!r}")
        if (
            not isinstance(kept, list)
            or not kept
            or any(not isinstance(i, int) or not 0 <= i < ch for i in kept)
            or kept != sorted(set(kept))
        ):
            raise ValueError(
                f"pruning record: group {g['root']!r} 'kept' must be a non-empty sorted list of "
                f"distinct channel indices in [0, {ch})"
            )


def initial_record(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ignored_layers: Sequence[nn.Module] | None = None,
) -> dict[str, Any]:
    """The record of an unpruned model: every prunable group with all channels kept."""
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored_layers) if ignored_layers is not None else default_ignored_layers(
        model, example_inputs
    )
    dg = _build_graph(model, example_inputs)
    groups = []
    for group in _groups(model, dg, ignored):
        gs = group_l1_scores(group, dg, names)
        n = int(gs.scores.numel())
        groups.append({"root": gs.root, "members": list(gs.members), "channels": n,
                       "kept": list(range(n))})
    order = {name: i for i, name in enumerate(names.values())}
    groups.sort(key=lambda g: order[g["root"]])
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "groups": groups}


def widths_of(record: dict[str, Any]) -> dict[str, int]:
    """Current output channels per prunable group root, from a record."""
    return {g["root"]: len(g["kept"]) for g in record["groups"]}


def default_rule() -> BoundaryRule:
    """The boundary rule with the configuration's defaults (``fedprune config``): k = 0.75,
    the low tail only, at most 20 % of a group's channels per call, one channel kept."""
    p = PruneConfig
    return BoundaryRule(k=p.k, mode=p.mode, min_channels=p.min_channels,
                        max_fraction=p.max_fraction)


def prune_model(
    model: nn.Module,
    example_inputs: torch.Tensor,
    rule: Rule | None = None,
    *,
    ignored_layers: Sequence[nn.Module] | None = None,
    reinit: bool = False,
    seed: int = 0,
    record: dict[str, Any] | None = None,
) -> PruneResult:
    """Prune ``model`` in place by ``rule`` and return the result.

    Args:
        model: any module with Conv2d layers; pruned in place (surviving weights kept).
        example_inputs: a batch (size 1 is enough) used to trace the dependency graph.
        rule: what each group loses (:class:`~.rule.BoundaryRule`, or the fixed-ratio
            baseline :class:`~.rule.RatioRule`); by default the boundary rule with the
            configuration's defaults (:func:`default_rule`).  The paper's rule is
            ``BoundaryRule(k=2.0, mode="both", max_fraction=1.0)``.
        ignored_layers: layers whose outputs must not be pruned; by default the classifier
            (``get_classifier()``) and the layer producing the model's output.
        reinit: re-initialise all parameters after the cut (the paper's behaviour), seeded
            by ``seed``.  Off by default: fedprune keeps the trained weights.
        record: the record of the model as it is now (from an earlier call or
            :func:`initial_record`); the returned record is relative to the original model.
    """
    rule = default_rule() if rule is None else rule
    if record is None:
        record = initial_record(model, example_inputs, ignored_layers)
    _check_record(record)
    ignored = list(ignored_layers) if ignored_layers is not None else default_ignored_layers(
        model, example_inputs
    )
    dg = _build_graph(model, example_inputs)
    plans = _plan(model, dg, ignored, record, rule)
    new_record = _cut(dg, plans, record)
    if reinit:
        reinitialise(model, seed)
    return PruneResult(model=model, record=new_record, decisions=[p.group for p in plans])


@dataclass(frozen=True)
class _Plan:
    """One group's cut, decided before any group is cut."""

    root: nn.Module
    handler: Any
    removed: list[int]  # current channel indices to remove
    group: GroupDecision
    keep: np.ndarray


def _plan(model: nn.Module, dg: tp.DependencyGraph, ignored: Sequence[nn.Module],
          record: dict[str, Any], rule: Rule) -> list[_Plan]:
    """Score and decide every group of ``model`` (which ``record`` must describe)."""
    names = {m: n for n, m in model.named_modules()}
    by_root = {g["root"]: g for g in record["groups"]}
    plans = []
    for group in _groups(model, dg, ignored):
        gs = group_l1_scores(group, dg, names)
        prev = by_root.get(gs.root)
        if prev is None or len(prev["kept"]) != gs.scores.numel():
            raise ValueError(
                f"the record does not match the model at layer {gs.root!r}: rebuild the model "
                "from its record before pruning it again"
            )
        dec = _decide_group(gs, rule)
        gd = GroupDecision(gs.root, gs.members, int(gs.scores.numel()), int(dec.keep.sum()),
                           dec.lower, dec.upper)
        logger.debug("group %s: %d -> %d channels (bounds %.4g, %.4g)", gs.root, gd.channels,
                     gd.kept, dec.lower, dec.upper)
        plans.append(_Plan(group[0].dep.target.module, group[0].dep.handler,
                           [int(i) for i in (~dec.keep).nonzero()[0]], gd, dec.keep))
    return plans


def _cut(dg: tp.DependencyGraph, plans: Sequence[_Plan], record: dict[str, Any]
         ) -> dict[str, Any]:
    """Cut the planned channels in place; the record of the model after the cut."""
    by_root = {g["root"]: g for g in record["groups"]}
    new_groups = {g["root"]: dict(g) for g in record["groups"]}
    for plan in plans:
        prev_kept = by_root[plan.group.root]["kept"]
        new_groups[plan.group.root]["kept"] = [prev_kept[i] for i in range(len(prev_kept))
                                               if plan.keep[i]]
        if plan.removed:
            group = dg.get_pruning_group(plan.root, plan.handler, plan.removed)
            if not dg.check_pruning_group(group):
                raise RuntimeError(f"Torch-Pruning refused to prune group {plan.group.root!r}")
            group.prune(record_history=False)
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION,
            "groups": [new_groups[g["root"]] for g in record["groups"]]}


def _decide_group(gs: GroupScores, rule: Rule) -> Decision:
    """The rule on one group; grouped convs lose the same local positions in every block.

    For a grouped conv the rule sees one score per local position (the mean over the blocks)
    and the per-block channel count, so a fixed ratio removes ``floor(ratio * n / g)``
    positions from each of the ``g`` blocks.
    """
    scores = gs.scores.numpy()
    g = gs.channel_groups
    if not gs.prunable:
        logger.warning("group %s meets a grouped conv whose channel blocks it cannot keep "
                       "aligned; left unpruned", gs.root)
        return Decision(np.ones(scores.size, dtype=bool), np.nan, np.nan, np.nan, np.nan)
    if g == 1:
        return rule.decide(scores)
    local_rule = replace(rule, min_channels=max(-(-rule.min_channels // g), gs.min_per_block))
    if getattr(local_rule, "round_to", 1) > 1:  # the blocks' positions are not aligned
        local_rule = replace(local_rule, round_to=1)
    local = local_rule.decide(scores.reshape(g, -1).mean(axis=0))
    return replace(local, keep=np.tile(local.keep, g))


def reinitialise(model: nn.Module, seed: int) -> None:
    """Reset every module's parameters (and BN statistics) with a seeded generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()


def rebuild(model: nn.Module, record: dict[str, Any], example_inputs: torch.Tensor) -> nn.Module:
    """Prune a fresh copy of the original architecture, in place, to the shapes of ``record``."""
    _check_record(record)
    dg = _build_graph(model, example_inputs)
    for g in record["groups"]:
        try:
            module = model.get_submodule(g["root"])
        except AttributeError as exc:
            raise ValueError(f"pruning record names layer {g['root']!r}, absent from the "
                             "model") from exc
        pruner = dg.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) != g["channels"]:
            raise ValueError(
                f"pruning record: layer {g['root']!r} has "
                f"{None if pruner is None else pruner.get_out_channels(module)} output channels, "
                f"the record expects {g['channels']}; is it the same architecture?"
            )
        kept = set(g["kept"])
        removed = [i for i in range(g["channels"]) if i not in kept]
        if removed:
            dg.get_pruning_group(module, pruner.prune_out_channels, removed).prune(
                record_history=False
            )
    return model
