"""fedprune's automatic method: the search for the size rides inside the training.

The question a user asks is "how small can the model get before it costs accuracy?", and
the server, which sees no data, answers it from what the clients measure -- without asking
them for more work or traffic than dense FedAvg would while it searches:

1. **Nested widths.**  The candidate sizes are a *ladder* of widths of the one model (the
   full width times 1/8, 2/8, ..., 1, each group's channel count on a multiple of
   ``prune.round_to``, :func:`~fedprune.pruning.widths.ladder`).  A width's sub-model keeps,
   in each group, its channels of highest L1 norm in the global model (ordered again every
   round: data-free, nothing to send), so a narrower width is part of every wider one.
2. **Ordered dropout.**  Until the size is decided, each sampled client trains *one* width
   (the ``width_draws`` stream): the full width with probability 1/2 -- every cost is
   measured against it, so it should learn about as dense FedAvg's model does -- else one of
   the narrower widths, uniformly; it receives and returns that sub-model only; the server
   averages the updates coordinate by coordinate over the clients whose width holds it
   (:func:`~fedprune.federated.averaging.average_nested`).  Each of its batches trains that
   width with probability 1/2, else one of the narrower widths inside it
   (``prune.ordered_dropout = "batch"``, the default; ``"client"``: every batch at the
   client's width).
   No client trains more than the full model, so a client never spends more than dense
   FedAvg's would (a client that also validates in that round draws from the widths whose
   training and validation together fit).
3. **A curve per judgement.**  From ``prune.start_round``, every ``prune.interval`` rounds,
   up to ``prune.val_clients`` clients evaluate the full model and every narrower width in
   one query (forward passes only; the widths travel as the channels they keep, not as
   weights).  In a model with batch norm each client first re-estimates every width's
   running statistics on up to ``prune.bn_calibration`` of its training samples: those in
   the model were accumulated by all the widths together, and a narrow width measured with
   them looks worse than it is.  Each width's *cost* is the full width's validation accuracy minus its own, on
   the same samples, with its standard error from the clients' paired differences (as
   ``auto-paired`` does), trimmed over clients (``prune.trim_fraction``:
   :func:`~fedprune.pruners.auto.paired`), so that a few clients answering falsely move it
   no further than the honest clients' differences reach.  The width chosen is the narrowest whose cost (a negative one
   counted as 0: a width cut from the full one gains nothing but noise) plus
   ``prune.confidence_z`` standard errors fits ``prune.max_accuracy_drop``.
4. **One cut.**  From the second judgement on (``prune.decide = "pooled"``, the default),
   each width's cost and standard error are pooled over the last two judgements (weighted
   by their precision: :meth:`NestedPruner._pooled`) and the narrowest width that fits so
   is cut at once; with ``"agree"``, when two judgements in a
   row choose the same width.  At ``prune.max_prune_round`` (or the run's last round) the
   width chosen then is cut.  The cut is exactly the sub-model that was validated, and it
   trains on as an ordinary, smaller dense network; if no narrower width fits, nothing is
   cut.  Pruning then stops.

Each round's record has a ``nested`` entry (the state and, for a judgement, every width's
size, accuracy, cost and whether it fits); ``summary.json`` a ``nested`` summary.  The state
is a small JSON value in the checkpoint: the widths of a round are rebuilt from the global
model, so a run resumes bit for bit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import torch
from torch import nn

from .. import seeds
from ..config import ConfigError, ExperimentConfig
from ..metrics import count_flops, n_params
from ..models import ModelSpec
from ..pruning.widths import (
    channel_scores,
    fixed_groups,
    gather_maps,
    has_batchnorm,
    keep_of,
    ladder,
    sub_model,
    sub_record,
)
from .auto import paired
from .base import Keep, Nested, Pruner, PruneStep, Validate, validation_clients
from .registry import register

logger = logging.getLogger(__name__)

# the share of the clients that train the full width while the method searches
FULL_SHARE = 0.5

Status = Literal["search", "stopped"]
STATUSES: tuple[str, ...] = get_args(Status)


@dataclass(frozen=True)
class NestedState:
    """The automatic method's state over a run (JSON-able; in every checkpoint)."""

    status: Status = "search"
    judged: tuple[dict[str, Any], ...] = ()  # every judgement: round, choice, each width
    cut_round: int | None = None  # the round the model was cut (None: not cut)
    widths: dict[str, int] | None = None  # the widths it was cut to
    stopped_round: int | None = None
    stop_reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"automatic method: unknown status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "judged": list(self.judged)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NestedState:
        return cls(**{**d, "judged": tuple(d.get("judged", ()))})


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _se_floor(se: float, samples: int) -> float:
    """A judgement's standard error, at least one sample's share of its accuracy."""
    return max(float(se), 1.0 / max(int(samples), 1))


