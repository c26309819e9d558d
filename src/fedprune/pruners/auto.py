"""fedprune's automatic method: the server decides how far to prune from paired validation.

The question a user asks is "how small can the model get before it costs accuracy?", and
the server, which sees no data, answers it from what the clients measure.  From
``prune.start_round`` on:

1. **Candidate.** The server cuts a copy of the global model: every prunable group loses its
   ``floor(step * channels)`` lowest-L1 filters (``prune.step``, 0.2 at first).  The global
   model itself is not touched.
2. **Paired training.** For ``prune.interval`` rounds the sampled clients train the
   candidate beside the global model -- and, once a cut has been kept, beside the *reference*
   too: the unpruned model, which goes on training until pruning stops -- from the same
   weights with the same batches, and the server averages each.  All of them therefore see
   the same clients and the same drift, which on non-IID clients swings a single model's
   accuracy by several points from round to round; only the effect of the cuts differs.
3. **Paired validation.** Then up to ``prune.val_clients`` clients evaluate the reference
   (the global model before the first kept cut) and the candidate on their own validation
   splits (``data.val_fraction``).  The candidate's *cost* is the reference's validation
   accuracy minus the candidate's, on the same samples: what all the cuts so far cost
   together, measured directly (no sum of noisy steps), against an unpruned model that kept
   learning meanwhile.  Its standard error comes from the clients' paired differences.
4. **Decision.** The cut is kept while its cost plus ``prune.confidence_z`` standard errors
   is at most ``prune.max_accuracy_drop`` (1 point by default; a small or noisy validation
   set therefore prunes less): the candidate becomes the global model, and the next
   candidate is cut from it at once.  A candidate that does not fit yet trains on and is
   judged again every ``prune.interval`` rounds, up to ``prune.judgements`` judgements in
   all (a fresh cut is still recovering what it lost: judged two rounds after the cut, it
   costs more than it will at the end).  Then it is dropped -- the global model
   trained on meanwhile, so nothing is lost -- and the step halves; once it is below
   ``prune.min_step``, or no cut is possible, or ``prune.max_prune_round`` has passed,
   pruning stops and the reference is dropped.

The extra traffic (candidate and reference down and up, the validation queries and their
answers) is counted in ``bytes_down`` / ``bytes_up``.  Each round's record has an ``auto``
entry: the state, and for a judged candidate its size, both accuracies and losses, its cost,
the decision and why.  The candidate's and the reference's weights are in the checkpoint, so a
run resumes bit for bit in the middle of a trial.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

from torch import nn

from .. import seeds
from ..config import ConfigError, ExperimentConfig
from ..metrics import count_macs, n_params
from ..models import ModelSpec, build
from ..pruning import RatioRule, prune_model
from .base import Pruner, PruneStep, Validate, Validation, validation_clients
from .registry import register

logger = logging.getLogger(__name__)

# waiting -> trial <-> between (after a judged candidate) -> stopped
Status = Literal["waiting", "trial", "between", "stopped"]
STATUSES: tuple[str, ...] = get_args(Status)


@dataclass(frozen=True)
class AutoState:
    """The automatic method's state over a run (JSON-able; in every checkpoint).

    A value: every transition below returns a new one and leaves its argument as it was.
    """

    status: Status = "waiting"
    step: float = 0.0  # share of each group's filters the next candidate loses
    spent: float = 0.0  # measured cost of the kept cuts (accuracy, 0.01 = 1 point)
    trial_round: int | None = None  # round whose aggregate the pending candidate was cut from
    looks: int = 0  # judgements of the pending candidate so far ("again")
    accepted: int = 0
    rejected: int = 0
    stopped_round: int | None = None
    stop_reason: str = ""
    tries: tuple[dict[str, Any], ...] = ()  # every judged candidate

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"automatic method: unknown status {self.status!r}")

    @property
    def between_trials(self) -> bool:
        """No candidate is pending and pruning goes on."""
        return self.status in ("waiting", "between")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tries": list(self.tries)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoState:
        return cls(**{**d, "tries": tuple(d.get("tries", ()))})


# ----------------------------------------------------------------------------- transitions


def started(st: AutoState, rnd: int) -> AutoState:
    """A candidate was cut from the aggregate of round ``rnd``."""
    return replace(st, status="trial", trial_round=rnd)


def judged_again(st: AutoState, verdict: dict[str, Any]) -> AutoState:
    """The candidate does not fit yet and trains on (``verdict`` is this judgement)."""
    return replace(st, looks=st.looks + 1, tries=(*st.tries, verdict))


def kept(st: AutoState, cost: float, verdict: dict[str, Any]) -> AutoState:
    """The candidate became the global model; ``cost`` is what all kept cuts cost."""
    return replace(st, status="between", trial_round=None, looks=0, spent=cost,
                   accepted=st.accepted + 1, tries=(*st.tries, verdict))


def dropped(st: AutoState, verdict: dict[str, Any]) -> AutoState:
    """The candidate was dropped: the next one loses half the share."""
    return replace(st, status="between", trial_round=None, looks=0, step=st.step / 2,
                   rejected=st.rejected + 1, tries=(*st.tries, verdict))


def stopped(st: AutoState, rnd: int, why: str) -> AutoState:
    return replace(st, status="stopped", stopped_round=rnd, stop_reason=why)


def trimmed_count(k: int, fraction: float) -> int:
    """Clients left out at each end of ``k`` paired differences by a trimmed mean of
    ``fraction``: ``ceil(fraction * k)`` (one of 10, 5 of 50, one of 4), at most
    ``(k - 2) // 2`` so that two remain (a spread needs two: three clients are not
    trimmed); 0 when ``fraction`` is 0."""
    return min(math.ceil(fraction * k - 1e-9), (k - 2) // 2) if fraction > 0 else 0


def paired(ref: Validation, got: Validation, trim: float = 0.0) -> tuple[float, float, int]:
    """``(cost, standard error, clients)`` of the accuracy difference ``ref - got`` over the
    clients that answered both with the same number of samples.

    Each paired client gives a difference ``d`` over its ``n`` samples.  With ``trim`` = 0
    the cost is their sample-weighted mean: when every client answered both (the usual case)
    the difference of the two pooled accuracies, otherwise pooled over the paired clients
    only, so that a client missing from one side cannot bias it; the standard error is that
    of a ratio estimator over clients (their samples differ in number and in difficulty).

    With ``trim`` > 0 the :func:`trimmed_count` ``g`` clients of lowest and of highest ``d``
    are left out (ties by position) and the cost is the sample-weighted mean of the rest: a
    client can move it no further than the honest clients' differences reach, whatever it
    answers.  The standard error is the trimmed mean's (Tukey and McLaughlin): the ratio
    estimator's over all ``k`` clients with each left-out difference replaced by the nearest
    one kept (winsorized), its sum of squares taken over the kept clients' samples instead
    of all of them (``1 - 2 g / k`` of them when every client holds as many).

    The standard error is nan with fewer than two paired clients, and the cost nan with none.
    """
    b = {c: (acc, n) for c, acc, n in got.clients}
    pairs = [(n, acc - b[c][0]) for c, acc, n in ref.clients if c in b and b[c][1] == n]
    k = len(pairs)
    total = sum(n for n, _ in pairs)
    if k == 0 or total == 0:
        return math.nan, math.nan, 0
    g = trimmed_count(k, trim)
    spread, held = pairs, total  # the differences the standard error is taken over
    if g > 0:
        order = sorted(range(k), key=lambda j: (pairs[j][1], j))
        kept = [pairs[j] for j in order[g:k - g]]
        held = sum(n for n, _ in kept)
        cost = sum(n * d for n, d in kept) / held
        lo, hi = pairs[order[g]][1], pairs[order[k - g - 1]][1]
        spread = [(n, min(max(d, lo), hi)) for n, d in pairs]  # winsorized
    else:
        everyone = k == len(ref.clients) == len(got.clients)
        cost = (ref.accuracy - got.accuracy if everyone
                else sum(n * d for n, d in pairs) / total)
    if k < 2:
        return cost, math.nan, k
    mean = sum(n * d for n, d in spread) / total
    var = k / (k - 1) * sum((n * (d - mean)) ** 2 for n, d in spread)
    return cost, math.sqrt(var) / held, k


def _finite(x: float) -> float | None:
    """``x``, or None for nan / inf (JSON has no NaN)."""
    return x if math.isfinite(x) else None


@register("auto-paired")
class AutoPruner(Pruner):
    """The automatic method's decisions; :attr:`state` is a new :class:`AutoState` after
    every step, the candidate and reference models are kept beside it."""

    record_key = "auto"

    def __init__(self, cfg: ExperimentConfig, **start: Any) -> None:
        super().__init__(cfg, **start)
        if cfg.prune.enabled and not self.val_pool:
            raise ConfigError("prune.method = 'auto-paired' validates each cut on the clients' "
                              "validation splits, and no client holds one: set "
                              "data.val_fraction > 0 (the default is 0.1), or choose "
                              "prune.method = 'boundary' or 'ratio'")
        self.state = AutoState(step=cfg.prune.step)
        self.candidate: tuple[nn.Module, ModelSpec] | None = None
        self.reference: tuple[nn.Module, ModelSpec] | None = None  # after the first kept cut

    def trial(self) -> list[tuple[nn.Module, ModelSpec]]:
        """The models the sampled clients train beside the global one: the candidate, if any,
        and the reference while pruning goes on."""
        return [m for m in (self.candidate, self.reference) if m is not None]

    # ------------------------------------------------------------------ the round step

    def after_skipped(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                      last_round: bool = False) -> PruneStep | None:
        """A round that averaged nothing: the candidate is judged if it is due at the last
        round (the run never ends with a candidate unjudged); pruning stops there or after
        the window; otherwise nothing happens but the round's record."""
        if not self.cfg.prune.enabled:
            return None
        if last_round and self.candidate is not None:
            return self.after_aggregate(rnd, model, spec, validate, last_round=True)
        self._stop_if_past(rnd, last_round)
        return PruneStep(model, spec, False, False, self._record())

    def after_aggregate(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                        last_round: bool = False) -> PruneStep:
        p = self.cfg.prune
        judged: dict[str, Any] | None = None
        changed = False
        if not p.enabled:
            return PruneStep(model, spec, False, False)
        st = self.state
        if self.candidate is not None and st.trial_round is not None and (
                rnd >= st.trial_round + p.interval * (st.looks + 1) or last_round):
            model, spec, changed, judged = self._judge(rnd, model, spec, validate, last_round)
        cut = None
        if self.state.between_trials and p.start_round <= rnd <= p.max_prune_round and \
                not last_round:
            cut = self._start_trial(rnd, model, spec)
        else:
            self._stop_if_past(rnd, last_round)
        record = self._record()
        if judged is not None:
            record["judged"] = judged
        if cut is not None:
            record["candidate"] = cut
        return PruneStep(model, spec, changed, changed, record)

    def _stop_if_past(self, rnd: int, last_round: bool) -> None:
        """Stop, between candidates, at the run's last round or after the window."""
        p = self.cfg.prune
        if self.state.between_trials and (rnd > p.max_prune_round or last_round):
            self._stop(rnd, "the run's last round" if last_round else
                       f"prune.max_prune_round ({p.max_prune_round}) has passed")

    def _record(self) -> dict[str, Any]:
        st = self.state
        return {"status": st.status, "step": st.step, "spent": st.spent,
                "accepted": st.accepted, "rejected": st.rejected,
                "max_accuracy_drop": self.cfg.prune.max_accuracy_drop}

    def _start_trial(self, rnd: int, model: nn.Module, spec: ModelSpec
                     ) -> dict[str, Any] | None:
        """Cut a candidate from ``model`` (left as it is); None (and stop) if nothing is cut."""
        p, step = self.cfg.prune, self.state.step
        trial = copy.deepcopy(model)
        before = n_params(model)
        res = prune_model(trial, self.example, RatioRule(ratio=step, min_channels=p.min_channels),
                          seed=seeds.pruning_seed(self.cfg.seed, rnd), record=spec.record)
        if n_params(trial) >= before:
            self._stop(rnd, f"a cut of {step:.3g} of each layer removes no filter")
            return None
        tspec = replace(spec, record=res.record)
        self.candidate = (trial, tspec)
        self.state = started(self.state, rnd)
        info = {"round": rnd, "step": step, "params": n_params(trial),
                "flops": 2 * count_macs(trial, self.example), "widths": tspec.widths_now()}
        logger.info("round %d: candidate cut %d -> %d params (step %.3g), widths %s; trained "
                    "beside the model for %d rounds", rnd, before, info["params"], step,
                    info["widths"], p.interval)
        return info

    def _judge(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
               last_round: bool = False) -> tuple[nn.Module, ModelSpec, bool, dict[str, Any]]:
        p, st = self.cfg.prune, self.state
        assert self.candidate is not None and st.trial_round is not None
        cand, cspec = self.candidate
        clients = validation_clients(self.cfg.seed, rnd, self.val_pool, p.val_clients)
        ref = validate(*(self.reference or (model, spec)), clients)
        got = validate(cand, cspec, clients)
        cost, se, n_paired = paired(ref, got, self.cfg.prune.trim_fraction)
        if n_paired == 0 and not last_round:  # nobody answered both: ask again next round
            logger.warning("round %d: no client validated both models; the candidate of "
                           "round %s is judged next round", rnd, st.trial_round)
            return model, spec, False, {"cut_round": st.trial_round, "decision": "retry",
                                        "why": "no client validated both models"}
        verdict = self._verdict(st, cand, cspec, ref, got, (cost, se, n_paired))
        ok = verdict["decision"] == "accept"
        if (not ok and n_paired > 0 and st.looks + 1 < p.judgements and not last_round
                and rnd < p.max_prune_round):
            # a fresh cut is still recovering: train it on and judge it again
            verdict["decision"] = "again"
            verdict["why"] += (f"; trained on, judged again at round "
                               f"{st.trial_round + p.interval * (st.looks + 2)} "
                               f"(judgement {st.looks + 2} of {p.judgements})")
            self.state = judged_again(st, {"round": rnd, **verdict})
            logger.info("round %d: the cut of round %s does not fit yet (%s)", rnd,
                        verdict["cut_round"], verdict["why"])
            return model, spec, False, verdict
        self.candidate = None
        if ok:
            self.state = kept(st, cost, {"round": rnd, **verdict})
            if self.reference is None:  # the unpruned model goes on as the reference
                self.reference = (model, spec)
            logger.info("round %d: kept the cut of round %s (%s); widths %s", rnd,
                        verdict["cut_round"], verdict["why"], verdict["widths"])
            return cand, cspec, True, verdict
        self.state = dropped(st, {"round": rnd, **verdict})
        logger.info("round %d: dropped the cut of round %s (%s); step -> %.3g", rnd,
                    verdict["cut_round"], verdict["why"], self.state.step)
        if self.state.step < p.min_step:
            self._stop(rnd, f"{verdict['why']}, and the halved step {self.state.step:.3g} is "
                       f"below prune.min_step ({p.min_step})")
        return model, spec, False, verdict

    def _verdict(self, st: AutoState, cand: nn.Module, cspec: ModelSpec, ref: Validation,
                 got: Validation, pair: tuple[float, float, int]) -> dict[str, Any]:
        """The judgement of the candidate from the paired ``(cost, se, clients)``: accept
        while its bound fits ``prune.max_accuracy_drop``, else reject; and why."""
        p = self.cfg.prune
        cost, se, n_paired = pair
        # without a standard error (fewer than two clients paired) only z = 0 can accept
        bound = cost if p.confidence_z == 0 else (
            cost + p.confidence_z * (se if math.isfinite(se) else math.inf))
        ok = bool(n_paired > 0 and bound <= p.max_accuracy_drop)
        verdict = {
            "cut_round": st.trial_round, "step": st.step, "params": n_params(cand),
            "flops": 2 * count_macs(cand, self.example), "widths": cspec.widths_now(),
            "clients": n_paired, "samples": got.samples,
            "acc_reference": _finite(ref.accuracy), "acc_candidate": _finite(got.accuracy),
            "loss_reference": _finite(ref.loss), "loss_candidate": _finite(got.loss),
            "cost": _finite(cost), "cost_se": _finite(se), "bound": _finite(bound),
            "decision": "accept" if ok else "reject",
        }
        total = (f"cost {100 * cost:.2f} + {p.confidence_z:g} x {100 * se:.2f} s.e. = "
                 f"{100 * bound:.2f} points")
        if ok:
            verdict["why"] = f"{total} <= prune.max_accuracy_drop"
        elif n_paired == 0:
            verdict["why"] = "no client validated both models"
        elif not math.isfinite(bound):
            verdict["why"] = (f"cost {100 * cost:.2f} points from {n_paired} client: no "
                              "standard error, so the cut cannot be shown to fit")
        else:
            verdict["why"] = f"{total} > prune.max_accuracy_drop"
        return verdict

    def _stop(self, rnd: int, why: str) -> None:
        self.state = st = stopped(self.state, rnd, why)
        self.reference = None  # only pruning needs it
        logger.info("round %d: pruning stopped: %s (%d cuts kept, measured cost %.2f points)",
                    rnd, why, st.accepted, 100 * st.spent)

    # ------------------------------------------------------------------ state

    def state_entries(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        snap = {name: {"spec": m[1].to_json(),
                       "state_dict": {k: v.detach().clone() for k, v in m[0].state_dict().items()}}
                for name, m in (("candidate", self.candidate), ("reference", self.reference))
                if m is not None}
        return {"auto": self.state.to_dict()}, snap or None

    def restore_entries(self, state: dict[str, Any], snapshot: dict[str, Any] | None) -> None:
        if "auto" not in state:
            raise ValueError("the checkpoint holds no state of prune.method = 'auto-paired': it "
                             "was written by a run with another method")
        self.state = AutoState.from_dict(state["auto"])
        snapshot = snapshot or {}

        def model_of(name: str) -> tuple[nn.Module, ModelSpec]:
            spec = ModelSpec.from_json(snapshot[name]["spec"])
            model = build(spec)
            model.load_state_dict(snapshot[name]["state_dict"])
            return model, spec

        if self.state.status == "trial" and "candidate" not in snapshot:
            raise ValueError("checkpoint: a candidate is being trained but its weights are "
                             "missing")
        self.candidate = model_of("candidate") if "candidate" in snapshot else None
        self.reference = model_of("reference") if "reference" in snapshot else None
        if self.state.accepted and self.state.status != "stopped" and self.reference is None:
            raise ValueError("checkpoint: cuts were kept and pruning goes on, but the "
                             "reference model's weights are missing")

    def summary_entries(self, model: nn.Module) -> dict[str, Any]:
        st = self.state
        return {"prune_stopped_round": st.stopped_round, "prune_steps": st.accepted,
                "auto": {"status": st.status, "stop_reason": st.stop_reason,
                         "accepted": st.accepted, "rejected": st.rejected,
                         "measured_cost": st.spent,
                         "max_accuracy_drop": self.cfg.prune.max_accuracy_drop,
                         "tries": list(st.tries)}}
