"""Aggregation of client replies: screening, norm clipping and the averaging rules.

* :func:`screen_replies` drops replies that cannot be averaged (keys, shapes, NaN/Inf,
  sample counts, architecture version);
* :func:`clip_updates` bounds each reply's *update* (its weights minus the weights the server
  sent) by ``clip_factor`` times the median update norm of the round;
* :func:`screen_directions` leaves out the replies whose update points against the
  coordinate-wise median update of the round (a sign-flipped update, at any scale);
* :func:`fedavg` (the sample-weighted mean), :func:`trimmed_mean` and :func:`median`
  (coordinate-wise, every client counting once) average what is left;
* :func:`robust_aggregate` is the server's rule: clipping, the directions, then the chosen
  average.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

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


def fedavg(replies: Sequence[tuple[StateDict, int]], *,
           integers: Literal["mean", "median"] = "mean") -> StateDict:
    """Average ``[(state_dict, n_examples), ...]`` weighted by ``n_examples``.

    Floating tensors are averaged in float64 and cast back.  Integer buffers (e.g. BN's
    ``num_batches_tracked``) get the rounded weighted mean, or with ``integers="median"``
    their coordinate-wise lower median (see :func:`median`).
    """
    check_replies(replies)
    total = sum(n for _, n in replies)
    out: StateDict = {}
    for key, ref in replies[0][0].items():
        if not ref.is_floating_point() and integers == "median":
            out[key] = _integer_median(replies, key)
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for state, n in replies:
            acc += state[key].to(torch.float64) * (n / total)
        out[key] = acc.to(ref.dtype) if ref.is_floating_point() else acc.round().to(ref.dtype)
    return out


# elements of one tensor whose values over all replies are sorted at a time (bounds memory:
# replies x CHUNK float64 values)
CHUNK = 1 << 18


def _coordinatewise(replies: Sequence[tuple[StateDict, int]], key: str,
                    reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``reduce`` applied to every coordinate of floating tensor ``key``: it gets the sorted
    values of the replies (float64, one row per reply, ascending) and returns one row."""
    ref = replies[0][0][key]
    flat = [state[key].reshape(-1) for state, _ in replies]
    out = torch.empty(ref.numel(), dtype=torch.float64)
    for start in range(0, ref.numel(), CHUNK):
        block = torch.stack([f[start:start + CHUNK].to(torch.float64) for f in flat])
        out[start:start + CHUNK] = reduce(torch.sort(block, dim=0).values)
    return out.reshape(ref.shape).to(ref.dtype)


