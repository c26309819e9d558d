"""Settings and methods: what a suite holds equal across methods, and what each method adds.

A *setting* fixes everything that must be equal across methods: the data and its split, the
model, training (optimizer, lr, local epochs, batch), the federation (rounds, clients per
round, evaluation) and the pruning *window* (the rounds in which fedprune's rule may act;
fedprune's default is rounds 30-40 every 2 rounds of a 100-round run, shorter suites scale it).
A *method* adds ``prune.*`` settings (budget mode also ``budget.*`` and a validation split,
the from-scratch baseline ``model.widths``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import default_auto_deadline, default_budget_deadline, default_window


@dataclass(frozen=True)
class Window:
    """Rounds in which fedprune's rule is tried: start, last, every ``interval`` rounds."""

    start: int
    stop: int
    interval: int

    @classmethod
    def scaled(cls, rounds: int) -> Window:
        """fedprune's automatic window for ``rounds`` (:func:`fedprune.config.default_window`:
        six tries; at 100 rounds rounds 30 to 40 every 2)."""
        return cls(*default_window(rounds))


@dataclass(frozen=True)
class Setting:
    """One (dataset, model) cell of a suite, with everything kept equal across methods."""

    dataset: str  # folder name and data.name
    model: str  # folder name and model.name
    overrides: dict[str, Any]  # nested config overrides (data, model, train, fed, threads)
    window: Window  # fedprune's pruning window in this setting
    title: str  # for the report, e.g. "Fashion-MNIST, CNN-FEMNIST (full width)"
    note: str = ""  # remarks for the report beyond the settings themselves
    cost: float = 1.0  # relative run time, to start the longest runs first
    paper_key: str = ""  # row of the paper's table this setting corresponds to, if any

    @property
    def rounds(self) -> int:
        return int(self.overrides.get("fed", {}).get("rounds", 100))


@dataclass(frozen=True)
class Method:
    """A pruning method: ``prune.*`` overrides as a function of the setting."""

    name: str  # folder name
    label: str  # table row
    prune: Callable[[Setting], dict[str, Any]]
    cost: float = 1.0  # relative run time (dense = 1)
    description: str = ""
    # overrides of other sections (budget mode: ``budget.*``, ``data.val_fraction``; the
    # from-scratch baseline: ``model.widths``)
    other: Callable[[Setting], dict[str, Any]] | None = None
    # the from-scratch baseline of another method's outcome: the final widths of that
    # method's run with the same setting and seed (the run waits for it)
    widths_from: str = ""


def _dense(_: Setting) -> dict[str, Any]:
    return {"enabled": False}