@register("auto")
class NestedPruner(Pruner):
    """The automatic method (module docstring); :attr:`state` is a new
    :class:`NestedState` after every step."""

    record_key = "nested"

    def __init__(self, cfg: ExperimentConfig, **start: Any) -> None:
        super().__init__(cfg, **start)
        p = cfg.prune
        if p.enabled and not self.val_pool:
            raise ConfigError("prune.method = 'auto' measures each width on the clients' "
                              "validation splits, and no client holds one: set "
                              "data.val_fraction > 0 (the default is 0.1), or choose "
                              "prune.method = 'boundary' or 'ratio'")
        spec: ModelSpec = start["spec"]
        self.full = {g["root"]: int(g["channels"]) for g in spec.record["groups"]}
        # groups the widths leave whole: a grouped conv's blocks, a group cut cannot align
        self.ladder = ladder(self.full, p.round_to, p.min_channels,
                             fixed=fixed_groups(start["model"], self.example,
                                                record=spec.record))
        self.flops_initial = int(start["flops_initial"])
        # this round's validating clients that validate nothing (their compute would exceed
        # a dense client's): set by nested() for the round, read by the judgement
        self._excused: set[int] = set()
        # training samples a validating client re-estimates batch-norm statistics on first
        self.calibrate = p.bn_calibration if has_batchnorm(start["model"]) else 0
        self.state = NestedState()
        if p.enabled and len(self.ladder) < 2:
            self.state = NestedState(status="stopped", stopped_round=0,
                                     stop_reason="no width narrower than the full one "
                                     f"(prune.round_to = {p.round_to})")

    # ------------------------------------------------------------------ the widths

    def _records(self, model: nn.Module, spec: ModelSpec) -> list[dict[str, Any]]:
        """The sub-model records of the ladder's widths, on ``model``'s L1 order now."""
        scores = channel_scores(model, self.example)
        return [sub_record(spec.record, scores, w) for w in self.ladder]

    def _judging(self, rnd: int) -> bool:
        p = self.cfg.prune
        return (self.state.status == "search" and p.start_round <= rnd
                and ((rnd - p.start_round) % p.interval == 0 or rnd >= p.max_prune_round
                     or rnd == self.cfg.fed.rounds))

    def nested(self, rnd: int, model: nn.Module, spec: ModelSpec, clients: Any
               ) -> Nested | None:
        if not self.cfg.prune.enabled or self.state.status != "search":
            return None
        records = self._records(model, spec)
        models, maps, flops = [], [], []
        for i, rec in enumerate(records):
            if i == len(records) - 1:  # the full width: the model itself
                sub, sspec = model, spec
                m = {k: torch.arange(v.numel()) for k, v in model.state_dict().items()
                     if v.is_floating_point()}
            else:
                sub = sub_model(model, rec, self.example)
                sspec = replace(spec, record=rec)
                m = gather_maps(model, rec, self.example)
            models.append((sub, sspec))
            maps.append(m)
            flops.append(count_flops(sub, self.example))
        assign = self._assign(rnd, clients, flops)
        narrower: tuple[tuple[Keep, ...], ...] = ()
        if self.cfg.prune.ordered_dropout == "batch":
            keeps = [keep_of(r) for r in records]
            narrower = tuple(tuple(keeps[:a]) for a in range(len(records)))
        return Nested(tuple(models), tuple(maps), tuple(assign), tuple(flops), narrower)

    def _assign(self, rnd: int, clients: Any, flops: list[int]) -> list[int]:
        """The width each client trains: the full width with probability 1/2 (so that the
        full width, which every cost is measured against, learns about as dense FedAvg's
        model would), else one of the narrower widths, uniformly; only widths whose
        training (and, for a client that also validates this round, the validation of
        every width) fits what a dense FedAvg client would spend.  A validating client
        that no width leaves room for trains the narrowest and does not validate this
        round (:attr:`_excused`), nor does one whose validation alone would not fit."""
        rng = seeds.width_draws(self.cfg.seed, rnd)
        validating: set[int] = set()
        if self._judging(rnd):
            validating = set(validation_clients(self.cfg.seed, rnd, self.val_pool,
                                                self.cfg.prune.val_clients))
        compute = self.compute

        def train(c: int, f: int) -> int:  # a round's training of a model of f forward FLOPs
            return compute.train_one(f, c)

        def validation(c: int) -> int:  # every width's forward passes, calibration included
            return sum(compute.validate_one(f, c, self.calibrate) for f in flops)

        self._excused = set()
        out = []
        full = len(flops) - 1
        for c in clients:
            draw = float(rng.random())
            allowed = list(range(len(flops)))
            if c in validating and self.train_sizes:
                dense = train(c, self.flops_initial)
                allowed = [i for i, f in enumerate(flops) if train(c, f) + validation(c) <= dense]
                if not allowed:
                    allowed = [0]
                    self._excused.add(c)
            narrower = [i for i in allowed if i < full]
            if full in allowed and (draw < FULL_SHARE or not narrower):
                out.append(full)
            else:  # the rest of the draw, spread over the narrower widths
                u = (draw - FULL_SHARE) / (1 - FULL_SHARE) if full in allowed else draw
                out.append(narrower[min(len(narrower) - 1, int(u * len(narrower)))])
        if self.train_sizes:  # validation alone must fit a dense client's round too
            trained = set(clients)
            self._excused |= {c for c in validating - trained
                              if validation(c) > train(c, self.flops_initial)}
        return out

    # ------------------------------------------------------------------ the round step

    def after_aggregate(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                        last_round: bool = False) -> PruneStep:
        if not self.cfg.prune.enabled:
            return PruneStep(model, spec, False, False)
        judged = None
        if self.state.status == "search" and (self._judging(rnd) or last_round):
            model, spec, changed, judged = self._judge(rnd, model, spec, validate, last_round)
        else:
            changed = False
        record = self._record()
        if judged is not None:
            record["judged"] = judged
        return PruneStep(model, spec, changed, changed, record)

    def after_skipped(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                      last_round: bool = False) -> PruneStep | None:
        """A round that averaged nothing: judged all the same at the last round (a run never
        ends searching), else nothing but the record."""
        if not self.cfg.prune.enabled:
            return None
        if last_round and self.state.status == "search":
            return self.after_aggregate(rnd, model, spec, validate, last_round=True)
        return PruneStep(model, spec, False, False, self._record())

    def _record(self) -> dict[str, Any]:
        st = self.state
        return {"status": st.status, "cut_round": st.cut_round, "widths": st.widths,
                "max_accuracy_drop": self.cfg.prune.max_accuracy_drop}

    def _judge(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
               last_round: bool) -> tuple[nn.Module, ModelSpec, bool, dict[str, Any]]:
        p, st = self.cfg.prune, self.state
        records = self._records(model, spec)
        clients = [c for c in validation_clients(self.cfg.seed, rnd, self.val_pool,
                                                 p.val_clients) if c not in self._excused]
        v = validate(model, spec, clients, [keep_of(r) for r in records[:-1]],
                     calibrate=self.calibrate)
        deadline = rnd >= p.max_prune_round or last_round
        if v.samples == 0 or len(v.variants) != len(records) - 1:
            # nobody answered: nothing measured; judged again at the next judgement
            verdict = {"round": rnd, "choice": None, "chosen": None, "accuracy_full": None,
                       "samples": 0, "clients": 0, "widths": [],
                       "decision": "stop" if deadline else "unanswered"}
            self.state = replace(st, judged=(*st.judged, verdict))
            logger.warning("round %d: no client answered the judgement of the widths", rnd)
            if deadline:
                self.state = replace(self.state, status="stopped", stopped_round=rnd,
                                     stop_reason="no client answered the last judgement")
            return model, spec, False, verdict
        widths = []
        choice = len(records) - 1
        for i, rec in enumerate(records[:-1]):
            got = v.variants[i] if i < len(v.variants) else None
            cost, se, k = (paired(v, got, p.trim_fraction) if got is not None
                           else (math.nan, math.nan, 0))
            bound = self._bound(cost, se)
            fits = bool(k > 0 and math.isfinite(bound) and bound <= p.max_accuracy_drop)
            sub = sub_model(model, rec, self.example)
            widths.append({"widths": [len(g["kept"]) for g in rec["groups"]],
                           "params": n_params(sub), "flops": count_flops(sub, self.example),
                           "accuracy": _finite(got.accuracy) if got is not None else None,
                           "cost": _finite(cost), "cost_se": _finite(se),
                           "bound": _finite(bound), "clients": k, "fits": fits})
            if fits and choice == len(records) - 1:
                choice = i
        answered = [j for j in st.judged if j["choice"] is not None]
        previous = answered[-1]["choice"] if answered else None
        full = len(records) - 1
        pooled = (p.decide == "pooled" and bool(answered)
                  and len(answered[-1]["widths"]) == len(widths))
        if pooled:
            # each width's cost and standard error pooled with the last judgement's: the
            # narrowest width that fits so is cut at once (nothing fitting: search on)
            choice = self._pooled(answered[-1], {"widths": widths, "samples": v.samples},
                                  full)
        # a cut is final when two judgements in a row agree (or, pooled, when the two
        # together fit); nothing fitting only at the deadline (early in training every
        # width can cost much, and little later)
        agreed = pooled or previous == choice
        final = deadline or (agreed and choice < full)
        verdict = {"round": rnd, "choice": choice,
                   "chosen": [len(g["kept"]) for g in records[choice]["groups"]],
                   "accuracy_full": _finite(v.accuracy), "samples": v.samples,
                   "clients": len(v.clients), "widths": widths,
                   "decision": "cut" if final and choice < len(records) - 1 else
                               "keep" if final else "search on"}
        self.state = replace(st, judged=(*st.judged, verdict))
        logger.info("round %d: the narrowest width that fits is %s (%s)", rnd,
                    verdict["chosen"], verdict["decision"])
        if not final:
            return model, spec, False, verdict
        if choice == len(records) - 1:
            self.state = replace(self.state, status="stopped", stopped_round=rnd,
                                 stop_reason="no narrower width fits "
                                             "prune.max_accuracy_drop")
            return model, spec, False, verdict
        rec = records[choice]
        cut = sub_model(model, rec, self.example)
        cspec = replace(spec, record=rec)
        self.state = replace(self.state, status="stopped", stopped_round=rnd, cut_round=rnd,
                             widths={g["root"]: len(g["kept"]) for g in rec["groups"]},
                             stop_reason="cut to the narrowest width that fits" + (
                                 "" if agreed else " at the last judgement"))
        logger.info("round %d: cut to widths %s (%d -> %d params)", rnd, verdict["chosen"],
                    n_params(model), n_params(cut))
        return cut, cspec, True, verdict

    def _bound(self, cost: float, se: float) -> float:
        """What a width's measured cost must fit ``prune.max_accuracy_drop`` with: the cost
        plus ``prune.confidence_z`` standard errors (an unknown standard error: inf).  A
        width measured better than the full one it is cut from has gained nothing but noise
        (and a full width still learning): its cost counts as 0."""
        z = self.cfg.prune.confidence_z
        floor = max(cost, 0.0) if math.isfinite(cost) else cost
        return floor if z == 0 else floor + z * (se if math.isfinite(se) else math.inf)

    def _pooled(self, before: dict[str, Any], now: dict[str, Any], full: int) -> int:
        """The narrowest width whose cost over two judgements fits, counted as in one
        judgement; each width's entry of ``now["widths"]`` gets the pooled figures.  ``full``
        when none fits.

        The two measured costs are combined by inverse-variance weights, the
        minimum-variance combination of two independent estimates of one quantity: the
        pooled cost is ``(c1 / se1^2 + c2 / se2^2) / (1 / se1^2 + 1 / se2^2)``, its standard
        error ``1 / sqrt(1 / se1^2 + 1 / se2^2)`` (with equal standard errors: the mean of
        the two and ``se / sqrt(2)``).  A judgement measured more precisely counts for more;
        a standard error is taken as at least one sample's share of its judgement's
        accuracy (``1 / samples``), so that no judgement counts alone."""
        p = self.cfg.prune
        choice = full
        for i, (a, b) in enumerate(zip(before["widths"], now["widths"], strict=True)):
            fits = False
            if None not in (a["cost"], b["cost"], a["cost_se"], b["cost_se"]):
                w1 = _se_floor(a["cost_se"], before["samples"]) ** -2
                w2 = _se_floor(b["cost_se"], now["samples"]) ** -2
                cost = (w1 * a["cost"] + w2 * b["cost"]) / (w1 + w2)
                se = 1 / math.sqrt(w1 + w2)
                bound = self._bound(cost, se)
                b.update(pooled_cost=cost, pooled_se=se, pooled_bound=bound)
                fits = bound <= p.max_accuracy_drop
            b["pooled_fits"] = fits
            if fits and choice == full:
                choice = i
        return choice

    # ------------------------------------------------------------------ state

    def state_entries(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return {"nested": self.state.to_dict()}, None

    def restore_entries(self, state: dict[str, Any], snapshot: dict[str, Any] | None) -> None:
        if "nested" not in state:
            if "auto" in state:
                raise ValueError("the checkpoint was written by fedprune's earlier automatic "
                                 "method (now prune.method = 'auto-paired'), which this run "
                                 "cannot continue: start the run anew (with prune.method = "
                                 "'auto-paired' for that method)")
            raise ValueError("the checkpoint holds no state of prune.method = 'auto': it was "
                             "written by a run with another method")
        self.state = NestedState.from_dict(state["nested"])

    def summary_entries(self, model: nn.Module) -> dict[str, Any]:
        st = self.state
        return {"prune_stopped_round": st.stopped_round,
                "prune_steps": 1 if st.cut_round is not None else 0,
                "nested": {"status": st.status, "stop_reason": st.stop_reason,
                           "cut_round": st.cut_round, "widths": st.widths,
                           "ladder": [list(w.values()) for w in self.ladder],
                           "max_accuracy_drop": self.cfg.prune.max_accuracy_drop,
                           "judged": list(st.judged)}}
