"""The Markdown report of a suite, built from its run folders alone (plus ``suite.json``).

Per (dataset, model) setting: a table of methods (:mod:`~fedprune.reproduce.tables`: mean +-
sample std over seeds of final accuracy, params, FLOPs, total bytes, bytes and latency ratios
vs dense FedAvg; a value of a single run is marked ``n = 1``, as it has no spread), checks of
fedprune's targets, and three plots (:mod:`~fedprune.reproduce.figures`: accuracy vs round,
params vs round, accuracy vs FLOPs).  The paper's published numbers (docs: ``method.md``)
stand beside ours in one table.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, default_auto_deadline, default_nested_window
from ..rundir import LATENCY_FILE, ROUNDS_FILE, SUMMARY_FILE
from .figures import PLOT_KINDS, plot_path, plots, slug
from .methods import METHODS
from .runner import read_suite_log
from .suites import Plan
from .tables import (
    AUTO_HEADLINE,
    PAPER_CLAIM,
    Cell,
    auto_checks,
    checks,
    collect,
    paper_table,
    rows_of,
    table,
)


def describe_setting(cfg: ExperimentConfig) -> str:
    """The settings every method shares, in words, from a run's configuration."""
    d, t, f = cfg.data, cfg.train, cfg.fed
    split = (f"Dirichlet α = {d.alpha:g}" if d.partition == "dirichlet" else d.partition)
    test = (f", test set capped at {d.max_test_samples:,} (seeded draw)"
            if d.max_test_samples else "")
    widths = f" at widths {cfg.model.widths}" if cfg.model.widths else ""
    return (f"{cfg.model.name}{widths}; {d.num_clients} clients ({split}), "
            f"{f.clients_per_round} per round, {f.rounds} rounds, {t.local_epochs} local "
            f"epoch{'s' if t.local_epochs > 1 else ''}, {t.optimizer} lr {t.lr:g}, batch "
            f"{t.batch_size}{test}")


def _command(argv: list[str]) -> str:
    return "fedprune " + shlex.join(argv)


def _share(inv: dict[str, Any]) -> str:
    """How much of its cores the suite's workers got (low = the machine was shared)."""
    cores = min(int(inv["jobs"]), int(inv.get("machine", {}).get("cores") or inv["jobs"]))
    if not inv.get("cpu_seconds") or not inv["seconds"]:
        return ""
    return f" ({inv['cpu_seconds'] / (inv['seconds'] * cores):.0%} of {cores} cores' time)"


def wall_time(log: dict[str, Any]) -> tuple[list[str], float]:
    lines, total = [], 0.0
    for inv in log.get("invocations", []):
        sec = float(inv["seconds"]) + float(inv.get("report_seconds", 0.0))
        total += sec
        st = inv["states_before"]
        lines.append(
            f"- {inv['started']}: `{_command(inv['argv'])}`: **{sec / 60:.1f} min** wall "
            f"({inv['seconds']:.0f} s runs and latency + {inv.get('report_seconds', 0.0):.0f} s "
            f"report), {inv['executed']} runs executed of {inv['runs']} (before it: "
            f"{st['done']} finished, {st['resume']} to resume, {st['fresh']} to start), "
            f"{inv['jobs']} in parallel"
            + (f" on {inv['machine']['cpu']}" if inv.get("machine", {}).get("cpu") else "")
            + f"; CPU time of its runs {inv.get('cpu_seconds', 0) / 60:.1f} "
            f"core-min{_share(inv)}; 1-minute load average {inv['loadavg_before'][0]:.2f} "
            f"before, {inv['loadavg_after'][0]:.2f} after"
            + (f", {inv['loadavg_mean']:.2f} on average and {inv['loadavg_max']:.2f} at most "
               "while running" if "loadavg_mean" in inv else "")
            + (f"; FAILED: {', '.join(inv['failed'])}" if inv.get("failed") else ""))
    return lines, total


def render(plan: Plan, cells: dict[tuple[str, str], dict[str, Cell]],
           plot_files: dict[str, list[Path]], report_path: Path,
           notes: str = "") -> str:
    """The report's Markdown: what was run and where, then a section per setting, then the
    paper's numbers beside ours, then ``notes``."""
    planned = [(r.setting, r.method, r.seed) for r in plan.runs] + [
        (s, m, seed) for s, m, seed, _ in plan.deferred]
    out = _introduction(plan, planned)
    out += _command_and_machine(plan, read_suite_log(plan.out))
    out += _methods(plan)
    with_auto = "auto" in {m.name for _, m, _ in planned}
    for (dataset, model), by in cells.items():
        out += _setting_section(plan, dataset, model, by, with_auto,
                                plot_files, report_path)
    out += _paper_section(cells)
    if notes.strip():
        out += ["## Notes", "", notes.strip(), ""]
    return "\n".join(out)


