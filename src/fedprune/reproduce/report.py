"""The Markdown report of a suite, built from its run folders alone (plus ``suite.json``).

Per (dataset, model) setting: a table of methods (mean +- sample std over seeds of final
accuracy, params, FLOPs, total bytes, bytes and latency ratios vs dense FedAvg; a value of a
single run is marked ``n = 1``, as it has no spread), checks of
fedprune's targets, and three plots (accuracy vs round, params vs round, accuracy vs FLOPs).
The paper's published numbers (docs: ``method.md``) stand beside ours in one table.
"""

from __future__ import annotations

import math
import os
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..rundir import LATENCY_FILE, ROUNDS_FILE, SUMMARY_FILE, RunDir
from .runner import read_suite_log
from .suites import METHODS, Plan, Setting

# What the authors' saved runs show (method.md, "The numbers to meet and beat"); the Keras
# parameter counts include BN running statistics for ResNet-7.
PAPER_ROWS: tuple[dict[str, Any], ...] = (
    {"key": "CNN / FEMNIST", "params": (56_126, 21_488), "flops_cut": 0.620,
     "acc": (0.7478, 0.7155)},
    {"key": "CNN / CelebA", "params": (80_930, 10_998), "flops_cut": 0.806,
     "acc": (0.9587, 0.9260)},
    {"key": "ResNet-7 / CelebA", "params": (30_626, 6_791), "flops_cut": 0.692,
     "acc": (0.8951, 0.8583)},
    {"key": "Inception / FEMNIST", "params": (246_236, 84_719), "flops_cut": 0.586,
     "acc": (0.8220, 0.8074)},
    {"key": "Inception / CelebA", "params": (243_752, 127_080), "flops_cut": 0.470,
     "acc": (0.8681, 0.7211)},
)
PAPER_CLAIM = ("claimed in the paper: params -89 %, FLOPs -90 %, minimal accuracy loss, up to "
               "5x less communication, inference time halved on Android")

# fedprune's bar (method.md): >= 85 % fewer FLOPs at most 1 point below dense FedAvg
TARGET_FLOPS_CUT = 0.85
TARGET_GAP_POINTS = 1.0
HEADLINE_METHOD = "fedprune-low"


@dataclass
class RunData:
    seed: int
    summary: dict[str, Any]
    rounds: list[dict[str, Any]]
    latency: dict[str, Any] | None


