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

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ..config import PruneConfig
from .importance import GroupScores, group_l1_scores
from .rule import BoundaryRule, Decision, RatioRule, Rule

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


@dataclass(frozen=True)
class Refusal:
    """A group a cut would have broken, left whole: its layers and why."""

    root: str
    members: tuple[str, ...]
    reason: str

    def message(self) -> str:
        return (f"group {self.root!r} (layers {', '.join(self.members)}) left whole: "
                f"{self.reason}")


class PruneError(ValueError):
    """The model cannot be pruned at all (its forward fails before any cut)."""


@dataclass
class PruneResult:
    """Output of :func:`prune_model`."""

    model: nn.Module
    record: dict[str, Any]
    decisions: list[GroupDecision] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)  # groups left whole, and why

    @property
    def n_removed(self) -> int:
        return sum(d.channels - d.kept for d in self.decisions)


# layers whose outputs are channels a cut could remove: the walk stops at the first one
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
           nn.ConvTranspose3d, nn.Linear)


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model's output, in a fixed order: a tensor, or tuples, lists and
    mappings of them (a ``transformers`` ``ModelOutput`` is a mapping), nested."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in output_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in output_tensors(v)]
    return []


def _output_modules(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The layers (convs, linears) whose outputs reach the model's output unchanged in width.

    One forward pass with autograd on: each conv or linear layer's output node is noted (the
    nodes are kept alive, so no identity is reused), then the autograd graph is walked back
    from every output tensor through whatever lies between -- containers, norms,
    activations, pooling and functional ops such as ``F.interpolate``, ``reshape``,
    ``flatten``, ``permute``, adds and concatenations -- and each path stops at the first
    such layer.  Every node is visited once: the walk ends on any graph.
    """
    made: dict[Any, nn.Module] = {}  # autograd node -> the layer whose output it made

    def hook(module: nn.Module, inp: Any, out: Any) -> None:
        for t in output_tensors(out):
            if t.grad_fn is not None and t.grad_fn not in made:
                made[t.grad_fn] = module

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, _LAYERS)]
    was_training = model.training
    x = example_inputs
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        x = x.detach().requires_grad_(True)  # a graph even where no parameter needs grad
    try:
        model.eval()
        with torch.enable_grad():
            outs = output_tensors(model(x))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    found: list[nn.Module] = []
    seen: set[Any] = set()
    for o in outs:
        stack = [o.grad_fn] if o.grad_fn is not None else []
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            layer = made.get(node)
            if layer is not None:
                if all(layer is not f for f in found):
                    found.append(layer)
                continue
            stack.extend(n for n, _ in reversed(node.next_functions) if n is not None)
    return found


def default_ignored_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The classifier (``model.get_classifier()`` if present) and every conv or linear layer
    whose outputs reach one of the model's outputs (:func:`_output_modules`)."""
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
        if "fixed" in g and not isinstance(g["fixed"], str):
            raise ValueError(f"pruning record: group {g.get('root')!r}: 'fixed' must be a "
                             "string (why the group is left whole)")
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
            (``get_classifier()``) and every layer producing one of the model's outputs
            (:func:`default_ignored_layers`).
        reinit: re-initialise all parameters after the cut (the paper's behaviour), seeded
            by ``seed``.  Off by default: fedprune keeps the trained weights.
        record: the record of the model as it is now (from an earlier call or
            :func:`initial_record`); the returned record is relative to the original model.
            A group the record marks ``fixed`` (:func:`mark_fixed`) is left whole.

    Every cut checks itself before it is kept: a forward pass on ``example_inputs`` must run
    and give outputs of the same shapes and dtypes as before.  If it does not, the model is
    put back as it was and the groups are cut one at a time; a group whose cut fails is left
    whole and listed in :attr:`PruneResult.refused` with its layers and the reason (also
    logged as a warning), and the rest of the model is cut.

    Raises:
        PruneError: the model's forward fails on ``example_inputs`` before any cut.
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
    new_record, refused = _cut_checked(model, example_inputs, dg, plans, record)
    if reinit:
        reinitialise(model, seed)
    gone = {r.root for r in refused}
    decisions = [replace(p.group, kept=p.group.channels) if p.group.root in gone else p.group
                 for p in plans]
    return PruneResult(model=model, record=new_record, decisions=decisions, refused=refused)


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
        if prev.get("fixed"):
            n = int(gs.scores.numel())
            dec = Decision(np.ones(n, dtype=bool), np.nan, np.nan, np.nan, np.nan)
        else:
            dec = _decide_group(gs, rule)
        gd = GroupDecision(gs.root, gs.members, int(gs.scores.numel()), int(dec.keep.sum()),
                           dec.lower, dec.upper)
        logger.debug("group %s: %d -> %d channels (bounds %.4g, %.4g)", gs.root, gd.channels,
                     gd.kept, dec.lower, dec.upper)
        plans.append(_Plan(group[0].dep.target.module, group[0].dep.handler,
                           [int(i) for i in (~dec.keep).nonzero()[0]], gd, dec.keep))
    return plans


def _new_record(plans: Sequence[_Plan], record: dict[str, Any],
                skip: set[str] = frozenset()) -> dict[str, Any]:
    """The record after the planned cuts (less the groups in ``skip``)."""
    by_root = {g["root"]: g for g in record["groups"]}
    new_groups = {g["root"]: dict(g) for g in record["groups"]}
    for plan in plans:
        if plan.group.root in skip:
            continue
        prev_kept = by_root[plan.group.root]["kept"]
        new_groups[plan.group.root]["kept"] = [prev_kept[i] for i in range(len(prev_kept))
                                               if plan.keep[i]]
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION,
            "groups": [new_groups[g["root"]] for g in record["groups"]]}


