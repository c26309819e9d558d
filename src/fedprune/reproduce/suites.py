"""Suites: which (dataset, model) settings, which methods, which seeds.

A suite is settings x methods x seeds (settings and methods:
:mod:`fedprune.reproduce.methods`); each run goes to
``OUT/<dataset>/<model>/<method>/seed<k>/``.

Suites:

* ``test``: digits, CNN-FEMNIST at tiny widths, 3 rounds, 2 seeds (the test suite, seconds);
* ``quick``: digits and Fashion-MNIST, CNN-FEMNIST at full width, 3 seeds, fewer rounds and
  local epochs than the defaults so that the whole suite fits 20 minutes on 2 cores;
* ``budget``: Fashion-MNIST, CNN-FEMNIST (40 rounds) and Inception (60 rounds): budget mode
  (params <= 10 %, with and without the guard) beside dense FedAvg, the paper's rule,
  fedprune's default and the budget's size trained from scratch, 3 seeds;
* ``paper``: FEMNIST and CelebA (when their files are given), the paper's three
  architectures (CNN, ResNet-7, Inception) at full width, 100 rounds, 3 seeds.

Data files: FEMNIST and CelebA are given with ``data_paths`` (``--data NAME=PATH``) or
``$FEDPRUNE_FEMNIST`` / ``$FEDPRUNE_CELEBA``; Fashion-MNIST is read from its default folder
(``/usr/share/datasets/fashion-mnist``, Debian's ``dataset-fashion-mnist``) unless
``--data fashion-mnist=PATH`` or ``$FEDPRUNE_FASHION_MNIST`` names another folder of its IDX
files.  A setting whose files are absent is skipped (and listed as such in the report).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, from_dict, merge, parse_overrides
from .methods import ALL_METHODS, AUTO_METHODS, METHODS, Method, Setting, Window


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


def _setting(dataset: str, model: str, title: str, overrides: dict[str, Any], *, note: str = "",
             cost: float = 1.0, paper_key: str = "", window: Window | None = None) -> Setting:
    over = merge({"threads": 1, "data": {"name": dataset}, "model": {"name": model}}, overrides)
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
                     {}, cost=1.5, note="fedprune's default configuration"),
            _setting("fashion-mnist", "cnn_femnist", "Fashion-MNIST, CNN-FEMNIST", AUTO_FASHION,
                     cost=2.5),
            _setting("fashion-mnist", "cnn_femnist_a01",
                     "Fashion-MNIST, CNN-FEMNIST, Dirichlet 0.1",
                     merge(AUTO_FASHION, {"data": {"alpha": 0.1},
                                          "model": {"name": "cnn_femnist"}}), cost=2.5),
            _setting("fashion-mnist", "resnet7", "Fashion-MNIST, ResNet-7", AUTO_FASHION,
                     cost=4.0),
            _setting("fashion-mnist", "inception", "Fashion-MNIST, Inception", AUTO_FASHION,
                     cost=13.0, note="100 rounds, as every setting of this suite"),
        ),
        methods=AUTO_METHODS,
        headline="auto",
        note="Every method holds out the same 10 % of each client's samples (fedprune's "
             "default `data.val_fraction`); only the automatic method uses them. The fixed "
             "ratios cut once, at the window's start (30 % of the rounds).",
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


@dataclass(frozen=True)
class PlannedRun:
    """One run of a suite: where it goes and its full configuration."""

    setting: Setting
    method: Method
    seed: int
    run_dir: Path
    config: ExperimentConfig

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.setting.dataset, self.setting.model, self.method.name, self.seed)

    @property
    def cost(self) -> float:
        return self.setting.cost * self.method.cost

    def sets(self) -> list[str]:
        """The run as ``fedprune run --set`` arguments (for the record and by hand)."""
        out: list[str] = []

        def walk(d: dict[str, Any], prefix: str) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                elif isinstance(v, (bool, list)):
                    out.append(f"{prefix}{k}={json.dumps(v, separators=(',', ':'))}")
                else:
                    out.append(f"{prefix}{k}={v}")
        walk(run_overrides(self.setting, self.method, self.seed), "")
        return out


def run_overrides(setting: Setting, method: Method, seed: int) -> dict[str, Any]:
    over = merge(setting.overrides, {"seed": seed, "prune": method.prune(setting)})
    return merge(over, method.other(setting)) if method.other is not None else over


@dataclass
class Plan:
    suite: Suite
    out: Path
    runs: list[PlannedRun]
    skipped_settings: list[tuple[Setting, str]] = field(default_factory=list)  # (setting, why)
    # runs that wait for another run's outcome (a from-scratch baseline of its final size):
    # (setting, method, seed, why); planned once that run has finished
    deferred: list[tuple[Setting, Method, int, str]] = field(default_factory=list)


def data_paths_from_env() -> dict[str, str]:
    """``{dataset: path}`` from ``$FEDPRUNE_FEMNIST``, ``$FEDPRUNE_CELEBA`` and
    ``$FEDPRUNE_FASHION_MNIST`` (those set and not empty)."""
    return {name: os.environ[var] for name, var in DATA_ENV.items() if os.environ.get(var)}


def file_datasets(suite: Suite) -> list[str]:
    """The suite's datasets that are read from files (all but the embedded ``digits``)."""
    from ..data.registry import SPECS

    return sorted({s.dataset for s in suite.settings if SPECS[s.dataset].formats})