def _paper(s: Setting) -> dict[str, Any]:
    # conf/paper_rule.toml: both tails, k = 2, from round 1 every round, no cap, patience 3,
    # survivors re-initialised; pruning allowed over the first half of the run (50 of 100)
    return {"enabled": True, "method": "boundary", "mode": "both", "k": 2.0, "start_round": 1,
            "interval": 1, "max_prune_round": max(1, s.rounds // 2), "patience": 3,
            "max_fraction": 1.0, "reinit": True}


def _fedprune(mode: str) -> Callable[[Setting], dict[str, Any]]:
    def f(s: Setting) -> dict[str, Any]:
        # fedprune's defaults (k, max_fraction, patience, min_channels, weights kept) in the
        # setting's window
        return {"enabled": True, "method": "boundary", "mode": mode,
                "start_round": s.window.start, "max_prune_round": s.window.stop,
                "interval": s.window.interval}
    return f


def _auto(_: Setting) -> dict[str, Any]:
    # fedprune's default: the automatic method with its own window (judgements from 20 % of
    # the rounds up to 40 %, config.default_nested_window) and widths on multiples of 16
    return {"enabled": True, "method": "auto"}


def _auto_paired(s: Setting) -> dict[str, Any]:
    # the earlier automatic method, from the window's start, candidates trained for the
    # window's interval, up to 60 % of the rounds (config.default_auto_deadline)
    return {"enabled": True, "method": "auto-paired", "start_round": s.window.start,
            "max_prune_round": max(s.window.stop, default_auto_deadline(s.rounds)),
            "interval": s.window.interval}


def _ratio(ratio: float) -> Callable[[Setting], dict[str, Any]]:
    def f(s: Setting) -> dict[str, Any]:
        # one-shot: a single try at the window's first round (max_prune_round = start_round)
        return {"enabled": True, "method": "ratio", "ratio": ratio,
                "start_round": s.window.start, "max_prune_round": s.window.start}
    return f


def _ratio_method(percent: int, cost: float) -> Method:
    return Method(f"ratio{percent}", f"fixed ratio {percent} % (one-shot)",
                  _ratio(percent / 100), cost,
                  f"L1, the lowest {percent} % of every layer's filters, once, at the "
                  "window's start; the channels kept rounded to a multiple of 16 "
                  "(prune.round_to's default)")


def _budget_prune(s: Setting) -> dict[str, Any]:
    # fedprune's defaults, tried every window interval from the window's start until the
    # budget is met (or 80 % of the rounds have passed)
    return {"enabled": True, "method": "boundary", "mode": "low",
            "start_round": s.window.start,
            "max_prune_round": max(s.window.stop, default_budget_deadline(s.rounds)),
            "interval": s.window.interval}


def _budget(fraction: float, guard: bool = True) -> Callable[[Setting], dict[str, Any]]:
    def f(s: Setting) -> dict[str, Any]:
        if not guard:  # every cut accepted at once; clients train on all their samples
            return {"budget": {"params_fraction": fraction, "guard": False},
                    "data": {"val_fraction": 0.0}}
        # guarded: 10 % of each client's samples become its validation split
        return {"budget": {"params_fraction": fraction, "guard": True,
                           "guard_recovery_rounds": s.window.interval},
                "data": {"val_fraction": 0.1}}
    return f


def _scratch(fraction: float) -> Callable[[Setting], dict[str, Any]]:
    def f(s: Setting) -> dict[str, Any]:
        # the budget's size trained from scratch: every default width scaled uniformly so that
        # the model has at most ``fraction`` of the default model's parameters
        from ..data.registry import SPECS
        from ..models import scaled_widths

        spec = SPECS[s.dataset]
        size = int(s.overrides.get("data", {}).get("image_size", spec.shape[1]))
        widths = scaled_widths(s.model, fraction, num_classes=spec.num_classes,
                               in_channels=spec.shape[0], image_size=size)
        return {"model": {"widths": widths}}
    return f


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dense", "dense FedAvg", _dense, 1.0, "no pruning (prune.enabled=false)"),
    Method("paper", "paper rule, faithful", _paper, 0.3,
           "both tails, k = 2, from round 1 every round, no cap, survivors re-initialised "
           "(conf/paper_rule.toml)"),
    Method("fedprune-low", "boundary rule (low)", _fedprune("low"), 0.7,
           "prune.method = boundary with its defaults (fedprune's default before the "
           "automatic method): low tail, k = 0.75, max_fraction 0.2, weights kept"),
    Method("fedprune-both", "boundary rule, mode both", _fedprune("both"), 0.7,
           "as the default but removing both tails"),
    Method("auto", "fedprune automatic (default)", _auto, 0.8,
           "fedprune's default (prune.method = auto): until the size is decided each sampled "
           "client holds one nested width of the model (widths on multiples of 16) and each "
           "of its batches trains that width or, half the time, a narrower one inside it; "
           "from 20 % of the rounds, every 2 rounds, the clients' validation splits measure "
           "every width against the full one in one query, and from the second judgement the "
           "model is cut to the narrowest width whose cost, pooled over the last two "
           "judgements (each weighted by its precision), fits prune.max_accuracy_drop = 1 "
           "point"),
    Method("auto-paired", "earlier automatic method (auto-paired)", _auto_paired, 1.2,
           "prune.method = auto-paired (fedprune's default before nested widths): candidate "
           "cuts trained beside the model and kept while their cost in paired federated "
           "validation fits prune.max_accuracy_drop = 1 point (a candidate that does not fit "
           "yet is judged again, up to 3 times, 2 rounds apart)"),
    *(_ratio_method(percent, cost) for percent, cost in ((25, 0.8), (50, 0.6), (75, 0.5),
                                                        (85, 0.5))),
    Method("budget-p10", "fedprune budget: params <= 10 % (guarded)", _budget_prune, 0.6,
           "budget mode: at most 10 % of the initial parameters, k adapted round by round, "
           "federated-validation guard (tolerance 1 point, 10 % of each client's samples held "
           "out for it)", other=_budget(0.1)),
    Method("budget-p10-noguard", "fedprune budget: params <= 10 %, no guard", _budget_prune,
           0.6, "budget mode without the guard: k adapted round by round until the budget is "
           "met, every cut kept, no validation split", other=_budget(0.1, guard=False)),
    Method("scratch-p10", "small model from scratch: params <= 10 %", _dense, 0.3,
           "no pruning: the model built at its default widths scaled uniformly to at most 10 % "
           "of the parameters and trained from the first round (the budget's size without "
           "pruning)", other=_scratch(0.1)),
    Method("scratch-auto", "small model from scratch: the automatic method's size", _dense,
           0.5, "no pruning: a model of the automatic method's final size (same setting and "
           "seed: its final widths, or for ResNet-7 and Inception the default widths scaled "
           "to its final share of the parameters) trained from the first round",
           widths_from="auto"),
)}

# the methods of the suites written before the automatic method (quick, paper, test)
ALL_METHODS = ("dense", "paper", "fedprune-low", "fedprune-both", "ratio50", "ratio85")
# the automatic suite's: the new default beside every baseline
AUTO_METHODS = ("dense", "auto", "auto-paired", "fedprune-low", "paper", "ratio25",
                "ratio50", "ratio75", "scratch-auto")