def _apply(dg: tp.DependencyGraph, plans: Sequence[_Plan]) -> None:
    """Cut the planned channels in place."""
    for plan in plans:
        if plan.removed:
            group = dg.get_pruning_group(plan.root, plan.handler, plan.removed)
            if not dg.check_pruning_group(group):
                raise RuntimeError(f"Torch-Pruning refused to prune group {plan.group.root!r}")
            group.prune(record_history=False)


def _signature(out: Any) -> list[tuple[tuple[int, ...], torch.dtype]]:
    return [(tuple(t.shape), t.dtype) for t in output_tensors(out)]


def _describe(sig: list[tuple[tuple[int, ...], torch.dtype]]) -> str:
    return ", ".join(f"{list(shape)} {str(dtype).removeprefix('torch.')}" for shape, dtype in sig)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[:limit] + " ..."
    return f"{type(exc).__name__}: {text}"


def _forward(model: nn.Module, example_inputs: torch.Tensor) -> Any:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(example_inputs)
    finally:
        model.train(was_training)


def _check(model: nn.Module, example_inputs: torch.Tensor,
           expected: list[tuple[tuple[int, ...], torch.dtype]]) -> str | None:
    """Why the cut model is broken (its forward fails, or its outputs changed), or None."""
    try:
        got = _signature(_forward(model, example_inputs))
    except Exception as exc:  # noqa: BLE001 - whatever a user model raises is the reason
        return f"the model's forward fails after the cut ({_short(exc)})"
    if got != expected:
        return (f"the cut changes the model's outputs from {_describe(expected)} to "
                f"{_describe(got)}")
    return None


def _restore(model: nn.Module, saved: nn.Module) -> None:
    """Put ``model`` back to ``saved`` (a deep copy taken before a cut), keeping every
    module object (so references to them stay valid)."""
    for m, s in zip(model.modules(), saved.modules(), strict=True):
        state = {k: v for k, v in vars(s).items() if k != "_modules"}
        for k in [k for k in vars(m) if k != "_modules" and k not in state]:
            del m.__dict__[k]
        m.__dict__.update(state)


