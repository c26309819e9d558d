"""The suites: which (dataset, model) settings, which methods, which seeds.

Suites:

* ``test``: digits, CNN-FEMNIST at tiny widths, 3 rounds, 2 seeds (the test suite, seconds);
* ``quick``: digits and Fashion-MNIST, CNN-FEMNIST at full width, 3 seeds, fewer rounds and
  local epochs than the defaults so that the whole suite fits 20 minutes on 2 cores;
* ``budget``: Fashion-MNIST, CNN-FEMNIST (40 rounds) and Inception (60 rounds): budget mode
  (params <= 10 %, with and without the guard) beside dense FedAvg, the paper's rule,
  fedprune's default and the budget's size trained from scratch, 3 seeds;
* ``paper``: FEMNIST and CelebA (when their files are given), the paper's three
  architectures (CNN, ResNet-7, Inception) at full width, 100 rounds, 3 seeds.

Settings and methods: :mod:`fedprune.reproduce.methods`; planning a suite's runs:
:mod:`fedprune.reproduce.suites`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import merge
from .methods import ALL_METHODS, AUTO_METHODS, Setting, Window

__all__ = ["DATA_ENV", "SUITES", "Suite", "get_suite"]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    settings: tuple[Setting, ...]
    methods: tuple[str, ...] = ALL_METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    latency_runs: int = 100  # interleaved timed runs per model (after latency_warmup)
    latency_warmup: int = 10
    needs_files: tuple[str, ...] = ()  # datasets read from files given by the user
    note: str = ""  # for the report: what the suite leaves out and why
    headline: str = "fedprune-low"  # the method the report checks against its targets


# The suites written before widths were aligned (test, quick, budget, paper) keep the fixed
# ratios exact, as their reports were made: every method of their settings runs with
# prune.round_to = 1 (only the ratios read it).  The automatic suite's ratios are aligned.
EXACT_RATIOS = {"prune": {"round_to": 1}}


def _setting(dataset: str, model: str, title: str, overrides: dict[str, Any], *, note: str = "",
             cost: float = 1.0, paper_key: str = "", window: Window | None = None,
             aligned: bool = False) -> Setting:
    over = merge({"threads": 1, "data": {"name": dataset}, "model": {"name": model}},
                 overrides if aligned else merge(overrides, EXACT_RATIOS))
    rounds = int(over.get("fed", {}).get("rounds", 100))
    return Setting(dataset, model, over, window or Window.scaled(rounds), title, note, cost,
                   paper_key)


def _test_suite() -> Suite:
    tiny = {"data": {"num_clients": 6, "val_fraction": 0.0}, "model": {"widths": [4, 8]},
            "train": {"local_epochs": 1}, "fed": {"rounds": 3, "clients_per_round": 3,
                                                  "eval_every": 1}}
    return Suite(
        "test", "a tiny suite for the tests: digits, CNN-FEMNIST at widths [4, 8], 3 rounds",
        (_setting("digits", "cnn_femnist", "digits, CNN-FEMNIST at widths [4, 8] (tiny)", tiny,
                  window=Window(2, 3, 1)),),
        seeds=(0, 1), latency_runs=5, latency_warmup=1,
    )


# The quick suite: both datasets at the paper's CNN-FEMNIST width; rounds and local epochs cut
# so that 36 runs fit 20 minutes on 2 cores.  Measured on the 2-core machine (one thread per
# run, two runs at a time): a full-width Fashion-MNIST round (10 clients of ~600 samples, one
# epoch) takes ~2.7 s, so a dense 40-round run ~110 s and a pruned one ~65 s; at 100 rounds and
# 5 local epochs (the defaults) one dense run alone would take ~25 minutes.  Digits rounds are
# ~0.4 s (dense) at 1 local epoch, so digits keeps the default 100 rounds.
# (Written before the automatic method: every client trains on all its samples.)
QUICK_DIGITS = {"data": {"num_clients": 20, "alpha": 0.5, "val_fraction": 0.0},
                "train": {"local_epochs": 1}, "fed": {"rounds": 100, "clients_per_round": 10}}
QUICK_FASHION = {"data": {"num_clients": 100, "alpha": 0.5, "max_test_samples": 2000,
                          "val_fraction": 0.0},
                 "train": {"local_epochs": 1}, "fed": {"rounds": 40, "clients_per_round": 10}}


def _quick_suite() -> Suite:
    return Suite(
        "quick",
        "digits and Fashion-MNIST, CNN-FEMNIST at full width, 6 methods, 3 seeds "
        "(fits 20 minutes on 2 cores)",
        (
            _setting("fashion-mnist", "cnn_femnist", "Fashion-MNIST, CNN-FEMNIST (full width)",
                     QUICK_FASHION, cost=4.0),
            _setting("digits", "cnn_femnist", "digits, CNN-FEMNIST (full width)",
                     QUICK_DIGITS, cost=1.0,
                     note="fedprune's default configuration except 1 local epoch instead of 5"),
        ),
        note="The quick suite runs the paper's CNN (CNN-FEMNIST, full width) only. ResNet-7 "
             "and Inception are left to the `paper` suite (FEMNIST and CelebA): with six "
             "methods and three seeds each, one more architecture does not fit the 20-minute "
             "budget on 2 cores (Inception costs 31 M FLOPs per 28x28 sample, 4x the CNN). "
             "Local epochs (1 instead of 5) and, on Fashion-MNIST, rounds (40 instead of 100) "
             "are cut for the same reason; fedprune's pruning window is scaled with the rounds "
             "(`Window.scaled`: at 100 rounds it is the default, rounds 30-40 every 2).",
    )


# Inception: 60 rounds of 10 clients (about 8.5 s per dense round single-threaded here).  At
# 30 rounds of 5 clients dense FedAvg's final accuracy spread over 0.69-0.82 across seeds,
# too noisy to judge a 1-point target.
BUDGET_INCEPTION = merge(QUICK_FASHION, {"fed": {"rounds": 60}})


def _budget_suite() -> Suite:
    return Suite(
        "budget",
        "budget mode (params <= 10 %, with and without the guard) beside dense FedAvg, the "
        "paper's rule, fedprune's default and the budget's size trained from scratch: "
        "Fashion-MNIST with CNN-FEMNIST and Inception, 3 seeds",
        (
            _setting("fashion-mnist", "cnn_femnist", "Fashion-MNIST, CNN-FEMNIST (full width)",
                     QUICK_FASHION, cost=1.0),
            _setting("fashion-mnist", "inception", "Fashion-MNIST, Inception (full width)",
                     BUDGET_INCEPTION, cost=6.0,
                     note="60 rounds of 10 clients, 1 local epoch (Inception costs 4x the "
                          "CNN's FLOPs per sample)"),
        ),
        methods=("dense", "paper", "fedprune-low", "budget-p10", "budget-p10-noguard",
                 "scratch-p10"),
        note="The guarded budget rows hold out 10 % of every client's samples as its "
             "validation split for the guard (the other methods train on all of them). 1 local "
             "epoch; the CNN runs 40 rounds as in the quick suite. The 36 runs take about 103 "
             "core-minutes (about 52 minutes on 2 cores), 86 % of it Inception.",
    )


# The automatic suite: fedprune's default configuration on digits, and Fashion-MNIST with 100
# clients of ~540 training samples (10 % of each client's samples are its validation split,
# in every method), 10 per round, 1 local epoch, 100 rounds, test set capped at 2,000.
# Single-threaded here a dense CNN-FEMNIST run takes ~2.5 min; Inception ~8.5 s per round.
# Every setting runs 100 rounds: a shorter run leaves the automatic method too short a window
# (Inception at 60 rounds: rounds 18 to 36, which ended while candidates were recovering).
AUTO_FASHION = {"data": {"num_clients": 100, "alpha": 0.5, "max_test_samples": 2000},
                "train": {"local_epochs": 1}, "fed": {"rounds": 100, "clients_per_round": 10}}


def _auto_suite() -> Suite:
    return Suite(
        "auto",
        "the automatic method (fedprune's default) beside dense FedAvg, the boundary rule, "
        "the paper's rule, fixed ratios of 25, 50 and 75 % and its own size from scratch: "
        "digits (default configuration) and Fashion-MNIST (CNN-FEMNIST, ResNet-7, Inception; "
        "Dirichlet 0.5 and 0.1), 3 seeds",
        (
            _setting("digits", "cnn_femnist", "digits, CNN-FEMNIST (default configuration)",
                     {}, cost=1.5, aligned=True, note="fedprune's default configuration"),
            _setting("fashion-mnist", "cnn_femnist", "Fashion-MNIST, CNN-FEMNIST", AUTO_FASHION,
                     cost=2.5, aligned=True),
            _setting("fashion-mnist", "cnn_femnist_a01",
                     "Fashion-MNIST, CNN-FEMNIST, Dirichlet 0.1",
                     merge(AUTO_FASHION, {"data": {"alpha": 0.1},
                                          "model": {"name": "cnn_femnist"}}), cost=2.5,
                     aligned=True),
            _setting("fashion-mnist", "resnet7", "Fashion-MNIST, ResNet-7", AUTO_FASHION,
                     cost=4.0, aligned=True),
            _setting("fashion-mnist", "inception", "Fashion-MNIST, Inception", AUTO_FASHION,
                     cost=13.0, note="100 rounds, as every setting of this suite",
                     aligned=True),
        ),
        methods=AUTO_METHODS,
        headline="auto",
        note="Every method holds out the same 10 % of each client's samples (fedprune's "
             "default `data.val_fraction`); only the automatic methods use them. The fixed "
             "ratios cut once, at the window's start (30 % of the rounds), the channels they "
             "keep rounded to multiples of 16 as the automatic method's widths are "
             "(`prune.round_to`).",
    )


# the environment variables naming a dataset's files (``--data NAME=PATH`` takes precedence)
DATA_ENV = {"femnist": "FEDPRUNE_FEMNIST", "celeba": "FEDPRUNE_CELEBA",
            "fashion-mnist": "FEDPRUNE_FASHION_MNIST"}


def _paper_suite() -> Suite:
    femnist = {"data": {"partition": "natural", "num_clients": 3400, "val_fraction": 0.0},
               "train": {"lr": 1e-3}, "fed": {"rounds": 100, "clients_per_round": 50}}
    celeba = {"data": {"partition": "natural", "num_clients": 9343, "val_fraction": 0.0},
              "train": {"lr": 1e-3}, "fed": {"rounds": 100, "clients_per_round": 50}}
    note = "one client per {who}; the paper ran 500 rounds"
    return Suite(
        "paper",
        "FEMNIST and CelebA (files given with --data NAME=PATH or $FEDPRUNE_FEMNIST / "
        "$FEDPRUNE_CELEBA), CNN, ResNet-7 and Inception at the paper's widths",
        (
            _setting("femnist", "cnn_femnist", "FEMNIST, CNN-FEMNIST", femnist,
                     note=note.format(who="writer"), cost=4, paper_key="CNN / FEMNIST"),
            _setting("femnist", "resnet7", "FEMNIST, ResNet-7", femnist,
                     note=note.format(who="writer"), cost=2),
            _setting("femnist", "inception", "FEMNIST, Inception", femnist,
                     note=note.format(who="writer"), cost=12, paper_key="Inception / FEMNIST"),
            _setting("celeba", "cnn_celeba", "CelebA, CNN-CelebA", celeba,
                     note=note.format(who="celebrity"), cost=10, paper_key="CNN / CelebA"),
            _setting("celeba", "resnet7", "CelebA, ResNet-7", celeba,
                     note=note.format(who="celebrity"), cost=3, paper_key="ResNet-7 / CelebA"),
            _setting("celeba", "inception", "CelebA, Inception", celeba,
                     note=note.format(who="celebrity"), cost=12, paper_key="Inception / CelebA"),
        ),
        needs_files=("femnist", "celeba"),
    )


SUITES: dict[str, Callable[[], Suite]] = {"test": _test_suite, "quick": _quick_suite,
                                          "budget": _budget_suite, "paper": _paper_suite,
                                          "auto": _auto_suite}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}: choose one of {', '.join(SUITES)}")
    return SUITES[name]()
