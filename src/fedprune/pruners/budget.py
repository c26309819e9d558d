"""Budget mode (method ``budget``): cuts, guard checks by federated validation, rollbacks.

One :class:`BudgetPruner` per run.  After each aggregated round the server calls
:meth:`BudgetPruner.after_aggregate` with the aggregate and a ``validate`` callback that
asks clients for their accuracy on their own validation split (no data leaves them): the
in-process loop evaluates the clients' splits directly, the Flower transport sends query
messages.  The decisions themselves (targets, the k controller, the guard) are pure:
:mod:`fedprune.pruning.budget`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .. import seeds
from ..config import ExperimentConfig
from ..metrics import count_macs, n_params
from ..models import ModelSpec, build
from ..pruning import BoundaryRule, RatioRule, prune_model
from ..pruning import budget as B
from .base import Pruner, PruneStep, Validate, validation_clients
from .registry import register
from .schedule import is_try_round, schedule_of

logger = logging.getLogger(__name__)

# bisection steps for the last cut's size (the step is found within 2**-8 of the cap)
FINAL_STEP_SEARCH = 8


def measure(model: nn.Module, example: torch.Tensor, table: B.LatencyTable | None
            ) -> dict[str, float]:
    return B.measures(n_params(model), 2 * count_macs(model, example), table)


def smallest_model(model: nn.Module, example: torch.Tensor, spec: ModelSpec,
                   min_channels: int) -> nn.Module:
    """A copy cut down to ``min_channels`` in every prunable group (the rule's floor)."""
    small = copy.deepcopy(model)
    record = spec.record
    while True:
        before = n_params(small)
        record = prune_model(small, example, RatioRule(ratio=0.99, min_channels=min_channels),
                             record=record).record
        if n_params(small) >= before:
            return small


@register("budget", selectable=False)
class BudgetPruner(Pruner):
    """Budget mode's pruning decisions: the boundary rule with the controller's k, each cut
    a candidate under the accuracy guard."""

    record_key = "budget"

    def __init__(self, cfg: ExperimentConfig, *, model: nn.Module, spec: ModelSpec,
                 example: torch.Tensor, params_initial: int, flops_initial: int,
                 num_clients: int, has_validation: Sequence[bool],
                 train_sizes: Sequence[int] = (), val_sizes: Sequence[int] = ()) -> None:
        super().__init__(cfg, model=model, spec=spec, example=example,
                         params_initial=params_initial, flops_initial=flops_initial,
                         num_clients=num_clients, has_validation=has_validation,
                         train_sizes=train_sizes, val_sizes=val_sizes)
        bc = cfg.budget
        self.table = B.LatencyTable.load(bc.latency_table) if bc.latency_table else None
        self.targets = B.resolve_targets(bc, params_initial, flops_initial)
        self.floor = measure(smallest_model(model, example, spec, cfg.prune.min_channels),
                             example, self.table)
        B.check_reachable(self.targets, self.floor)
        self.state = B.start(cfg.prune.k, cfg.prune.max_fraction)
        self.snapshot: tuple[ModelSpec, dict[str, torch.Tensor]] | None = None
        self.cut_step: float | None = None  # the step of the latest round's cut, if any
        if bc.guard and not self.val_pool:
            raise B.BudgetError("budget.guard needs clients with a validation split: set "
                                "data.val_fraction > 0")
        logger.info("budget mode: targets %s (the rule's floor: %s)", self.targets.to_dict(),
                    self.floor)

    # ------------------------------------------------------------------ schedule

    def _tries(self, rnd: int) -> bool:
        return (self.state.status == "pruning" and not self.state.pending
                and is_try_round(schedule_of(self.cfg), rnd))

    # ------------------------------------------------------------------ the round step

    def after_aggregate(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                        last_round: bool = False) -> PruneStep:
        events: list[dict[str, Any]] = []  # the guard's decisions this round, in order
        self.cut_step = None
        changed = pruned = False
        # a candidate due now is judged first, so that a scheduled try can follow at once
        if self.state.pending and rnd >= (self.state.check_round or 0):
            model, spec, rolled_back, ev = self._judge(rnd, model, spec, validate)
            events.append(ev)
            changed = rolled_back
        if self._tries(rnd):
            if B.is_met(self.targets, measure(model, self.example, self.table)):
                self.state = B.finish_if_met(self.state, True)
            else:
                model, spec, pruned, ev = self._try(rnd, model, spec, validate)
                changed = changed or pruned
                if ev is not None:
                    events.append(ev)
        # a cut judged at once (no recovery rounds), or a candidate left at the last round
        if self.state.pending and (rnd >= (self.state.check_round or 0) or last_round):
            model, spec, rolled_back, ev = self._judge(rnd, model, spec, validate)
            events.append(ev)
            changed = changed or rolled_back
        return self._step(rnd, model, spec, changed, pruned, events)

    def after_skipped(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate,
                      last_round: bool = False) -> PruneStep | None:
        """A round that aggregated nothing: no try; but a candidate still pending at the last
        round is judged now, so that the run never ends on a cut the guard has not seen."""
        self.cut_step = None
        if not (last_round and self.state.pending):
            return None
        model, spec, rolled_back, ev = self._judge(rnd, model, spec, validate)
        return self._step(rnd, model, spec, rolled_back, False, [ev])

    def _step(self, rnd: int, model: nn.Module, spec: ModelSpec, changed: bool, pruned: bool,
              events: list[dict[str, Any]]) -> PruneStep:
        """The round's step and its ``budget`` record (after the deadline check)."""
        p = self.cfg.prune
        if self.state.status == "pruning" and not self.state.pending and rnd >= p.max_prune_round:
            self.state = replace(self.state, status="deadline")
            logger.warning("budget mode: prune.max_prune_round %d reached before the budget %s",
                           p.max_prune_round, self.targets.to_dict())
        measured = measure(model, self.example, self.table)
        record = {"k": self.state.k, "step_fraction": self.state.step_fraction,
                  "status": self.state.status, "gap": B.gaps(self.targets, measured),
                  "pending": self.state.pending, "guard": events, "cut_step": self.cut_step}
        if "latency_ms" in measured:
            record["latency_ms"] = measured["latency_ms"]
        return PruneStep(model, spec, changed, pruned, record)

    def _try(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate
             ) -> tuple[nn.Module, ModelSpec, bool, dict[str, Any] | None]:
        bc = self.cfg.budget
        clients: list[int] = []
        acc_before: float | None = None
        n_before = 0
        if bc.guard:
            clients = validation_clients(self.cfg.seed, rnd, self.val_pool, bc.guard_clients)
            before_cut = validate(model, spec, clients)
            acc_before, n_before = before_cut.accuracy, before_cut.samples
        snapshot = (spec, {k: v.detach().clone() for k, v in model.state_dict().items()})
        before = n_params(model)
        seed = seeds.pruning_seed(self.cfg.seed, rnd)
        step, cut_model, record, met = self._cut(model, spec, seed)
        after = n_params(cut_model)
        if after >= before:
            self.state = B.nothing_cut(bc, self.state)
            logger.info("round %d: budget try cut nothing; k -> %.3g (%s)", rnd, self.state.k,
                        self.state.status)
            return model, spec, False, None
        model, spec = cut_model, replace(spec, record=record)
        self.state = B.cut(bc, self.state, rnd, acc_before, clients, n_before)
        self.cut_step = step
        logger.info("round %d: budget cut %d -> %d params at k=%.3g, step %.3g, widths %s",
                    rnd, before, after, self.state.k, step, spec.widths_now())
        if bc.guard:
            self.snapshot = snapshot
            return model, spec, True, {"decision": "candidate", "acc_before": acc_before,
                                       "clients": len(clients), "samples": n_before,
                                       "step": step}
        self.state = B.finish_if_met(self.state, met)
        return model, spec, True, None

    def _cut(self, model: nn.Module, spec: ModelSpec, seed: int
             ) -> tuple[float, nn.Module, dict[str, Any], bool]:
        """A cut copy of ``model``: ``(step, cut model, its pruning record, meets the budget)``.

        The step is the controller's, or, when a cut at that step would already meet the
        budget, the smallest step that still meets it (bisection over cut copies), so that the
        last cut removes only what the budget needs.
        """
        p = self.cfg.prune

        def cut(step: float) -> tuple[nn.Module, dict[str, Any], bool]:
            trial = copy.deepcopy(model)
            rule = BoundaryRule(k=self.state.k, mode=p.mode, min_channels=p.min_channels,
                                max_fraction=step)
            res = prune_model(trial, self.example, rule, seed=seed, record=spec.record)
            met = B.is_met(self.targets, measure(trial, self.example, self.table))
            return trial, res.record, met

        hi = self.state.step_fraction
        best = cut(hi)
        if not best[2]:
            return (hi, *best)
        lo = 0.0  # a step of 0 cuts nothing, and the model is over budget
        for _ in range(FINAL_STEP_SEARCH):
            mid = (lo + hi) / 2
            trial = cut(mid)
            if trial[2]:
                hi, best = mid, trial
            else:
                lo = mid
        return (hi, *best)

    def _judge(self, rnd: int, model: nn.Module, spec: ModelSpec, validate: Validate
               ) -> tuple[nn.Module, ModelSpec, bool, dict[str, Any]]:
        cut_round, acc_before = self.state.cut_round, self.state.acc_before
        n_before = self.state.n_before
        after_cut = validate(model, spec, self.state.val_clients)
        acc_after, n_after = after_cut.accuracy, after_cut.samples
        margin = B.guard_margin(self.cfg.budget, acc_before or 0.0, n_before, acc_after, n_after)
        self.state, ok = B.judge(self.cfg.budget, self.state, acc_after, n_after)
        verdict = {"decision": "accept" if ok else "rollback", "cut_round": cut_round,
                   "acc_before": acc_before, "acc_after": acc_after, "margin": margin}
        rolled_back = False
        if ok:
            self.state = B.finish_if_met(self.state, B.is_met(self.targets, measure(
                model, self.example, self.table)))
        else:
            assert self.snapshot is not None
            spec, weights = self.snapshot
            model = build(spec)
            model.load_state_dict(weights)
            rolled_back = True
            logger.warning("round %d: guard rolled back the cut of round %s (validation "
                           "accuracy %.4f -> %.4f); k -> %.3g, step fraction -> %.3g%s", rnd,
                           cut_round, acc_before, acc_after, self.state.k,
                           self.state.step_fraction,
                           "; giving up" if self.state.status == "gave_up" else "")
        self.snapshot = None
        return model, spec, rolled_back, verdict

    # ------------------------------------------------------------------ records

    def summary(self, model: nn.Module) -> dict[str, Any]:
        measured = measure(model, self.example, self.table)
        return {"targets": self.targets.to_dict(), "status": self.state.status,
                "met": B.is_met(self.targets, measured), "final": measured,
                "gap": B.gaps(self.targets, measured), "floor": self.floor,
                "k_final": self.state.k, "accepted": self.state.accepted,
                "rollbacks": self.state.rollbacks}

    def summary_entries(self, model: nn.Module) -> dict[str, Any]:
        """The keys budget mode adds to ``summary.json`` (every engine adds the same)."""
        budget = self.summary(model)
        return {"budget": budget, "budget_status": budget["status"],
                "prune_steps": self.state.accepted}

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(JSON-able controller state, snapshot {spec, state_dict} or None) for resuming."""
        snap = None
        if self.snapshot is not None:
            snap = {"spec": self.snapshot[0].to_json(), "state_dict": self.snapshot[1]}
        return self.state.to_dict(), snap

    def restore(self, state: dict[str, Any], snapshot: dict[str, Any] | None) -> None:
        self.state = B.ControllerState.from_dict(state)
        self.snapshot = None
        if snapshot is not None:
            self.snapshot = (ModelSpec.from_json(snapshot["spec"]), snapshot["state_dict"])
        if self.state.pending and self.snapshot is None:
            raise ValueError("checkpoint: a guard candidate is pending but its snapshot is "
                             "missing")

    def state_entries(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        state, snapshot = self.checkpoint_state()
        return {"budget": state}, snapshot

    def restore_entries(self, state: dict[str, Any], snapshot: dict[str, Any] | None) -> None:
        if "budget" not in state:
            raise ValueError("the checkpoint holds no budget-mode state: it was written by a "
                             "run without budget mode")
        self.restore(state["budget"], snapshot)
