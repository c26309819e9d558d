"""FedAvg: the sample-weighted mean of client weights, after checking that replies agree."""

from __future__ import annotations

from collections.abc import Sequence

import torch

StateDict = dict[str, torch.Tensor]


class AggregationError(ValueError):
    """Client replies cannot be averaged (keys, shapes or sample counts disagree)."""


def check_replies(replies: Sequence[tuple[StateDict, int]]) -> None:
    """Raise :class:`AggregationError` unless all replies have equal keys and shapes."""
    if not replies:
        raise AggregationError("no client replies to aggregate")
    ref_state, _ = replies[0]
    ref = {k: tuple(v.shape) for k, v in ref_state.items()}
    for i, (state, n) in enumerate(replies):
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise AggregationError(f"reply {i}: sample count must be a positive integer, got {n!r}")
        if set(state) != set(ref):
            diff = sorted(set(state) ^ set(ref))
            raise AggregationError(f"reply {i}: keys differ from reply 0 at {diff[:5]}")
        for k, v in state.items():
            if tuple(v.shape) != ref[k]:
                raise AggregationError(
                    f"reply {i}: {k} has shape {tuple(v.shape)}, reply 0 has {ref[k]}"
                )


def fedavg(replies: Sequence[tuple[StateDict, int]]) -> StateDict:
    """Average ``[(state_dict, n_examples), ...]`` weighted by ``n_examples``.

    Floating tensors are averaged in float64 and cast back; integer buffers (e.g. BN's
    ``num_batches_tracked``) get the rounded weighted mean.
    """
    check_replies(replies)
    total = sum(n for _, n in replies)
    out: StateDict = {}
    for key, ref in replies[0][0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for state, n in replies:
            acc += state[key].to(torch.float64) * (n / total)
        out[key] = acc.to(ref.dtype) if ref.is_floating_point() else acc.round().to(ref.dtype)
    return out
