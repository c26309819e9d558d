"""PNG plots of a run's per-round metrics (matplotlib, Agg backend).

``plot_run`` reads ``rounds.jsonl`` via :func:`fedprune.metrics.recorder.read_rounds`
and writes ``accuracy.png``, ``params.png`` and ``bytes.png`` into the run
directory, optionally overlaying a dense FedAvg baseline run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from fedprune.metrics.recorder import read_rounds

__all__ = ["plot_budget", "plot_overview", "plot_prune_path", "plot_run", "save_figure",
           "write_figure"]

_MB = 1e6


def write_figure(fig, out: Path) -> Path:  # noqa: ANN001 - matplotlib Figure
    """Write ``fig`` to ``out`` atomically (parent folders made; the format of its suffix):
    drawn into a temporary file beside it, flushed to disk, then renamed over ``out``, so
    that ``out`` is never left half written.  A failure removes the temporary file and is
    raised as an ``OSError`` naming ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, dpi=100, format=out.suffix.lstrip(".").lower() or "png")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def save_figure(fig, out_png: Path) -> Path:  # noqa: ANN001 - matplotlib Figure
    """Write ``fig`` to ``out_png`` (:func:`write_figure`) and close it, also when writing
    fails."""
    import matplotlib.pyplot as plt

    try:
        return write_figure(fig, out_png)
    finally:
        plt.close(fig)


def _series(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list, list]:
    """Return (rounds, values) for rows where ``key`` is present and not None."""
    xs: list[int] = []
    ys: list[float] = []
    for row in rows:
        value = row.get(key)
        if value is None or "round" not in row:
            continue
        xs.append(row["round"])
        ys.append(float(value) / scale)
    return xs, ys


def plot_run(run_dir: Path, dense_run_dir: Path | None = None) -> list[Path]:
    """Write accuracy, parameter-count and cumulative-bytes plots for a run.

    Args:
        run_dir: directory holding ``rounds.jsonl``; the PNGs are written here.
        dense_run_dir: optional directory of a dense FedAvg run to overlay
            (labelled "dense FedAvg").

    Returns:
        Paths of ``accuracy.png``, ``params.png`` and ``bytes.png`` (in that order).
        Accuracy is drawn only for rounds that have an accuracy value;
        bytes are plotted in MB (1 MB = 10**6 bytes).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    runs: list[tuple[str, list[dict[str, Any]]]] = [("pruned", read_rounds(run_dir))]
    if dense_run_dir is not None:
        runs.append(("dense FedAvg", read_rounds(Path(dense_run_dir))))

    specs = [
        ("accuracy.png", "accuracy", 1.0, "test accuracy", "Accuracy per round"),
        ("params.png", "params", 1.0, "trainable parameters", "Parameters per round"),
        ("bytes.png", "bytes_cumulative", _MB, "cumulative traffic (MB)", "Cumulative bytes"),
    ]
    written: list[Path] = []
    for filename, key, scale, ylabel, title in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        try:
            for label, rows in runs:
                xs, ys = _series(rows, key, scale)
                style = "--" if label == "dense FedAvg" else "-"
                ax.plot(xs, ys, style, marker="." if len(xs) < 50 else None, label=label)
            ax.set_xlabel("round")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            if len(runs) > 1:
                ax.legend()
            fig.tight_layout()
            written.append(write_figure(fig, run_dir / filename))
        finally:
            plt.close(fig)
    if any(r.get("budget") for r in runs[0][1]):
        written.append(plot_budget(runs[0][1], run_dir / "budget.png"))
    if any((r.get("auto") or {}).get("judged", {}).get("decision") in _JUDGED
           for r in runs[0][1]):
        written.append(plot_prune_path(runs[0][1], run_dir / "prune_path.png"))
    if any((r.get("nested") or {}).get("judged") for r in runs[0][1]):
        written.append(plot_width_curves(runs[0][1], run_dir / "prune_path.png"))
    return written


def plot_width_curves(rows: list[dict[str, Any]], out_png: Path) -> Path:
    """The automatic method's judgements: at each, every narrower width's measured cost
    (and its cost + z x s.e. bound) against its FLOPs; and the run's FLOPs per round."""
    judged = [r["nested"]["judged"] for r in rows if (r.get("nested") or {}).get("judged")]
    limit = next((r["nested"].get("max_accuracy_drop") for r in rows
                  if (r.get("nested") or {}).get("max_accuracy_drop") is not None), None)

    def draw(ax1, ax2) -> None:
        for j in judged:
            f = [w["flops"] / 1e6 for w in j["widths"]]
            cost = [math.nan if w["cost"] is None else 100 * w["cost"] for w in j["widths"]]
            bound = [math.nan if w["bound"] is None else 100 * w["bound"] for w in j["widths"]]
            (line,) = ax1.plot(f, cost, "o-", ms=4,
                               label=f"round {j['round']}: {j['decision']}")
            ax1.plot(f, bound, "v:", ms=3, color=line.get_color())
        if limit is not None:
            ax1.axhline(100 * limit, color="tab:red", lw=0.8, label="prune.max_accuracy_drop")
        ax1.axhline(0, color="black", lw=0.5)
        ax1.set_title("Automatic pruning: each width's cost (o) and cost + z x s.e. (v)")
        _axes(ax1, "validation accuracy drop (points)", xlabel="FLOPs / sample (M)")
        xs, ys = _series(rows, "flops", 1e6)
        ax2.plot(xs, ys, color="black", lw=1, label="model")
        _axes(ax2, "FLOPs / sample (M)", xlabel="round")
    return _two_panels(out_png, draw, sharex=False)


