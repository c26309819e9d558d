"""Data-free filter scores for a Torch-Pruning group.

The score of an output channel is the L1 norm of its filter (sum of ``|w|`` over input channels
and kernel) in a conv layer whose *outputs* the group prunes.  A group couples several convs
(a residual add ties all convs that feed it; a depthwise conv follows its producer), so the
group score of a channel is the mean of its members' filter L1 norms.  Input-channel slices of
consumer layers do not count: the rule is about filters, as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GroupScores:
    """Scores of one prunable group, indexed by the root layer's output channels."""

    root: str  # module name of the group's root conv
    members: tuple[str, ...]  # convs whose outputs the group prunes (the root first)
    scores: torch.Tensor  # float64, shape [channels]
    channel_groups: int = 1  # >1: a grouped conv splits the channels into this many blocks
    min_per_block: int = 1  # fewest channels each block must keep
    prunable: bool = True  # False: a grouped conv sees the channels through an index shift


def filter_l1(conv: nn.Conv2d, idxs: list[int]) -> torch.Tensor:
    """L1 norm of the given output filters of ``conv`` (float64)."""
    w = conv.weight.detach()[idxs]
    return w.abs().flatten(1).sum(dim=1).to(torch.float64)


def group_l1_scores(group, dg, module_names: dict[nn.Module, str]) -> GroupScores:
    """Combined L1 score per root channel of a Torch-Pruning ``group`` (full index set)."""
    root_item = group[0]
    n = len(root_item.idxs)
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    members: list[str] = []
    channel_groups, prunable, min_per_block = 1, True, 1
    for item in group.items:
        module = item.dep.target.module
        if isinstance(module, nn.Conv2d) and module.groups == module.out_channels > 1:
            # Torch-Pruning's depthwise pruner assumes one input channel per group
            prunable = prunable and module.in_channels == module.groups
        elif isinstance(module, nn.Conv2d) and module.groups > 1:
            # a grouped conv keeps its block structure only if every block loses the same
            # local positions; that needs the group's channels to map 1:1 onto the conv's
            channel_groups = math.lcm(channel_groups, module.groups)
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                # keep >= 2 outputs per block, or the conv would look depthwise to Torch-Pruning
                min_per_block = 2
            if list(item.idxs) != list(item.root_idxs):
                prunable = False
        elif isinstance(module, nn.GroupNorm) and module.num_groups > 1:
            # GroupNorm normalises blocks of num_channels / num_groups channels: a cut keeps
            # a multiple of num_groups channels, the same local positions of every block, so
            # each block keeps its own channels (as for a grouped conv)
            channel_groups = math.lcm(channel_groups, module.num_groups)
            if list(item.idxs) != list(item.root_idxs):
                prunable = False
        if not isinstance(module, nn.Conv2d) or not dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        root_idxs = torch.as_tensor(item.root_idxs, dtype=torch.long)
        total.index_add_(0, root_idxs, filter_l1(module, list(item.idxs)))
        count.index_add_(0, root_idxs, torch.ones(len(root_idxs), dtype=torch.float64))
        name = module_names[module]
        if name not in members:
            members.append(name)
    if bool((count == 0).any()):
        raise RuntimeError(f"group rooted at {members[:1]} has channels without a conv filter")
    order = {name: i for i, name in enumerate(module_names.values())}
    members.sort(key=order.__getitem__)
    if n % channel_groups:
        prunable = False
    return GroupScores(root=members[0], members=tuple(members), scores=total / count,
                       channel_groups=channel_groups, prunable=prunable,
                       min_per_block=min_per_block)