def _introduction(plan: Plan, planned: list[tuple[Any, Any, int]]) -> list[str]:
    """The title and what the report covers: runs, settings, methods, seeds."""
    n_set = len({(s.dataset, s.model) for s, _, _ in planned})
    n_met = len({m.name for _, m, _ in planned})
    n_seed = len({seed for _, _, seed in planned})
    waiting = (f"; {len(plan.deferred)} of them wait for the run whose size they take"
               if plan.deferred else "")
    return [f"# fedprune reproduce: suite `{plan.suite.name}`", "",
            f"{plan.suite.description}. This report: {len(planned)} runs{waiting} ({n_set} "
            f"setting{'s' if n_set != 1 else ''} × {n_met} method{'s' if n_met != 1 else ''} "
            f"× {n_seed} seed{'s' if n_seed != 1 else ''}). Generated from the run folders "
            f"under `{plan.out}` by the report step "
            "of `fedprune reproduce` (it runs alone with `--report-only`): every number "
            f"below is read from the runs' `{SUMMARY_FILE}`, `{ROUNDS_FILE}` and "
            f"`{LATENCY_FILE}`.", ""]


def _command_and_machine(plan: Plan, log: dict[str, Any]) -> list[str]:
    """The first invocation's command, the wall and CPU time, and the machine."""
    suite = plan.suite
    inv = log.get("invocations", [])
    machine = inv[-1]["machine"] if inv else {}
    cpus = list(dict.fromkeys(i["machine"]["cpu"] for i in inv
                              if i.get("machine", {}).get("cpu")))
    out = ["## Command and machine", ""]
    if inv:
        out += ["```bash\n" + _command(inv[0]["argv"]) + "\n```", ""]
    lines, total = wall_time(log)
    if lines:
        cpu = sum(i.get("cpu_seconds", 0.0) for i in inv)
        jobs = max(int(i["jobs"]) for i in inv)
        out.append(f"Wall time, all invocations together: **{total / 60:.1f} min**. The runs "
                   f"used {cpu / 60:.1f} core-min of CPU time (single-threaded each), i.e. at "
                   f"least {cpu / 60 / jobs:.1f} min of wall time on {jobs} dedicated cores; a "
                   "wall time far above that means the machine was shared (load averages).")
        out += ["", *lines, ""]
    how = ("each run single-threaded (`threads=1`), runs in parallel as listed above. "
           "Latency ratios are medians of interleaved onnxruntime runs (1 thread, "
           f"batch 1, {suite.latency_runs} timed runs after {suite.latency_warmup} "
           "warm-up runs) of each run's initial dense model and its final model, taken "
           "right after the run, while the other worker was training: ratios, not "
           "absolute times.")
    if len(cpus) > 1:  # records kept from several machines (scripts/keep_records.py)
        out += [(f"Machines: {'; '.join(cpus)} (each invocation's above; a run's latency "
                 "ratio was measured on the machine that ran it, interleaved with its dense "
                 f"model there); {how}"), ""]
    elif machine:
        out += [(f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
                 f"Python {machine.get('python')}, torch {machine.get('torch')}; {how}"), ""]
    return out


def _methods(plan: Plan) -> list[str]:
    """The methods run, the suite's note, the settings left out, what the columns mean."""
    suite = plan.suite
    out = ["## Methods (same seeds, rounds, clients per round and local epochs)", ""]
    present = {r.method.name for r in plan.runs}
    for name in (m for m in suite.methods if m in present):
        out.append(f"- **{METHODS[name].label}** (`{name}`): {METHODS[name].description}.")
    out.append("")
    if suite.note:
        out += [suite.note, ""]
    for setting, why in plan.skipped_settings:
        out.append(f"- Not run: {setting.title} ({why}).")
    if plan.skipped_settings:
        out.append("")
    out.append("Columns: mean ± sample standard deviation over the seeds of the final round "
               "(a value from a single run has no spread and is marked *n = 1*); "
               "params are PyTorch trainable parameters, FLOPs = 2 × MACs of one sample's "
               "forward pass, total bytes the float32 payload down and up over the run "
               "(architecture JSON included), *bytes vs dense* that total over dense FedAvg's "
               "for the same seed, *latency vs dense* the final model's median latency over "
               "the initial dense model's (lower is better for all three). Δ is the method's "
               "mean accuracy minus dense FedAvg's, in points.")
    out.append("")
    return out


