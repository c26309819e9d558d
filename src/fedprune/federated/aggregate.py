"""FedAvg: the sample-weighted mean of client weights, after checking that replies agree."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch

logger = logging.getLogger(__name__)

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


class Rejection(NamedTuple):
    """A client reply left out of aggregation, and why."""

    index: int
    reason: str


def screen_replies(
    replies: Sequence[tuple[StateDict, int]],
    reference: StateDict,
    *,
    versions: Sequence[int] | None = None,
    arch_version: int | None = None,
    max_samples: int | None = None,
) -> tuple[list[tuple[StateDict, int]], list[Rejection]]:
    """Split replies into those fit to average and those rejected (with the reason).

    A reply is rejected when its keys or shapes differ from ``reference`` (the weights the
    server sent), when a floating tensor holds NaN or Inf, when its architecture version is
    not ``arch_version``, or when its sample count is not an integer in ``[1, max_samples]``.
    """
    ref_shapes = {k: tuple(v.shape) for k, v in reference.items()}
    accepted: list[tuple[StateDict, int]] = []
    rejected: list[Rejection] = []
    for i, (state, n) in enumerate(replies):
        reason = _reply_problem(state, n, ref_shapes, max_samples)
        if (reason is None and versions is not None and arch_version is not None
                and versions[i] != arch_version):
            reason = f"architecture version {versions[i]!r}, expected {arch_version}"
        if reason is None:
            accepted.append((state, n))
        else:
            rejected.append(Rejection(i, reason))
            logger.warning("rejected reply %d: %s", i, reason)
    return accepted, rejected


def _reply_problem(
    state: object, n: object, ref_shapes: dict[str, tuple[int, ...]], max_samples: int | None
) -> str | None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"sample count {n!r} is not a positive integer"
    if max_samples is not None and n > max_samples:
        return f"sample count {n} exceeds the plausible maximum {max_samples}"
    if not isinstance(state, dict):
        return f"weights are a {type(state).__name__}, not a mapping of tensors"
    if set(state) != set(ref_shapes):
        diff = sorted(set(state) ^ set(ref_shapes))
        return f"keys differ from the model's at {diff[:3]}"
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            return f"{k} is a {type(v).__name__}, not a tensor"
        if tuple(v.shape) != ref_shapes[k]:
            return f"{k} has shape {tuple(v.shape)}, expected {ref_shapes[k]}"
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return f"{k} holds NaN or Inf"
    return None