@dataclass
class Cell:
    """One method in one setting: its finished runs."""

    setting: Setting
    method: str
    planned: int
    runs: list[RunData] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [float(r.summary[key]) for r in self.runs]

    def latency_ratios(self) -> list[float]:
        return [float(r.latency["ratio"]) for r in self.runs if r.latency is not None]


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; the deviation is NaN for fewer than two values."""
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def collect(plan: Plan) -> dict[tuple[str, str], dict[str, Cell]]:
    """Finished runs of ``plan``, grouped by (dataset, model) and then by method."""
    cells: dict[tuple[str, str], dict[str, Cell]] = {}
    for run in plan.runs:
        key = (run.setting.dataset, run.setting.model)
        cell = cells.setdefault(key, {}).setdefault(
            run.method.name, Cell(run.setting, run.method.name, 0))
        cell.planned += 1
        rd = RunDir(run.run_dir)
        if rd.state() != "finished":
            continue
        cell.runs.append(RunData(run.seed, rd.read_summary(), rd.read_rounds(),
                                 rd.read_latency()))
    return cells


def _bytes_ratios(cell: Cell, dense: Cell | None) -> list[float]:
    dense_bytes = {r.seed: r.summary["bytes_total"] for r in (dense.runs if dense else [])}
    return [r.summary["bytes_total"] / dense_bytes.get(r.seed, r.summary["bytes_total_dense"])
            for r in cell.runs]


def _fmt(mean: float, sd: float, spec: str, unit: str = "") -> str:
    """``mean ± sd``; a single value (no spread) as ``value (n = 1)``; nothing as ``-``."""
    if math.isnan(mean):
        return "-"
    if math.isnan(sd):
        return f"{mean:{spec}}{unit} (n = 1)"
    return f"{mean:{spec}}{unit} ± {sd:{spec}}{unit}"


def _widths(cell: Cell) -> str:
    seen: dict[str, int] = {}
    for r in cell.runs:
        w = str(list(r.summary["widths_final"].values()))
        seen[w] = seen.get(w, 0) + 1
    return ", ".join(w if n == 1 else f"{w} ×{n}" for w, n in seen.items())


@dataclass
class Row:
    method: str
    n: int
    planned: int
    acc: tuple[float, float]
    gap: float  # dense mean - method mean, points
    params: tuple[float, float]
    flops: tuple[float, float]
    flops_cut: list[float]
    mbytes: tuple[float, float]
    bytes_ratio: tuple[float, float]
    latency_ratio: tuple[float, float]
    widths: str
    seconds: float
    params_initial: int
    flops_initial: int


def rows_of(cells: dict[str, Cell]) -> list[Row]:
    dense = cells.get("dense")
    dense_acc = _mean_sd(dense.values("accuracy"))[0] if dense and dense.runs else math.nan
    out = []
    for name in (m for m in METHODS if m in cells):
        c = cells[name]
        acc = _mean_sd(c.values("accuracy"))
        out.append(Row(
            name, len(c.runs), c.planned, acc, 100 * (dense_acc - acc[0]),
            _mean_sd(c.values("params_final")), _mean_sd(c.values("flops_final")),
            [1 - r.summary["flops_final"] / r.summary["flops_initial"] for r in c.runs],
            _mean_sd([b / 1e6 for b in c.values("bytes_total")]),
            _mean_sd(_bytes_ratios(c, dense)), _mean_sd(c.latency_ratios()), _widths(c),
            statistics.fmean(c.values("seconds")) if c.runs else math.nan,
            int(c.runs[0].summary["params_initial"]) if c.runs else 0,
            int(c.runs[0].summary["flops_initial"]) if c.runs else 0,
        ))
    return out


def table(rows: list[Row]) -> str:
    head = ("| method | seeds | accuracy | Δ vs dense (points) | params | FLOPs / sample | "
            "FLOPs cut | total bytes | bytes vs dense | latency vs dense | final widths | "
            "run wall time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        label = METHODS[r.method].label
        if r.method == HEADLINE_METHOD:
            label = f"**{label}**"
        seeds = f"{r.n}" if r.n == r.planned else f"{r.n} of {r.planned}"
        cut = f"{statistics.fmean(r.flops_cut):.1%}" if r.flops_cut else "-"
        gap = "-" if r.method == "dense" or math.isnan(r.gap) else f"{-r.gap:+.2f}"
        lines.append(
            f"| {label} | {seeds} | {_fmt(*r.acc, '.4f')} | {gap} | "
            f"{_fmt(*r.params, ',.0f')} | {_fmt(r.flops[0] / 1e6, r.flops[1] / 1e6, '.2f', ' M')} | "
            f"{cut} | {_fmt(*r.mbytes, ',.1f', ' MB')} | {_fmt(*r.bytes_ratio, '.3f')} | "
            f"{_fmt(*r.latency_ratio, '.2f')} | {r.widths or '-'} | "
            f"{'-' if math.isnan(r.seconds) else f'{r.seconds:.0f} s'} |")
    return "\n".join(lines)


def checks(rows: list[Row]) -> list[str]:
    """fedprune's targets for the headline method, stated plainly with the numbers."""
    by = {r.method: r for r in rows}
    fp, dense, paper = by.get(HEADLINE_METHOD), by.get("dense"), by.get("paper")
    if fp is None or dense is None or not fp.n or not dense.n:
        return ["not enough finished runs to check the targets"]
    out = []
    cut_mean, cut_min = statistics.fmean(fp.flops_cut), min(fp.flops_cut)
    ok = cut_min >= TARGET_FLOPS_CUT
    out.append(f"FLOPs cut ≥ {TARGET_FLOPS_CUT:.0%} on every seed: **{'met' if ok else 'NOT met'}**"
               f" (mean {cut_mean:.1%}, lowest {cut_min:.1%})")
    ok = fp.gap <= TARGET_GAP_POINTS
    out.append(f"mean accuracy within {TARGET_GAP_POINTS:g} point of dense FedAvg: "
               f"**{'met' if ok else 'NOT met'}** (dense {dense.acc[0]:.4f}, fedprune "
               f"{fp.acc[0]:.4f}: {fp.gap:.2f} points below dense"
               f"{'' if fp.gap >= 0 else ', i.e. above it'})")
    if paper is not None and paper.n:
        better = fp.acc[0] > paper.acc[0]
        not_larger = fp.params[0] <= paper.params[0] and fp.flops[0] <= paper.flops[0]
        verdict = "met" if better and not_larger else "NOT met"
        why = (f"fedprune {fp.acc[0]:.4f} at {fp.params[0]:,.0f} params / "
               f"{fp.flops[0] / 1e6:.2f} M FLOPs; paper rule {paper.acc[0]:.4f} at "
               f"{paper.params[0]:,.0f} params / {paper.flops[0] / 1e6:.2f} M FLOPs")
        if better and not not_larger:
            why += ("; fedprune is more accurate but *larger*: the paper-faithful run ends "
                    "smaller, so the equal-or-smaller-size condition does not hold")
        out.append(f"beats the paper-faithful variant's accuracy at equal or smaller size: "
                   f"**{verdict}** ({why})")
    return out


