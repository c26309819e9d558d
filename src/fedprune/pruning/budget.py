"""Budget mode: targets (params, FLOPs, latency), the k controller and the accuracy guard.

Pure logic with frozen state values, shared by every engine.  The server side that applies
it to a model (cuts, snapshots, rollbacks, federated validation) is
:class:`fedprune.pruners.budget.BudgetPruner`.

The controller
--------------
Every try (the schedule's rounds) while the model is over budget runs the boundary rule with
the controller's ``k`` and a per-step cap ``step_fraction`` (starting at ``prune.k`` and
``prune.max_fraction``):

* a try that cuts nothing **tightens**: ``k *= tighten`` (down to ``k_min``) and the step
  cap grows back (``step_fraction *= relax``, up to ``prune.max_fraction``); a try that
  cuts nothing at ``k_min`` with the full cap means the rule can go no further: status
  ``unreachable``;
* a cut becomes a **candidate**.  With the guard on, the candidate trains
  ``guard_recovery_rounds`` rounds and then sampled clients report its accuracy on their
  validation split; if it fell more than ``guard_tolerance`` below the accuracy the same
  clients reported for the model before the cut, the cut is **rolled back** (the server
  restores the pre-cut model) and the controller **relaxes**: ``k *= relax`` (up to
  ``k_max``) and ``step_fraction`` halves.  ``max_rollbacks`` rollbacks in a row: status
  ``gave_up``;
* an accepted candidate lets the step cap grow back a little (``step_fraction *= 1.25``, up
  to ``prune.max_fraction``); one that meets every target: status ``met``, pruning stops.

Budgets below the smallest model the rule can reach (every prunable group at
``prune.min_channels``) are rejected before training starts (:func:`check_reachable`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BudgetConfig

STATUSES = ("pruning", "met", "unreachable", "gave_up", "deadline")


class BudgetError(ValueError):
    """A budget that cannot be met or a latency table that cannot be used."""


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class LatencyTable:
    """Latency measured on a device for models of several sizes; interpolated on FLOPs.

    Written by ``fedprune bench-latency --table``: ``{"device", "model", "input_shape",
    "rows": [{"widths", "params", "flops", "latency_ms"}, ...]}``.
    """

    flops: tuple[float, ...]
    latency_ms: tuple[float, ...]
    device: str = ""
    model: str = ""

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BudgetError(f"latency table {path} does not exist") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise BudgetError(f"latency table {path} is not readable JSON: {exc}") from None
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: Any, where: str = "latency table") -> LatencyTable:
        rows = doc.get("rows") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or len(rows) < 2:
            raise BudgetError(f"{where}: needs 'rows' with at least two measured models")
        pts = []
        for i, r in enumerate(rows):
            try:
                f, lat = float(r["flops"]), float(r["latency_ms"])
            except (KeyError, TypeError, ValueError):
                raise BudgetError(f"{where}: row {i} lacks numeric 'flops' and "
                                  "'latency_ms'") from None
            if not (np.isfinite(f) and np.isfinite(lat) and f > 0 and lat > 0):
                raise BudgetError(f"{where}: row {i} has non-positive flops or latency")
            pts.append((f, lat))
        pts.sort()
        return cls(tuple(p[0] for p in pts), tuple(p[1] for p in pts),
                   str(doc.get("device", "")), str(doc.get("model", "")))

    def estimate(self, flops: float) -> float:
        """Latency (ms) at ``flops``: linear between measured rows, extrapolated at the ends."""
        x, y = np.asarray(self.flops), np.asarray(self.latency_ms)
        if flops <= x[0]:
            return float(y[0] * flops / x[0])  # proportional below the smallest measured model
        if flops >= x[-1]:
            slope = (y[-1] - y[-2]) / (x[-1] - x[-2]) if x[-1] > x[-2] else 0.0
            return float(y[-1] + slope * (flops - x[-1]))
        return float(np.interp(flops, x, y))


@dataclass(frozen=True)
class Targets:
    """Resolved budget: ``None`` where no target is set."""

    params: int | None = None
    flops: int | None = None
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "flops": self.flops, "latency_ms": self.latency_ms}


def resolve_targets(cfg: BudgetConfig, params_initial: int, flops_initial: int) -> Targets:
    """The tightest of the absolute and fractional targets of each kind."""
    def pick(absolute: float, fraction: float, initial: int) -> int | None:
        vals = [v for v in (absolute, fraction * initial) if v > 0]
        # at least 1: a fraction too small for the model is then reported unreachable
        return max(1, int(min(vals))) if vals else None

    return Targets(pick(cfg.params, cfg.params_fraction, params_initial),
                   pick(cfg.flops, cfg.flops_fraction, flops_initial),
                   cfg.latency_ms or None)


def measures(params: int, flops: int, table: LatencyTable | None) -> dict[str, float]:
    out: dict[str, float] = {"params": params, "flops": flops}
    if table is not None:
        out["latency_ms"] = table.estimate(flops)
    return out


def gaps(targets: Targets, measured: dict[str, float]) -> dict[str, float]:
    """Relative distance to each target: ``measured / target - 1`` (> 0 = over budget)."""
    out = {}
    for key, target in targets.to_dict().items():
        if target is not None:
            out[key] = float(measured[key]) / float(target) - 1.0
    return out


def is_met(targets: Targets, measured: dict[str, float]) -> bool:
    return all(g <= 1e-12 for g in gaps(targets, measured).values())


def check_reachable(targets: Targets, floor: dict[str, float]) -> None:
    """Raise :class:`BudgetError` naming the target that even the smallest model misses."""
    for key, g in gaps(targets, floor).items():
        if g > 1e-12:
            target = targets.to_dict()[key]
            raise BudgetError(
                f"budget {key} = {target:,} is unreachable: the smallest model the rule can "
                f"reach (every prunable layer at prune.min_channels) has {key} = "
                f"{floor[key]:,.6g}; raise the budget or lower prune.min_channels")


# ----------------------------------------------------------------------------- controller


@dataclass(frozen=True)
class ControllerState:
    """The controller's value; a new one is returned by every transition."""

    k: float
    step_fraction: float
    step_cap: float = 1.0  # the largest step_fraction (prune.max_fraction)
    status: str = "pruning"
    accepted: int = 0
    rollbacks: int = 0
    rollbacks_in_row: int = 0
    # the candidate under the guard: cut in round ``cut_round``, judged in ``check_round``
    cut_round: int | None = None
    check_round: int | None = None
    acc_before: float | None = None
    n_before: int = 0  # validation samples behind acc_before
    val_clients: list[int] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return self.cut_round is not None

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "step_fraction": self.step_fraction, "step_cap": self.step_cap,
                "status": self.status,
                "accepted": self.accepted, "rollbacks": self.rollbacks,
                "rollbacks_in_row": self.rollbacks_in_row, "cut_round": self.cut_round,
                "check_round": self.check_round, "acc_before": self.acc_before,
                "n_before": self.n_before,
                "val_clients": list(self.val_clients)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ControllerState:
        if d.get("status") not in STATUSES:
            raise ValueError(f"controller state: unknown status {d.get('status')!r}")
        return cls(**d)