def _integer_median(replies: Sequence[tuple[StateDict, int]], key: str) -> torch.Tensor:
    """The coordinate-wise lower median of integer tensor ``key``: a value one of the replies
    holds (counters like ``num_batches_tracked`` are not weights; one client cannot move
    this)."""
    ref = replies[0][0][key]
    stacked = torch.stack([state[key].to(torch.int64) for state, _ in replies])
    return torch.sort(stacked, dim=0).values[(len(replies) - 1) // 2].to(ref.dtype)


def _mean_of_rows(rows: torch.Tensor) -> torch.Tensor:
    """Mean of ``rows`` (float64), summed row by row: the same bits whatever the threads."""
    acc = rows[0].clone()
    for r in range(1, rows.shape[0]):
        acc += rows[r]
    return acc / rows.shape[0]


def trim_count(m: int, fraction: float) -> int:
    """Values cut from *each* end of ``m`` by a trimmed mean of ``fraction``:
    ``floor(fraction * m)``, at most ``(m - 1) // 2`` so that one value always remains."""
    return min(math.floor(fraction * m), (m - 1) // 2)


def trimmed_mean(replies: Sequence[tuple[StateDict, int]], fraction: float) -> StateDict:
    """Coordinate-wise trimmed mean: at every coordinate, the :func:`trim_count` largest and
    smallest values are dropped and the rest averaged, every client counting once (sample
    counts are the clients' own claims).  Integer tensors get their lower median."""
    check_replies(replies)
    k = trim_count(len(replies), fraction)
    m = len(replies)
    out: StateDict = {}
    for key, ref in replies[0][0].items():
        out[key] = (_coordinatewise(replies, key, lambda rows: _mean_of_rows(rows[k:m - k]))
                    if ref.is_floating_point() else _integer_median(replies, key))
    return out


def median(replies: Sequence[tuple[StateDict, int]]) -> StateDict:
    """Coordinate-wise median, every client counting once (the mean of the two middle values
    for an even count).  Integer tensors get their lower median, a value one reply holds."""
    check_replies(replies)
    m = len(replies)

    def middle(rows: torch.Tensor) -> torch.Tensor:
        return rows[m // 2] if m % 2 else (rows[m // 2 - 1] + rows[m // 2]) / 2

    out: StateDict = {}
    for key, ref in replies[0][0].items():
        out[key] = (_coordinatewise(replies, key, middle) if ref.is_floating_point()
                    else _integer_median(replies, key))
    return out


class Clip(NamedTuple):
    """A reply whose update was longer than the round's bound, and was scaled down to
    ``bound ** 2 / norm``."""

    index: int  # the reply's position in the replies given
    norm: float  # the L2 norm of its update as sent
    bound: float  # clip_factor x the round's median update norm


def update_norm(state: StateDict, reference: StateDict) -> float:
    """L2 norm of ``state - reference`` over the floating tensors (weights and float buffers
    like BN running statistics), in float64; integer tensors are not part of it."""
    total = 0.0
    for key, ref in reference.items():
        if ref.is_floating_point():
            diff = state[key].to(torch.float64) - ref.to(torch.float64)
            total += float(diff.pow(2).sum())
    return math.sqrt(total)


def clip_updates(replies: Sequence[tuple[StateDict, int]], reference: StateDict,
                 factor: float) -> tuple[list[tuple[StateDict, int]], list[Clip]]:
    """Bound every reply's update by ``factor`` x the median update norm of ``replies``.

    The update of a reply is its weights minus ``reference`` (the weights the server sent).
    One whose norm exceeds the bound is scaled by ``(bound / norm) ** 2``, to length
    ``bound ** 2 / norm``: at most the bound, about the bound just beyond it, and ``1/k`` of
    it for an update ``k`` times the bound, so that a client gains nothing by sending a
    longer update and a wildly scaled one hardly counts (scaling to the bound itself would
    leave a sign-flipped update a full bound of pull).  Its floating tensors become
    ``reference + scale * update`` (BN running statistics too, so that they stay between the
    sent ones and the client's); integer tensors are left as they are.  Replies within the
    bound are passed on unchanged.  Deterministic: the same replies give the same bits.
    """
    norms = [update_norm(state, reference) for state, _ in replies]
    bound = factor * statistics.median(norms)
    out: list[tuple[StateDict, int]] = []
    clips: list[Clip] = []
    for i, ((state, n), norm) in enumerate(zip(replies, norms, strict=True)):
        if norm > bound:
            scale = (bound / norm) ** 2
            state = {k: (ref.to(torch.float64) + (state[k].to(torch.float64)
                                                   - ref.to(torch.float64)) * scale
                         ).to(state[k].dtype) if ref.is_floating_point() else state[k]
                     for k, ref in reference.items()}
            clips.append(Clip(i, norm, bound))
        out.append((state, n))
    return out, clips


class Against(NamedTuple):
    """A reply whose update points against the round's median update, left out."""

    index: int  # the reply's position in the replies given
    cosine: float  # the cosine of its update with the round's median update


# fewest replies among which a direction is judged: the median of two is their mean, which
# a long enough update of one of them would steer
MIN_DIRECTION_REPLIES = 3


def _cosine(u: StateDict, c: StateDict) -> float:
    """The cosine of ``u`` and ``c`` over ``c``'s keys (1 where either is zero)."""
    dot = sum(float((u[k] * c[k]).sum()) for k in c)
    nu = math.sqrt(sum(float(u[k].pow(2).sum()) for k in c))
    nc = math.sqrt(sum(float(c[k].pow(2).sum()) for k in c))
    return dot / (nu * nc) if nu > 0 and nc > 0 else 1.0


def screen_directions(replies: Sequence[tuple[StateDict, int]], reference: StateDict,
                      min_cosine: float) -> tuple[list[tuple[StateDict, int]], list[Against]]:
    """Leave out the replies whose update points against the round's: its cosine with the
    coordinate-wise median of the round's updates (weights minus ``reference``, floating
    tensors) is below ``min_cosine``.

    A client cannot move the median of the others' coordinates further than their own
    values reach, so while most clients are honest it points where they do, and an update
    that pulls the model back (a sign-flipped one, at any scale) is left out whole.  With
    fewer than :data:`MIN_DIRECTION_REPLIES` replies, or when every reply would go, all are
    kept.  Deterministic: the same replies give the same choice."""
    if len(replies) < MIN_DIRECTION_REPLIES:
        return list(replies), []
    floats = [k for k, v in reference.items() if v.is_floating_point()]
    ups = [({k: state[k].to(torch.float64) - reference[k].to(torch.float64) for k in floats},
            n) for state, n in replies]
    center = median(ups)
    kept, against = [], []
    for i, ((state, n), (u, _)) in enumerate(zip(replies, ups, strict=True)):
        cos = _cosine(u, center)
        if cos < min_cosine:
            against.append(Against(i, cos))
        else:
            kept.append((state, n))
    if not kept:
        logger.warning("every update points against the round's median update: none is "
                       "left out")
        return list(replies), []
    return kept, against


AGGREGATORS = ("fedavg", "trimmed_mean", "median")


class Aggregate(NamedTuple):
    """What :func:`robust_aggregate` made of a round's replies."""

    state: StateDict  # the averaged weights
    clips: list[Clip]  # replies scaled down to the round's bound
    against: list[Against]  # replies left out for pointing against the round's updates


def robust_aggregate(replies: Sequence[tuple[StateDict, int]], reference: StateDict, *,
                     aggregator: str = "fedavg", clip_factor: float = 0.0,
                     trim_fraction: float = 0.0, min_cosine: float = -1.0) -> Aggregate:
    """The server's aggregation rule: clip, screen the directions, then average.

    With ``clip_factor`` > 0 every update is first bounded by :func:`clip_updates`; with
    ``min_cosine`` > -1 the replies whose update points against the round's median update
    are then left out (:func:`screen_directions`); then ``aggregator`` averages the rest:
    ``"fedavg"`` (:func:`fedavg`), ``"trimmed_mean"`` (:func:`trimmed_mean` of
    ``trim_fraction``) or ``"median"`` (:func:`median`).  Integer tensors get the rounded
    weighted mean under plain FedAvg (no clipping) and their lower median otherwise.
    Indices in the clips and the directions left out are positions in ``replies``.
    """
    if aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {aggregator!r}: choose one of {AGGREGATORS}")
    check_replies(replies)
    clips: list[Clip] = []
    if clip_factor > 0:
        replies, clips = clip_updates(replies, reference, clip_factor)
    against: list[Against] = []
    if min_cosine > -1:
        replies, against = screen_directions(replies, reference, min_cosine)
    if aggregator == "trimmed_mean":
        return Aggregate(trimmed_mean(replies, trim_fraction), clips, against)
    if aggregator == "median":
        return Aggregate(median(replies), clips, against)
    return Aggregate(fedavg(replies, integers="median" if clip_factor > 0 else "mean"), clips,
                     against)


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
    max_samples: int | Sequence[int] | None = None,
) -> tuple[list[tuple[StateDict, int]], list[Rejection]]:
    """Split replies into those fit to average and those rejected (with the reason).

    A reply is rejected when its keys, shapes or dtypes differ from ``reference`` (the
    weights the server sent), when a floating tensor holds NaN or Inf, when its architecture
    version is not ``arch_version``, or when its sample count is not an integer in
    ``[1, max_samples]`` (one bound for every reply, or one per reply: the training samples
    the server knows its client holds).
    """
    limits = (list(max_samples) if isinstance(max_samples, Sequence)
              else [max_samples] * len(replies))
    if len(limits) != len(replies):
        raise ValueError(f"{len(limits)} sample-count bounds for {len(replies)} replies")
    ref_shapes = {k: (tuple(v.shape), v.dtype) for k, v in reference.items()}
    accepted: list[tuple[StateDict, int]] = []
    rejected: list[Rejection] = []
    for i, (state, n) in enumerate(replies):
        reason = _reply_problem(state, n, ref_shapes, limits[i])
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
    state: object, n: object, ref_shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
    max_samples: int | None
) -> str | None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"sample count {n!r} is not a positive integer"
    if max_samples is not None and n > max_samples:
        return f"sample count {n} exceeds the {max_samples} training samples its client holds"
    if not isinstance(state, dict):
        return f"weights are a {type(state).__name__}, not a mapping of tensors"
    if set(state) != set(ref_shapes):
        diff = sorted(set(state) ^ set(ref_shapes))
        return f"keys differ from the model's at {diff[:3]}"
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            return f"{k} is a {type(v).__name__}, not a tensor"
        shape, dtype = ref_shapes[k]
        if tuple(v.shape) != shape:
            return f"{k} has shape {tuple(v.shape)}, expected {shape}"
        if v.dtype != dtype:
            return f"{k} has dtype {v.dtype}, expected {dtype}"
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return f"{k} holds NaN or Inf"
    return None