def _two_panels(out_png: Path, draw, sharex: bool = True) -> Path:
    """A figure of two stacked panels (sharing the round axis unless ``sharex`` is false),
    drawn by ``draw``, saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=sharex)
    try:
        draw(ax1, ax2)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, out_png)


def _axes(ax, ylabel: str, xlabel: str | None = None) -> None:
    """Label, grid and small legend, as every panel here has them."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


# the automatic method's judgements (a "retry" measured nothing) and how the plot marks them
_JUDGED = {"accept": ("^", "tab:green", "candidate kept"),
           "again": (".", "tab:orange", "candidate judged again"),
           "reject": ("x", "tab:red", "candidate dropped")}


def plot_prune_path(rows: list[dict[str, Any]], out_png: Path) -> Path:
    """The automatic method's path: each judged candidate's FLOPs and measured cost (with
    its cost + z x s.e. bound), kept or dropped, and the run's FLOPs per round."""
    tries = [(r["round"], r["auto"]["judged"]) for r in rows
             if (r.get("auto") or {}).get("judged", {}).get("decision") in _JUDGED]

    def draw(ax1, ax2) -> None:
        xs, ys = _series(rows, "flops", 1e6)
        ax1.plot(xs, ys, color="black", lw=1, label="model")
        for decision, (marker, color, label) in _JUDGED.items():
            pts = [(rnd, t["flops"] / 1e6) for rnd, t in tries if t["decision"] == decision]
            if pts:
                ax1.scatter(*zip(*pts, strict=True), marker=marker, color=color, zorder=3,
                            label=label)
        ax1.set_title("Automatic pruning: candidates and their measured cost")
        _axes(ax1, "FLOPs / sample (M)")
        rounds = [rnd for rnd, _ in tries]

        def points(key: str) -> list[float]:
            return [math.nan if t[key] is None else 100 * t[key] for _, t in tries]
        ax2.plot(rounds, points("cost"), "o-", label="cost (points)")
        ax2.plot(rounds, points("bound"), "v--", label="cost + z x s.e. (points)")
        limit = next((r["auto"].get("max_accuracy_drop") for r in rows
                      if (r.get("auto") or {}).get("max_accuracy_drop") is not None), None)
        if limit is not None:
            ax2.axhline(100 * limit, color="tab:red", lw=0.8, label="prune.max_accuracy_drop")
        ax2.axhline(0, color="black", lw=0.5)
        _axes(ax2, "validation accuracy drop", xlabel="round")
    return _two_panels(out_png, draw)


def plot_budget(rows: list[dict[str, Any]], out_png: Path) -> Path:
    """Budget mode's path: gap to each target, guard decisions, and k, per round."""
    rows = [r for r in rows if r.get("budget")]

    def draw(ax1, ax2) -> None:
        rounds = [r["round"] for r in rows]
        for key in sorted({k for r in rows for k in r["budget"]["gap"]}):
            ax1.plot(rounds, [100 * r["budget"]["gap"].get(key, float("nan")) for r in rows],
                     label=f"{key} over budget (%)")
        ax1.axhline(0, color="black", lw=0.8)
        marks = {"candidate": ("o", "tab:blue"), "accept": ("^", "tab:green"),
                 "rollback": ("x", "tab:red")}
        for decision, (marker, color) in marks.items():
            pts = [(r["round"], 100 * next(iter(r["budget"]["gap"].values())))
                   for r in rows
                   if any(e.get("decision") == decision for e in r["budget"].get("guard") or [])]
            if pts:
                ax1.scatter(*zip(*pts, strict=True), marker=marker, color=color, zorder=3,
                            label=f"guard: {decision}")
        ax1.set_title(f"Path to the budget (final status: {rows[-1]['budget']['status']})")
        _axes(ax1, "distance to budget (%)")
        ax2.plot(rounds, [r["budget"]["k"] for r in rows], label="k")
        ax2.plot(rounds, [r["budget"]["step_fraction"] for r in rows], label="step fraction")
        _axes(ax2, "controller", xlabel="round")
    return _two_panels(out_png, draw)


def plot_overview(run_dir: Path, dense_run_dir: Path, out_png: Path) -> Path:
    """One figure, three panels (accuracy, params, cumulative MB): a run beside dense FedAvg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [("fedprune (pruned)", read_rounds(Path(run_dir))),
            ("dense FedAvg", read_rounds(Path(dense_run_dir)))]
    panels = [("accuracy", 1.0, "test accuracy"), ("params", 1.0, "trainable parameters"),
              ("bytes_cumulative", _MB, "cumulative traffic (MB)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    try:
        for ax, (key, scale, ylabel) in zip(axes, panels, strict=True):
            for label, rows in runs:
                xs, ys = _series(rows, key, scale)
                ax.plot(xs, ys, "--" if label == "dense FedAvg" else "-", label=label)
            ax.set_xlabel("round")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, out_png)