GROW_ON_ACCEPT = 1.25


def start(k: float, step_fraction: float) -> ControllerState:
    return ControllerState(k=float(k), step_fraction=float(step_fraction),
                           step_cap=float(step_fraction))


def nothing_cut(cfg: BudgetConfig, st: ControllerState) -> ControllerState:
    """A try over budget removed no channel: tighten k and regrow the step cap, or report
    that the rule is stuck (k at k_min and the full step cap)."""
    if st.k <= cfg.k_min + 1e-12 and st.step_fraction >= st.step_cap - 1e-12:
        return replace(st, status="unreachable")
    return replace(st, k=max(cfg.k_min, st.k * cfg.tighten),
                   step_fraction=min(st.step_cap, st.step_fraction * cfg.relax))


def cut(cfg: BudgetConfig, st: ControllerState, rnd: int, acc_before: float | None,
        val_clients: list[int], n_before: int = 0) -> ControllerState:
    """A try removed channels: the candidate waits for the guard (or is accepted at once)."""
    if not cfg.guard:
        return _accepted(st)
    return replace(st, cut_round=rnd, check_round=rnd + cfg.guard_recovery_rounds,
                   acc_before=acc_before, n_before=int(n_before), val_clients=list(val_clients))


def guard_margin(cfg: BudgetConfig, acc_before: float, n_before: int, acc_after: float,
                 n_after: int) -> float:
    """The largest accepted drop: ``guard_tolerance + guard_z * SE``.

    ``SE = sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2)`` is the standard error of the difference
    of the two accuracy estimates (0 when a count is unknown), so that sampling noise of a few
    hundred validation samples does not pass for damage.
    """
    se = 0.0
    if n_before > 0 and n_after > 0:
        p1, p2 = min(max(acc_before, 0.0), 1.0), min(max(acc_after, 0.0), 1.0)
        se = math.sqrt(p1 * (1 - p1) / n_before + p2 * (1 - p2) / n_after)
    return cfg.guard_tolerance + cfg.guard_z * se


def judge(cfg: BudgetConfig, st: ControllerState, acc_after: float, n_after: int = 0
          ) -> tuple[ControllerState, bool]:
    """The guard's verdict on the pending candidate: ``(new state, accepted)``.

    A candidate no one could judge (``acc_after`` NaN) is rolled back.
    """
    if not st.pending or st.acc_before is None:
        raise ValueError("no candidate is waiting for the guard")
    drop = st.acc_before - acc_after
    margin = guard_margin(cfg, st.acc_before, st.n_before, acc_after, n_after)
    cleared = replace(st, cut_round=None, check_round=None, acc_before=None, n_before=0,
                      val_clients=[])
    if drop <= margin + 1e-12:
        return _accepted(cleared), True
    in_row = st.rollbacks_in_row + 1
    relaxed = replace(cleared, k=min(cfg.k_max, st.k * cfg.relax),
                      step_fraction=st.step_fraction / 2, rollbacks=st.rollbacks + 1,
                      rollbacks_in_row=in_row,
                      status="gave_up" if in_row >= cfg.max_rollbacks else st.status)
    return relaxed, False


def _accepted(st: ControllerState) -> ControllerState:
    return replace(st, accepted=st.accepted + 1, rollbacks_in_row=0,
                   step_fraction=min(st.step_cap, st.step_fraction * GROW_ON_ACCEPT))


def finish_if_met(st: ControllerState, met: bool) -> ControllerState:
    return replace(st, status="met") if met and st.status == "pruning" else st