def _cut_checked(model: nn.Module, example_inputs: torch.Tensor, dg: tp.DependencyGraph,
                 plans: Sequence[_Plan], record: dict[str, Any]
                 ) -> tuple[dict[str, Any], list[Refusal]]:
    """Cut the planned channels in place, each cut checked (:func:`prune_model`)."""
    if not any(p.removed for p in plans):
        return _new_record(plans, record), []
    try:
        expected = _signature(_forward(model, example_inputs))
    except Exception as exc:
        raise PruneError(f"the model's forward fails on the example input before any cut "
                         f"({_short(exc)})") from exc
    saved = copy.deepcopy(model)
    try:
        _apply(dg, plans)
        why = _check(model, example_inputs, expected)
    except Exception as exc:  # noqa: BLE001 - Torch-Pruning's own failures included
        why = _short(exc)
    if why is None:
        return _new_record(plans, record), []
    # some group breaks the model: back to where it was, then one group at a time
    _restore(model, saved)
    refused: list[Refusal] = []
    for plan in plans:
        if not plan.removed:
            continue
        before = copy.deepcopy(model)
        try:
            _apply(_build_graph(model, example_inputs), [plan])
            why = _check(model, example_inputs, expected)
        except Exception as exc:  # noqa: BLE001
            why = f"Torch-Pruning cannot cut it ({_short(exc)})"
        if why is not None:
            _restore(model, before)
            refusal = Refusal(plan.group.root, plan.group.members, why)
            refused.append(refusal)
            logger.warning("%s", refusal.message())
    return _new_record(plans, record, {r.root for r in refused}), refused


def mark_fixed(model: nn.Module, example_inputs: torch.Tensor,
               record: dict[str, Any] | None = None,
               ignored_layers: Sequence[nn.Module] | None = None) -> dict[str, Any]:
    """``record`` (by default the model's :func:`initial_record`) with every group a cut
    would break marked ``"fixed"`` (the reason), which every later cut leaves whole.

    A trial on a copy of the model: half of every group's channels cut at once, the cut
    checked as :func:`prune_model` checks it; a group refused there is fixed, with a warning
    naming its layers and why.  ``model`` itself is not changed.  A group that survives a
    cut of half its channels is taken to survive the cuts the methods make (a channel count
    a structure requires, such as a grouped conv's or GroupNorm's blocks, is kept by every
    rule alike)."""
    trial = copy.deepcopy(model)
    ignored = list(ignored_layers) if ignored_layers is not None else default_ignored_layers(
        trial, example_inputs)
    record = initial_record(trial, example_inputs, ignored) if record is None else record
    _check_record(record)
    dg = _build_graph(trial, example_inputs)
    plans = _plan(trial, dg, ignored, record, RatioRule(ratio=0.5))
    _, refused = _cut_checked(trial, example_inputs, dg, plans, record)
    if not refused:
        return record
    why = {r.root: r.reason for r in refused}
    return {**record, "groups": [{**g, "fixed": why[g["root"]]} if g["root"] in why else g
                                 for g in record["groups"]]}


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


def zero_removed(model: nn.Module, record: dict[str, Any], example_inputs: torch.Tensor) -> None:
    """Zero, in place, what a cut of the unpruned ``model`` to ``record`` would remove along
    the output channels (the removed channels' filters and biases in every conv of their
    group, and the affine weights of the norms that follow), leaving every shape as it is.

    The removed channels then carry zeros, so where nothing downstream mixes channels before
    the next layer that reads them (a LayerNorm or GroupNorm over the channels would), the
    cut itself (:func:`rebuild`) changes no output: a check that a cut removes exactly the
    channels it says."""
    _check_record(record)
    dg = _build_graph(model, example_inputs)
    with torch.no_grad():
        for g in record["groups"]:
            removed = sorted(set(range(g["channels"])) - set(g["kept"]))
            if not removed:
                continue
            root = model.get_submodule(g["root"])
            pruner = dg.get_pruner_of_module(root)
            group = dg.get_pruning_group(root, pruner.prune_out_channels, removed)
            for item in group.items:
                if not dg.is_out_channel_pruning_fn(item.dep.handler):
                    continue
                m = item.dep.target.module
                for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                    if isinstance(p, torch.Tensor) and p.dim() >= 1:
                        p[list(item.idxs)] = 0.0


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
