"""Planning a suite: its runs, their folders and configurations, its data files.

A suite is settings x methods x seeds (settings and methods:
:mod:`fedprune.reproduce.methods`); each run goes to
``OUT/<dataset>/<model>/<method>/seed<k>/``.

The suites themselves (``test``, ``quick``, ``budget``, ``auto``, ``paper``) are
:mod:`fedprune.reproduce.catalog`.

Data files: FEMNIST and CelebA are given with ``data_paths`` (``--data NAME=PATH``) or
``$FEDPRUNE_FEMNIST`` / ``$FEDPRUNE_CELEBA``; Fashion-MNIST is read from its default folder
(``/usr/share/datasets/fashion-mnist``, Debian's ``dataset-fashion-mnist``) unless
``--data fashion-mnist=PATH`` or ``$FEDPRUNE_FASHION_MNIST`` names another folder of its IDX
files.  A setting whose files are absent is skipped (and listed as such in the report).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, from_dict, merge, parse_overrides
from .catalog import DATA_ENV, Suite
from .methods import METHODS, Method, Setting, Window


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
