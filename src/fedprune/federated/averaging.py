"""One round's averaging on the server: screen the replies, average the valid ones into the
global model and each trial model, bounded against the round's median update.

:func:`average_round` is what :meth:`~.server.PruningServer.run_round` does with a round's
replies; it returns the :class:`Averaged` outcome as a value.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import FedConfig
from .aggregate import (
    CHUNK,
    MIN_DIRECTION_REPLIES,
    Against,
    Clip,
    Rejection,
    _integer_median,
    fedavg,
    robust_aggregate,
    screen_replies,
)
from .transport import TrainReply
from .wire import round_model, round_trip

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Averaged:
    """What the server did with the replies of one round."""

    # replies that passed screening (0 when skipped): averaged, or left out for their
    # direction (``against``)
    clients: int = 0
    skipped: bool = False  # fewer valid replies than fed.min_replies: nothing averaged
    rejections: list[Rejection] = field(default_factory=list)  # screened out, by reply index
    trial_rejections: list[Rejection] = field(default_factory=list)  # trial copies left out
    clips: list[Clip] = field(default_factory=list)  # updates scaled down to the bound
    trial_clips: list[tuple[int, Clip]] = field(default_factory=list)  # (trial model, clip)
    # replies left out for pointing against the round's median update (fed.min_cosine)
    against: list[Against] = field(default_factory=list)
    trial_against: list[tuple[int, Against]] = field(default_factory=list)  # (trial, reply)


def average_round(rnd: int, fed: FedConfig, models: Sequence[nn.Module],
                  replies: Sequence[TrainReply], *, arch_version: int,
                  sizes: Sequence[int] | None, check_versions: bool = False) -> Averaged:
    """Screen ``replies`` (in client order) and average the valid ones into ``models[0]``;
    each trial model ``models[t]`` (t >= 1) over the copies of the clients whose reply to the
    global model was accepted and averaged (not left out for its direction), by the same
    rule (clipped against the median of its own
    copies' updates), so that every model of the round learns from the same clients in the
    same way.  A missing or unfit copy is a trial rejection.  Fewer valid replies than
    ``fed.min_replies`` skip the round: no model is averaged.

    With ``check_versions``, a reply whose architecture version is not ``arch_version`` (or
    missing) is rejected.  ``sizes``: the training samples each client holds (by client id),
    which bound the sample count its reply may claim (None: no bound).  Replies arrive
    rounded to ``fed.payload_dtype``.
    """
    wire = fed.payload_dtype
    max_samples = _limits(replies, sizes)
    main = [(round_trip(r.states[0], wire), r.n) for r in replies]  # type: ignore[arg-type]
    accepted, rejected = screen_replies(
        main, models[0].state_dict(),
        versions=[r.version for r in replies] if check_versions else None,
        arch_version=arch_version if check_versions else None, max_samples=max_samples)
    bad = {r.index for r in rejected}
    kept = [i for i in range(len(replies)) if i not in bad]  # accepted's reply indices
    clients = [r.client for r in replies]
    if len(accepted) < fed.min_replies:
        logger.warning("round %d skipped: %d valid replies, fed.min_replies = %d", rnd,
                       len(accepted), fed.min_replies)
        return Averaged(skipped=True, rejections=rejected)
    clips, against = _average_into(models[0], accepted, fed)
    clips = [c._replace(index=kept[c.index]) for c in clips]
    against = [a._replace(index=kept[a.index]) for a in against]
    _log_clips(rnd, "the model", clips, len(accepted), clients)
    _log_against(rnd, "the model", against, len(accepted), clients)
    trial_rejected: list[Rejection] = []
    trial_clips: list[tuple[int, Clip]] = []
    trial_against: list[tuple[int, Against]] = []
    for t, model in enumerate(models[1:]):
        copies = [None if r.states[t + 1] is None else round_trip(r.states[t + 1], wire)
                  for r in replies]
        unfit, clipped, left = _average_trial(t, model, copies, main,
                                              bad | {a.index for a in against}, fed,
                                              max_samples)
        trial_rejected += unfit
        trial_clips += [(t, c) for c in clipped]
        trial_against += [(t, a) for a in left]
        _log_clips(rnd, f"trial model {t}", clipped, len(replies) - len(bad), clients)
        _log_against(rnd, f"trial model {t}", left, len(replies) - len(bad), clients)
    return Averaged(clients=len(accepted), rejections=rejected,
                    trial_rejections=trial_rejected, clips=clips, trial_clips=trial_clips,
                    against=against, trial_against=trial_against)


def _limits(replies: Sequence[TrainReply], sizes: Sequence[int] | None
            ) -> list[int] | None:
    """Each reply's bound on the sample count it may claim: its client's training samples
    (a client the server does not know: 0, so that any count is refused)."""
    if sizes is None:
        return None
    return [int(sizes[r.client]) if 0 <= r.client < len(sizes) else 0 for r in replies]


def _average_into(model: nn.Module, replies: Sequence[tuple[StateDict, int]],
                  fed: FedConfig) -> tuple[list[Clip], list[Against]]:
    """Load the aggregate of ``replies`` (copies of ``model`` as sent) into ``model``; the
    clipped replies and those left out for their direction, by position in ``replies``."""
    out = robust_aggregate(replies, model.state_dict(), aggregator=fed.aggregator,
                           clip_factor=fed.clip_factor, trim_fraction=fed.trim_fraction,
                           min_cosine=fed.min_cosine)
    model.load_state_dict(out.state)
    round_model(model, fed.payload_dtype)  # what is sent next is the model itself
    return out.clips, out.against


def _average_trial(t: int, model: nn.Module, copies: Sequence[StateDict | None],
                   replies: Sequence[tuple[StateDict, int]], bad: set[int], fed: FedConfig,
                   max_samples: Sequence[int] | None
                   ) -> tuple[list[Rejection], list[Clip], list[Against]]:
    """Average trial model ``t`` over the copies of the clients whose main reply was
    accepted (``bad``: the rejected ones); the missing or unfit copies, the clipped ones
    and those left out for their direction, by reply index."""
    rejected: list[Rejection] = []
    pairs = [(i, c) for i, c in enumerate(copies) if i not in bad]
    for i, c in pairs:
        if c is None:
            rejected.append(Rejection(i, f"trial model {t}: no trained copy in the reply"))
    present = [(i, c) for i, c in pairs if c is not None]
    ok, unfit = screen_replies([(c, replies[i][1]) for i, c in present], model.state_dict(),
                               max_samples=None if max_samples is None
                               else [max_samples[i] for i, _ in present])
    rejected += [Rejection(present[r.index][0], f"trial model {t}: {r.reason}")
                 for r in unfit]
    clips: list[Clip] = []
    against: list[Against] = []
    if ok:
        unfit_at = {r.index for r in unfit}
        fit = [i for j, (i, _) in enumerate(present) if j not in unfit_at]
        clipped, left = _average_into(model, ok, fed)
        clips = [c._replace(index=fit[c.index]) for c in clipped]
        against = [a._replace(index=fit[a.index]) for a in left]
    if rejected:
        logger.warning("trial model %d: %d of %d copies missing or unfit; averaged over %d",
                       t, len(rejected), len(pairs), len(ok))
    return sorted(rejected), clips, against


def _log_clips(rnd: int, what: str, clips: Sequence[Clip], n: int,
               clients: Sequence[int]) -> None:
    if clips:
        logger.info("round %d: %s: clipped %d of %d updates to norm %.4g (clients %s, norms "
                    "%s)", rnd, what, len(clips), n, clips[0].bound,
                    [int(clients[c.index]) for c in clips],
                    ", ".join(f"{c.norm:.4g}" for c in clips))


def _log_against(rnd: int, what: str, against: Sequence[Against], n: int,
                 clients: Sequence[int]) -> None:
    if against:
        logger.warning("round %d: %s: left out %d of %d updates pointing against the round's "
                       "median update (clients %s, cosines %s)", rnd, what, len(against), n,
                       [int(clients[a.index]) for a in against],
                       ", ".join(f"{a.cosine:.3f}" for a in against))


def average_nested(rnd: int, fed: FedConfig, model: nn.Module,
                   subs: Sequence[nn.Module], maps: Sequence[dict[str, torch.Tensor]],
                   assign: Sequence[int], replies: Sequence[TrainReply], *,
                   arch_version: int, sizes: Sequence[int] | None,
                   check_versions: bool = False) -> Averaged:
    """Average replies that each trained one nested width of ``model`` (``replies[i]``
    trained ``subs[assign[j]]``, ``j`` its client's position in the plan, given per reply
    here: ``assign[i]``) into ``model``, coordinate by coordinate over the replies whose
    width holds that coordinate (``maps``: where each sub-model's values sit in ``model``).

    Screening is each reply's against the sub-model it was sent (``sizes`` as in
    :func:`average_round`).  Bounded influence as in
    :func:`average_round`, with the bound scaled to each update's size: an update is clipped
    when its root-mean-square per coordinate exceeds ``fed.clip_factor`` times the round's
    median (a narrow width's update is shorter only because it has fewer coordinates).  The
    aggregator (``fed.aggregator``) then runs per coordinate over the replies that hold it:
    the sample-weighted mean, or, every client counting once, the trimmed mean or the
    median.  A coordinate that no reply holds keeps its value.
    """
    wire = fed.payload_dtype
    limits = _limits(replies, sizes)
    full = model.state_dict()
    accepted: list[tuple[int, StateDict, int]] = []  # (reply index, state, n)
    rejected: list[Rejection] = []
    for i, r in enumerate(replies):
        sent = subs[assign[i]].state_dict()
        state = round_trip(r.states[0], wire)  # type: ignore[arg-type]
        _, bad = screen_replies(
            [(state, r.n)], sent, versions=[r.version] if check_versions else None,
            arch_version=arch_version if check_versions else None,
            max_samples=None if limits is None else limits[i])
        if bad:
            rejected.append(Rejection(i, bad[0].reason))
        else:
            accepted.append((i, state, r.n))
    if len(accepted) < fed.min_replies:
        logger.warning("round %d skipped: %d valid replies, fed.min_replies = %d", rnd,
                       len(accepted), fed.min_replies)
        return Averaged(skipped=True, rejections=rejected)
    # each accepted update, as (reply index, per key: (flat positions, float64 values), n)
    updates = []
    for i, state, n in accepted:
        sent = subs[assign[i]].state_dict()
        m = maps[assign[i]]
        upd = {k: (m[k], (state[k].to(torch.float64) - sent[k].to(torch.float64)).reshape(-1))
               for k in m}
        updates.append((i, upd, n))
    clips: list[Clip] = []
    if fed.clip_factor > 0:
        norms = [math.sqrt(sum(float(v.pow(2).sum()) for _, v in u.values()))
                 for _, u, _ in updates]
        numels = [sum(v.numel() for _, v in u.values()) for _, u, _ in updates]
        rms = [nm / math.sqrt(max(sz, 1)) for nm, sz in zip(norms, numels, strict=True)]
        level = fed.clip_factor * statistics.median(rms)
        for j, (i, u, n) in enumerate(updates):
            bound = level * math.sqrt(max(numels[j], 1))
            if norms[j] > bound:
                scale = (bound / norms[j]) ** 2
                updates[j] = (i, {k: (p, v * scale) for k, (p, v) in u.items()}, n)
                clips.append(Clip(i, norms[j], bound))
    against: list[Against] = []
    if fed.min_cosine > -1 and len(updates) >= MIN_DIRECTION_REPLIES:
        against = _nested_directions(full, updates, fed.min_cosine)
        if len(against) < len(updates):
            gone = {a.index for a in against}
            updates = [u for u in updates if u[0] not in gone]
            averaged = [a for a in accepted if a[0] not in gone]
        else:
            logger.warning("round %d: every update points against the round's median update: "
                           "none is left out", rnd)
            against = []
    else:
        averaged = accepted
    new: StateDict = {}
    for key, ref in full.items():
        if not ref.is_floating_point() or key not in maps[0]:
            # not pruned (BN's num_batches_tracked): as the usual average treats integers
            kept = [({key: state[key]}, n) for _, state, n in averaged]
            new[key] = (fedavg(kept)[key] if fed.aggregator == "fedavg" and fed.clip_factor == 0
                        else _integer_median(kept, key))
            continue
        out = ref.detach().to(torch.float64).reshape(-1).clone()
        for start in range(0, ref.numel(), CHUNK):  # bounds memory: replies x CHUNK values
            stop = min(ref.numel(), start + CHUNK)
            rows = _rows(updates, key, start, stop)
            delta, held = _per_coordinate(rows, [n for _, _, n in updates], fed)
            part = out[start:stop]
            part[held] += delta[held]
        new[key] = out.view_as(ref).to(ref.dtype)
    model.load_state_dict(new)
    round_model(model, wire)
    clients = [r.client for r in replies]
    _log_clips(rnd, "the model (nested widths)", clips, len(accepted), clients)
    _log_against(rnd, "the model (nested widths)", against, len(accepted), clients)
    return Averaged(clients=len(accepted), rejections=rejected, clips=clips, against=against)


def _rows(updates: Sequence[tuple[int, dict[str, tuple[torch.Tensor, torch.Tensor]], int]],
          key: str, start: int, stop: int) -> torch.Tensor:
    """Coordinates ``start:stop`` of entry ``key`` of every update, one row per update (nan
    where its width does not hold the coordinate)."""
    rows = torch.full((len(updates), stop - start), math.nan, dtype=torch.float64)
    for j, (_, u, _) in enumerate(updates):
        pos, val = u[key]
        sel = (pos >= start) & (pos < stop)
        rows[j, pos[sel] - start] = val[sel]
    return rows


def _nested_directions(full: StateDict,
                       updates: Sequence[tuple[int, dict[str, tuple[torch.Tensor,
                                                                    torch.Tensor]], int]],
                       min_cosine: float) -> list[Against]:
    """The updates (of nested widths) whose cosine with the round's median update is below
    ``min_cosine``: the median taken per coordinate over the updates that hold it, the
    cosine over the coordinates of the update's width that at least
    :data:`~.aggregate.MIN_DIRECTION_REPLIES` updates hold (where fewer do, the median is
    the update's own value or a mean it steers: a wide width could point its own
    coordinates where it likes and pass); by reply index (as
    :func:`~.aggregate.screen_directions` does for updates of one shape)."""
    center: dict[str, torch.Tensor] = {}
    for key, ref in full.items():
        if key not in updates[0][1]:
            continue
        c = torch.empty(ref.numel(), dtype=torch.float64)
        for start in range(0, ref.numel(), CHUNK):
            stop = min(ref.numel(), start + CHUNK)
            rows = _rows(updates, key, start, stop)
            shared = (~torch.isnan(rows)).sum(dim=0) >= MIN_DIRECTION_REPLIES
            c[start:stop] = torch.where(shared, _column_median(rows),
                                        torch.full_like(rows[0], math.nan))
        center[key] = c
    out = []
    for i, u, _ in updates:
        dot = nu = nc = 0.0
        for key, (pos, val) in u.items():
            cv = center[key][pos]
            shared = ~torch.isnan(cv)
            val, cv = val[shared], cv[shared]
            dot += float((val * cv).sum())
            nu += float(val.pow(2).sum())
            nc += float(cv.pow(2).sum())
        cos = dot / math.sqrt(nu * nc) if nu > 0 and nc > 0 else 1.0
        if cos < min_cosine:
            out.append(Against(i, cos))
    return out


def _sorted_held(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column of ``rows`` with its held (not nan) values sorted first (0 after them),
    and how many each holds (at least 1)."""
    held_mask = ~torch.isnan(rows)
    ordered, _ = torch.sort(torch.where(held_mask, rows, torch.full_like(rows, math.inf)),
                            dim=0)
    ordered = torch.where(torch.isinf(ordered), torch.zeros_like(ordered), ordered)
    return ordered, held_mask.sum(dim=0).clamp(min=1)


def _column_median(rows: torch.Tensor) -> torch.Tensor:
    """The median of each column of ``rows`` over its held (not nan) values (the mean of
    the two middle ones for an even count); 0 where none is held."""
    ordered, c = _sorted_held(rows)
    lo = ordered.gather(0, ((c - 1) // 2)[None]).squeeze(0)
    hi = ordered.gather(0, (c // 2)[None]).squeeze(0)
    return (lo + hi) / 2


def _per_coordinate(rows: torch.Tensor, weights: Sequence[int], fed: FedConfig
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The aggregate of each column of ``rows`` (one row per reply, nan where the reply
    does not hold the coordinate) over its held values, and which columns are held."""
    held_mask = ~torch.isnan(rows)
    count = held_mask.sum(dim=0)
    held = count > 0
    if fed.aggregator == "fedavg":
        w = torch.tensor([float(n) for n in weights], dtype=torch.float64)[:, None]
        wsum = (w * held_mask).sum(dim=0)
        total = torch.where(held_mask, rows * w, torch.zeros_like(rows)).sum(dim=0)
        return total / wsum.clamp(min=1e-300), held
    if fed.aggregator == "median":
        return _column_median(rows), held
    ordered, c = _sorted_held(rows)
    k = torch.minimum(torch.floor(fed.trim_fraction * c.to(torch.float64)).long(),
                      (c - 1) // 2)
    csum = torch.cat([torch.zeros_like(ordered[:1]), ordered.cumsum(dim=0)])
    top = csum.gather(0, (c - k)[None]).squeeze(0)
    bottom = csum.gather(0, k[None]).squeeze(0)
    return (top - bottom) / (c - 2 * k).to(torch.float64), held