def paper_table(cells: dict[tuple[str, str], dict[str, Cell]]) -> str:
    head = ("| source | model / data | params before → after | params cut | FLOPs cut | "
            "accuracy dense → pruned | Δ (points) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in PAPER_ROWS:
        b, a = p["params"]
        d, q = p["acc"]
        lines.append(f"| paper (authors' runs) | {p['key']} | {b:,} → {a:,} | {1 - a / b:.1%} | "
                     f"{p['flops_cut']:.1%} | {d:.4f} → {q:.4f} | {100 * (q - d):+.1f} |")
    for by in cells.values():
        rows = {r.method: r for r in rows_of(by)}
        dense = rows.get("dense")
        for name in ("paper", HEADLINE_METHOD, "fedprune-both"):
            r = rows.get(name)
            if r is None or not r.n or dense is None or not dense.n:
                continue
            setting = by[name].setting
            lines.append(
                f"| ours: {METHODS[name].label} | {setting.title} | {r.params_initial:,} → "
                f"{r.params[0]:,.0f} | {1 - r.params[0] / r.params_initial:.1%} | "
                f"{statistics.fmean(r.flops_cut):.1%} | {dense.acc[0]:.4f} → {r.acc[0]:.4f} | "
                f"{-r.gap:+.1f} |")
    return "\n".join(lines)


def describe_setting(cfg: ExperimentConfig) -> str:
    """The settings every method shares, in words, from a run's configuration."""
    d, t, f = cfg.data, cfg.train, cfg.fed
    split = (f"Dirichlet α = {d.alpha:g}" if d.partition == "dirichlet" else d.partition)
    test = f", test set capped at {d.max_test_samples:,} (seeded draw)" if d.max_test_samples else ""
    widths = f" at widths {cfg.model.widths}" if cfg.model.widths else ""
    return (f"{cfg.model.name}{widths}; {d.num_clients} clients ({split}), "
            f"{f.clients_per_round} per round, {f.rounds} rounds, {t.local_epochs} local "
            f"epoch{'s' if t.local_epochs > 1 else ''}, {t.optimizer} lr {t.lr:g}, batch "
            f"{t.batch_size}{test}")


def _slug(setting: Setting) -> str:
    return f"{setting.dataset}_{setting.model}"


def plots(cells: dict[tuple[str, str], dict[str, Cell]], out_dir: Path) -> dict[str, list[Path]]:
    """Accuracy vs round, params vs round and accuracy vs FLOPs for every setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for by in cells.values():
        setting = next(iter(by.values())).setting
        slug = _slug(setting)
        files = []
        # one seed everywhere: no spread to show, and the labels say so
        single = max((len(c.runs) for c in by.values()), default=0) <= 1
        over_seeds = "one seed, n = 1" if single else "mean ± std over seeds"
        for kind in ("accuracy", "params"):
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            try:
                for name, cell in by.items():
                    if not cell.runs:
                        continue
                    series: dict[int, list[float]] = {}
                    for r in cell.runs:
                        for row in r.rounds:
                            if row.get(kind) is not None:
                                series.setdefault(row["round"], []).append(float(row[kind]))
                    xs = sorted(series)
                    ms = [statistics.fmean(series[x]) for x in xs]
                    style = "--" if name == "dense" else "-"
                    lw = 2.2 if name == HEADLINE_METHOD else 1.3
                    (line,) = ax.plot(xs, ms, style, lw=lw, label=METHODS[name].label)
                    if kind == "accuracy" and len(cell.runs) > 1:
                        # no band at rounds that only one seed reached
                        sds = [statistics.stdev(series[x]) if len(series[x]) > 1 else math.nan
                               for x in xs]
                        ax.fill_between(xs, [m - s for m, s in zip(ms, sds, strict=True)],
                                        [m + s for m, s in zip(ms, sds, strict=True)],
                                        color=line.get_color(), alpha=0.12, lw=0)
                ax.set_xlabel("round")
                if kind == "accuracy":
                    ax.set_ylabel(f"test accuracy ({over_seeds})")
                else:
                    ax.set_ylabel("trainable parameters ("
                                  + ("one seed, n = 1" if single else "mean over seeds") + ")")
                    ax.set_yscale("log")
                ax.set_title(f"{setting.title}\n{kind} per round", fontsize=9)
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=7.5)
                fig.tight_layout()
                path = out_dir / f"{slug}_{kind}.png"
                fig.savefig(path, dpi=100)
                files.append(path)
            finally:
                plt.close(fig)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        try:
            for name, cell in by.items():
                if not cell.runs:
                    continue
                f = [v / 1e6 for v in cell.values("flops_final")]
                a = cell.values("accuracy")
                (pts,) = ax.plot(f, a, "o", ms=3, alpha=0.35)
                fm, (am, asd) = statistics.fmean(f), _mean_sd(a)
                ax.errorbar([fm], [am], yerr=None if math.isnan(asd) else [asd],
                            fmt="s" if name == "dense" else "o", ms=7, capsize=3,
                            color=pts.get_color(), label=METHODS[name].label)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(
                lambda v, _: f"{v:g}" if f"{v:.1e}"[0] in "25" else ""))
            ax.set_xlabel("final FLOPs per sample (millions, log scale)")
            ax.set_ylabel("final test accuracy")
            ax.set_title(f"{setting.title}\naccuracy vs FLOPs ("
                         + ("one seed, n = 1" if single else
                            "mean ± std over seeds; dots: single seeds") + ")", fontsize=9)
            ax.grid(True, alpha=0.3, which="both")
            ax.legend(fontsize=7.5)
            fig.tight_layout()
            path = out_dir / f"{slug}_acc_vs_flops.png"
            fig.savefig(path, dpi=100)
            files.append(path)
        finally:
            plt.close(fig)
        written[slug] = files
    return written


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
            f"{inv['jobs']} in parallel; CPU time of its runs {inv.get('cpu_seconds', 0) / 60:.1f} "
            f"core-min{_share(inv)}; 1-minute load average {inv['loadavg_before'][0]:.2f} "
            f"before, {inv['loadavg_after'][0]:.2f} after"
            + (f", {inv['loadavg_mean']:.2f} on average and {inv['loadavg_max']:.2f} at most "
               "while running" if "loadavg_mean" in inv else "")
            + (f"; FAILED: {', '.join(inv['failed'])}" if inv.get("failed") else ""))
    return lines, total


def render(plan: Plan, cells: dict[tuple[str, str], dict[str, Cell]],
           plot_files: dict[str, list[Path]], report_path: Path,
           notes: str = "") -> str:
    suite = plan.suite
    log = read_suite_log(plan.out)
    inv = log.get("invocations", [])
    machine = inv[-1]["machine"] if inv else {}
    out: list[str] = [f"# fedprune reproduce: suite `{suite.name}`", ""]
    n_set = len({(r.setting.dataset, r.setting.model) for r in plan.runs})
    n_met = len({r.method.name for r in plan.runs})
    n_seed = len({r.seed for r in plan.runs})
    out.append(f"{suite.description}. This report: {len(plan.runs)} runs ({n_set} setting"
               f"{'s' if n_set != 1 else ''} × {n_met} method{'s' if n_met != 1 else ''} × "
               f"{n_seed} seed{'s' if n_seed != 1 else ''}). Generated from the run folders "
               f"under `{plan.out}` by the report step "
               "of `fedprune reproduce` (it runs alone with `--report-only`): every number "
               f"below is read from the runs' `{SUMMARY_FILE}`, `{ROUNDS_FILE}` and "
               f"`{LATENCY_FILE}`.")
    out.append("")
    out.append("## Command and machine")
    out.append("")
    if inv:
        out.append("```bash\n" + _command(inv[0]["argv"]) + "\n```")
        out.append("")
    lines, total = wall_time(log)
    if lines:
        cpu = sum(i.get("cpu_seconds", 0.0) for i in inv)
        jobs = max(int(i["jobs"]) for i in inv)
        out.append(f"Wall time, all invocations together: **{total / 60:.1f} min**. The runs "
                   f"used {cpu / 60:.1f} core-min of CPU time (single-threaded each), i.e. at "
                   f"least {cpu / 60 / jobs:.1f} min of wall time on {jobs} dedicated cores; a "
                   "wall time far above that means the machine was shared (load averages).")
        out.append("")
        out += lines
        out.append("")
    if machine:
        out.append(f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
                   f"Python {machine.get('python')}, torch {machine.get('torch')}; "
                   f"each run single-threaded (`threads=1`), runs in parallel as listed above. "
                   "Latency ratios are medians of interleaved onnxruntime runs (1 thread, "
                   f"batch 1, {suite.latency_runs} timed runs after {suite.latency_warmup} "
                   "warm-up runs) of each run's initial dense model and its final model, taken "
                   "right after the run, while the other worker was training: ratios, not "
                   "absolute times.")
        out.append("")
    out.append("## Methods (same seeds, rounds, clients per round and local epochs)")
    out.append("")
    present = {r.method.name for r in plan.runs}
    for name in (m for m in suite.methods if m in present):
        out.append(f"- **{METHODS[name].label}** (`{name}`): {METHODS[name].description}.")
    out.append("")
    if suite.note:
        out.append(suite.note)
        out.append("")
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
    for (dataset, model), by in cells.items():
        setting = next(iter(by.values())).setting
        out.append(f"## {setting.title}")
        out.append("")
        first = next((r for r in plan.runs if (r.setting.dataset, r.setting.model) ==
                      (dataset, model)), None)
        if first is not None:
            out.append(f"Setting: {describe_setting(first.config)}"
                       + (f" ({setting.note})" if setting.note else "") + ". "
                       f"Pruning window of fedprune's rule: rounds {setting.window.start}-"
                       f"{setting.window.stop} every {setting.window.interval} (the default "
                       "is 30-40 every 2 of 100 rounds); the fixed-ratio baselines cut once at "
                       f"round {setting.window.start}.")
            out.append("")
        rows = rows_of(by)
        out.append(table(rows))
        out.append("")
        out.append(f"Targets for {METHODS[HEADLINE_METHOD].label}:")
        out.append("")
        out += [f"- {c}" for c in checks(rows)]
        out.append("")
        for path in plot_files.get(_slug(setting), []):
            rel = os.path.relpath(path, report_path.parent)
            out.append(f"![{path.stem}]({rel})")
        out.append("")
        pr = next((r for r in plan.runs if (r.setting.dataset, r.setting.model) ==
                   (dataset, model) and r.method.name == HEADLINE_METHOD), None)
        if pr is not None:
            sets = " ".join(f"--set {shlex.quote(s)}" for s in pr.sets()
                            if not s.startswith("seed="))
            out.append(f"One run of {METHODS[HEADLINE_METHOD].label} by hand: "
                       f"`fedprune run --out DIR --set seed={pr.seed} {sets}`.")
            out.append("")
    out.append("## The paper's published numbers beside ours")
    out.append("")
    out.append("The paper's rows are its authors' saved runs on FEMNIST and CelebA "
               "(`method.md`, 500 rounds, 50 clients per round; "
               f"{PAPER_CLAIM}). Our rows are this suite's means on its own data, so the "
               "comparison is of the reductions and the accuracy cost, not of absolute "
               "accuracy.")
    out.append("")
    out.append(paper_table(cells))
    out.append("")
    if notes.strip():
        out.append("## Notes")
        out.append("")
        out.append(notes.strip())
        out.append("")
    return "\n".join(out)


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
        slug = _slug(setting)
        slug_files[slug] = [plot_dir / f"{slug}_{k}.png"
                            for k in ("accuracy", "params", "acc_vs_flops")]
    notes = Path(notes_path).read_text(encoding="utf-8") if notes_path else ""
    Path(report_path).write_text(render(plan, cells, slug_files, Path(report_path), notes),
                                 encoding="utf-8")
