"""The report's figures per setting: accuracy and params vs round, accuracy vs FLOPs, and the
cumulative bytes on the wire and client FLOPs over the rounds."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..metrics.plots import write_figure
from .methods import METHODS, Setting
from .tables import HEADLINE_METHOD, Cell, mean_sd

# one PNG each per setting
PLOT_KINDS = ("accuracy", "params", "acc_vs_flops", "bytes_cumulative",
              "client_flops_cumulative")


def slug(setting: Setting) -> str:
    """The setting's part of its plot file names, e.g. ``digits_cnn_femnist``."""
    return f"{setting.dataset}_{setting.model}"


def plot_path(out_dir: Path, setting: Setting, kind: str) -> Path:
    return Path(out_dir) / f"{slug(setting)}_{kind}.png"


def _save(fig, ax, path: Path, which: str = "major") -> Path:
    """A figure's grid and legend, laid out and written to ``path`` (the caller closes it)."""
    ax.grid(True, alpha=0.3, which=which)
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    return write_figure(fig, path)


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
                files.append(_save(fig, ax, plot_path(out_dir, setting, kind)))
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
                fm, (am, asd) = statistics.fmean(f), mean_sd(a)
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
            files.append(_save(fig, ax, plot_path(out_dir, setting, "acc_vs_flops"),
                               which="both"))
        finally:
            plt.close(fig)
        files += _cumulative(plt, by, setting, out_dir, single)
        written[slug(setting)] = files
    return written


# what the cumulative plots draw: the round record's key, whether it is already a running
# total, its unit and scale
CUMULATIVE = {"bytes_cumulative": ("bytes_cumulative", True, "GB on the wire", 1e9),
              "client_flops_cumulative": ("client_flops", False, "client PFLOPs", 1e15)}


def _cumulative(plt, by: dict[str, Cell], setting: Setting, out_dir: Path,
                single: bool) -> list[Path]:
    """Cumulative bytes and client FLOPs over the rounds, every method (mean over seeds)."""
    files = []
    for kind, (key, running, unit, scale) in CUMULATIVE.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        try:
            drawn = False
            for name, cell in by.items():
                series: dict[int, list[float]] = {}
                for r in cell.runs:
                    total = 0.0
                    for row in r.rounds:
                        if row.get(key) is None:
                            break
                        total = float(row[key]) if running else total + float(row[key])
                        series.setdefault(row["round"], []).append(total / scale)
                if not series:
                    continue
                xs = sorted(series)
                style = "--" if name == "dense" else "-"
                lw = 2.2 if name == "auto" else 1.3
                ax.plot(xs, [statistics.fmean(series[x]) for x in xs], style, lw=lw,
                        label=METHODS[name].label)
                drawn = True
            if not drawn:
                continue
            ax.set_xlabel("round")
            ax.set_ylabel(f"cumulative {unit} ("
                          + ("one seed, n = 1" if single else "mean over seeds") + ")")
            ax.set_title(f"{setting.title}\ncumulative {unit}", fontsize=9)
            files.append(_save(fig, ax, plot_path(out_dir, setting, kind)))
        finally:
            plt.close(fig)
    return files