def _setting_section(plan: Plan, dataset: str, model: str, by: dict[str, Cell],
                     with_auto: bool, plot_files: dict[str, list[Path]],
                     report_path: Path) -> list[str]:
    """One (dataset, model) setting: how it is set up, its table of methods, the headline
    method's targets, its plots and one run of it by hand."""
    setting = next(iter(by.values())).setting
    out = [f"## {setting.title}", ""]
    mine = [r for r in plan.runs if (r.setting.dataset, r.setting.model) == (dataset, model)]
    if mine:
        out += [_setting_line(setting, mine[0].config, with_auto), ""]
    rows = rows_of(by)
    headline = plan.suite.headline
    out += [table(rows, headline), "", f"Targets for {METHODS[headline].label}:", ""]
    out += [f"- {c}" for c in (auto_checks(rows, by) if headline == AUTO_HEADLINE
                               else checks(rows))]
    out.append("")
    for path in plot_files.get(slug(setting), []):
        rel = os.path.relpath(path, report_path.parent)
        out.append(f"![{path.stem}]({rel})")
    out.append("")
    pr = next((r for r in mine if r.method.name == headline), None)
    if pr is not None:
        sets = " ".join(f"--set {shlex.quote(s)}" for s in pr.sets()
                        if not s.startswith("seed="))
        out += [f"One run of {METHODS[headline].label} by hand: "
                f"`fedprune run --out DIR --set seed={pr.seed} {sets}`.", ""]
    return out


def _setting_line(setting: Any, config: ExperimentConfig, with_auto: bool) -> str:
    """The setting's data, model and training, and its pruning windows."""
    window = setting.window
    return (f"Setting: {describe_setting(config)}"
            + (f" ({setting.note})" if setting.note else "") + ". "
            f"Pruning window of fedprune's rule: rounds {window.start}-"
            f"{window.stop} every {window.interval} (the default "
            "is 30-40 every 2 of 100 rounds); the fixed-ratio baselines cut once at "
            f"round {window.start}."
            + (" The automatic method judges its widths from round {} every {} rounds up to "
               "round {} and cuts {}; the earlier automatic "
               "method (auto-paired) starts candidates from round {} up to round {}, each "
               "trained {} rounds before it is judged.".format(
                   *default_nested_window(config.fed.rounds)[::2],
                   default_nested_window(config.fed.rounds)[1],
                   "once two judgements in a row agree" if config.prune.decide == "agree" else
                   "from the second judgement on, as soon as a width fits with its cost pooled "
                   "over the last two judgements", window.start,
                   auto_last(config.fed.rounds, window.stop), window.interval)
               if with_auto else ""))


def _paper_section(cells: dict[tuple[str, str], dict[str, Cell]]) -> list[str]:
    """The paper's published numbers beside this suite's means."""
    return ["## The paper's published numbers beside ours", "",
            "The paper's rows are its authors' saved runs on FEMNIST and CelebA "
            "(`method.md`, 500 rounds, 50 clients per round; "
            f"{PAPER_CLAIM}). Our rows are this suite's means on its own data, so the "
            "comparison is of the reductions and the accuracy cost, not of absolute "
            "accuracy.", "", paper_table(cells), ""]


def auto_last(rounds: int, window_stop: int) -> int:
    """The last round the automatic method may start a candidate in (as its method sets)."""
    return max(window_stop, default_auto_deadline(rounds))


def write_report(plan: Plan, report_path: Path, notes_path: Path | None = None) -> Path:
    """Collect, plot (PNGs in ``<report stem>/``) and write the Markdown report."""
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    cells = collect(plan)
    plot_files = plots(cells, report_path.with_suffix(""))
    notes = Path(notes_path).read_text(encoding="utf-8") if notes_path else ""
    report_path.write_text(render(plan, cells, plot_files, report_path, notes), encoding="utf-8")
    return report_path


def rerender(plan: Plan, report_path: Path, notes_path: Path | None = None) -> None:
    """Rewrite the Markdown only (plots as they are): e.g. after logging the report time."""
    cells = collect(plan)
    slug_files = {}
    plot_dir = Path(report_path).with_suffix("")
    for by in cells.values():
        setting = next(iter(by.values())).setting
        slug_files[slug(setting)] = [p for k in PLOT_KINDS
                                     if (p := plot_path(plot_dir, setting, k)).is_file()]
    notes = Path(notes_path).read_text(encoding="utf-8") if notes_path else ""
    Path(report_path).write_text(render(plan, cells, slug_files, Path(report_path), notes),
                                 encoding="utf-8")