def _data_path(setting: Setting, suite: Suite, given: str) -> tuple[str | None, str]:
    """``(data.path to set or None, why the setting is skipped or "")`` for one setting.

    A path given for the dataset (``--data`` or its environment variable) must exist; without
    one, the dataset's default folder (Fashion-MNIST) is used where it exists, else the setting
    is skipped.
    """
    from ..data.registry import SPECS

    name = setting.dataset
    env = DATA_ENV.get(name, "")
    how = f"--data {name}=PATH" + (f" or ${env}" if env else "")
    if given:
        path = Path(given).expanduser()
        if not path.exists():
            raise ValueError(f"{name} files: {given} does not exist (given with {how})")
        return str(path), ""
    default = SPECS[name].default_path
    if name in suite.needs_files or not default:
        return None, f"no {name} files: give {how}"
    if not Path(default).exists():
        install = (" (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist"
                   else "")
        return None, (f"{name} files absent: {default} does not exist; give {how}, or install "
                      f"them there{install}")
    return None, ""


def plan_suite(
    suite: Suite,
    out: Path,
    *,
    seeds: list[int] | None = None,
    sets: list[str] | None = None,
    data_paths: dict[str, str] | None = None,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    models: list[str] | None = None,
) -> Plan:
    """Every run of ``suite`` under ``out``; settings whose data files are absent are skipped.

    ``sets`` (``key=value``) override the settings of every run alike; a changed ``fed.rounds``
    rescales the pruning windows.  ``data_paths`` maps a dataset name to its files (it takes
    precedence over the environment, see :func:`data_paths_from_env`); a path given for a
    dataset must exist, and only the suite's datasets read from files may be named.
    ``methods``, ``datasets`` and ``models`` keep a subset of the suite's.
    """
    for name in methods or []:
        if name not in suite.methods:
            raise ValueError(f"method {name!r} is not in suite {suite.name}: "
                             + ", ".join(suite.methods))
    known = {s.dataset for s in suite.settings}
    for name in datasets or []:
        if name not in known:
            raise ValueError(f"dataset {name!r} is not in suite {suite.name}: "
                             + ", ".join(sorted(known)))
    known_models = {s.model for s in suite.settings}
    for name in models or []:
        if name not in known_models:
            raise ValueError(f"model {name!r} is not in suite {suite.name}: "
                             + ", ".join(sorted(known_models)))
    with_files = file_datasets(suite)
    for name in data_paths or {}:
        if name not in with_files:
            raise ValueError(
                f"--data {name}=...: suite {suite.name} reads no {name} files ("
                + (f"its datasets read from files: {', '.join(with_files)}" if with_files
                   else "all its data is embedded") + ")")
    paths = {**data_paths_from_env(), **(data_paths or {})}
    extra = parse_overrides(list(sets or []))
    if "prune" in extra or "seed" in extra:
        raise ValueError("--set cannot change prune.* or seed: they define the methods and seeds")
    if "path" in extra.get("data", {}):
        raise ValueError("--set data.path would give every dataset of the suite the same files: "
                         "name each dataset's files with --data NAME=PATH")
    plan = Plan(suite, Path(out), [])
    for setting in suite.settings:
        if (datasets and setting.dataset not in datasets) or (models and setting.model
                                                               not in models):
            continue
        over = merge(setting.overrides, extra)
        if setting.dataset in with_files:
            path, why = _data_path(setting, suite, paths.get(setting.dataset, ""))
            if why:
                plan.skipped_settings.append((setting, why))
                continue
            if path is not None:
                over = merge(over, {"data": {"path": path}})
        rounds = int(over.get("fed", {}).get("rounds", 100))
        window = setting.window if rounds == setting.rounds else Window.scaled(rounds)
        setting = Setting(setting.dataset, setting.model, over, window, setting.title,
                          setting.note, setting.cost, setting.paper_key)
        for name in suite.methods:
            if methods and name not in methods:
                continue
            method = METHODS[name]
            for seed in (seeds if seeds is not None else suite.seeds):
                over = run_overrides(setting, method, seed)
                base = plan.out / setting.dataset / setting.model
                if method.widths_from:
                    widths, why = _final_widths(base / method.widths_from / f"seed{seed}",
                                                from_dict(over))
                    if widths is None:
                        plan.deferred.append((setting, method, seed, why))
                        continue
                    over = merge(over, {"model": {"widths": widths}})
                cfg = from_dict(over)
                plan.runs.append(PlannedRun(setting, method, seed,
                                            base / method.name / f"seed{seed}", cfg))
    return plan


def _final_widths(source: Path, cfg: ExperimentConfig) -> tuple[list[int] | None, str]:
    """The widths of a from-scratch model of the size the finished run in ``source`` ended
    with, or (None, why not).

    Where the run's prunable groups are the model's width settings one to one (the plain
    CNNs), these are its final widths; otherwise (ResNet-7's residual stream, Inception's
    branches) the default widths scaled uniformly to the run's final share of the parameters
    (:func:`fedprune.models.scaled_widths`).
    """
    from ..data.registry import SPECS
    from ..metrics import n_params
    from ..models import model_defaults, new_model, scaled_widths
    from ..rundir import RunDir

    rd = RunDir(source)
    if rd.state() != "finished":
        return None, f"waits for {source} to finish"
    summary = json.loads(rd.summary_file.read_text(encoding="utf-8"))
    widths = [int(w) for w in summary["widths_final"].values()]
    name = cfg.model.name
    spec = SPECS[cfg.data.name]
    dims = {"num_classes": spec.num_classes, "in_channels": spec.shape[0],
            "image_size": cfg.data.image_size}
    if len(widths) == len(model_defaults(name)["widths"]):
        # the groups are the width settings only if those widths rebuild the run's model
        # (Inception has as many groups as settings, in another order)
        built, _ = new_model(name, widths=widths, seed=0, **dims)
        if n_params(built) == summary["params_final"]:
            return widths, ""
    fraction = summary["params_final"] / summary["params_initial"]
    return scaled_widths(name, fraction, **dims), ""
