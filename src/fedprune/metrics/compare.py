"""Side by side: the final figures of several runs in one table, and their curves on one figure.

Each run is read into a :class:`~fedprune.metrics.runfacts.RunFacts`
(:func:`~fedprune.metrics.runfacts.read_run`, re-exported here), finished or not:

    runs = [read_run(d) for d in dirs]
    print(format_table(runs))            # or format_table(runs, markdown=True)
    plot_compare(runs, "compare.png")    # accuracy and params per round, pruning rounds marked
"""

from __future__ import annotations

from pathlib import Path

from fedprune.metrics.plots import _series
from fedprune.metrics.runfacts import NotARunError, RunFacts, read_run
from fedprune.rundir import LATENCY_FILE

__all__ = ["LATENCY_FILE", "NotARunError", "RunFacts", "compare_figure", "format_table",
           "label_runs", "plot_compare", "read_run", "reference_run"]


def label_runs(paths: list[Path]) -> list[str]:
    """Short distinct labels: the directory names, with as many parent folders as it takes
    to tell them apart (``low/seed0``, ``dense/seed0``); a path given twice gets ``#2``."""
    parts = [Path(p).resolve().parts for p in paths]
    distinct = set(parts)
    depth = 1
    while depth < max(len(p) for p in parts) and len(
            {p[-depth:] for p in distinct}) < len(distinct):
        depth += 1
    labels = ["/".join(p[-depth:]).lstrip("/") or "/" for p in parts]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
    return out


def reference_run(runs: list[RunFacts]) -> RunFacts:
    """The run the byte ratios are taken against: the first dense FedAvg run, else the first."""
    return next((r for r in runs if r.dense), runs[0])


def _method(run: RunFacts) -> str:
    prune = run.config.get("prune", {})
    if run.dense:
        return "dense FedAvg"
    if run.budget is not None:
        targets = {k: v for k, v in (run.budget.get("targets") or {}).items() if v is not None}
        if targets:
            return "budget " + ", ".join(f"{k} <= {_num(v)}" for k, v in targets.items())
        return "budget"
    if prune.get("method") == "ratio":
        return f"ratio {prune.get('ratio', 0):g}"
    if prune.get("method") in ("auto", "auto-paired"):
        return (f"{prune['method']}, max drop {100 * prune.get('max_accuracy_drop', 0):g} pt"
                + (f", widths on {prune['round_to']}" if prune["method"] == "auto"
                   and prune.get("round_to", 1) > 1 else ""))
    text = f"rule {prune.get('mode', '?')} k={prune.get('k', 0):g}"
    return text + (", reinit" if prune.get("reinit") else "")


def _facts(run: RunFacts) -> dict[str, str]:
    """The settings that tell runs apart, in the order they are shown."""
    cfg = run.config
    data, model, fed = cfg.get("data", {}), cfg.get("model", {}), cfg.get("fed", {})
    widths = model.get("widths")
    return {
        "data": f"{data.get('name', '?')}" + (f" ({data.get('num_clients')} clients)"
                                             if data.get("num_clients") else ""),
        "model": f"{model.get('name', '?')}" + (f" {widths}" if widths else ""),
        "method": _method(run),
        "rounds": f"{fed.get('rounds', '?')} rounds x {fed.get('clients_per_round', '?')} "
                  f"clients x {_plural(cfg.get('train', {}).get('local_epochs', '?'), 'epoch')}",
        "seed": f"seed {cfg.get('seed', '?')}",
        "engine": "Flower" if run.engine == "flower" else "in-process",
    }


def _plural(n: object, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.3g}"
    return f"{int(v):,}"


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _budget_cell(run: RunFacts) -> str:
    if run.budget is None:
        return "-"
    status = run.budget_status or "?"
    if run.budget.get("met"):
        return "met" if status == "met" else f"met ({status})"
    return f"NOT met ({status})"


def _table(runs: list[RunFacts]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, cells, notes) of the comparison table."""
    facts = [_facts(r) for r in runs]
    varying = [k for k in facts[0] if len({f[k] for f in facts}) > 1]
    common = [k for k in facts[0] if k not in varying]
    ref = reference_run(runs)
    has_latency = any(r.latency is not None for r in runs)
    has_budget = any(r.budget is not None for r in runs)
    header = ["run"] + (["setting"] if varying else []) + [
        "rounds", "accuracy", "params", "FLOPs", "FLOPs cut", "MB total", "bytes vs ref",
        "bytes vs dense", "client FLOPs vs dense"]
    if has_latency:
        header += ["latency ms", "latency vs dense"]
    if has_budget:
        header += ["budget"]
    cells = []
    for run, f in zip(runs, facts, strict=True):
        rounds = str(run.rounds_done) if run.finished else (
            f"{run.rounds_done} of {run.rounds_planned} (unfinished)")
        row = [run.label] + ([", ".join(f[k] for k in varying)] if varying else []) + [
            rounds,
            "-" if run.accuracy is None else f"{run.accuracy:.4f}",
            f"{_num(run.params_initial) if run.params_initial is not None else '?'} -> "
            f"{_num(run.params_final)}",
            _num(run.flops_final),
            "-" if run.flops_cut is None else f"{100 * run.flops_cut:.1f} %",
            f"{run.bytes_total / 1e6:,.2f}",
            f"{run.bytes_total / ref.bytes_total:.2f}x" if ref.bytes_total else "-",
            _times(run.bytes_vs_dense), _times(run.client_flops_vs_dense),
        ]
        if has_latency:
            row += ["-" if run.latency_ms is None else f"{run.latency_ms:.3f}",
                    "-" if run.latency_ratio is None else f"{run.latency_ratio:.2f}x"]
        if has_budget:
            row += [_budget_cell(run)]
        cells.append(row)
    notes = []
    if common:
        notes.append("all runs: " + "; ".join(facts[0][k] for k in common))
    notes.append(f"bytes vs ref: total bytes over those of {ref.label}"
                 + (" (dense FedAvg)" if ref.dense else " (the first run)"))
    notes.append("vs dense: the run's total over what dense FedAvg would have spent on the "
                 "same rounds and clients (bytes on the wire; the clients' training and "
                 "validation FLOPs); '-': not recorded")
    if has_latency:
        notes.append("latency: final model, median of onnxruntime runs (1 thread, batch 1); "
                     "vs dense: over the run's own initial dense model; '-': not measured "
                     "(fedprune bench-latency --save RUN_DIR)")
    return header, cells, notes


def format_table(runs: list[RunFacts], *, markdown: bool = False) -> str:
    """The comparison as aligned text, or as a Markdown table (with the notes below it)."""
    if not runs:
        raise ValueError("no runs to compare")
    header, cells, notes = _table(runs)
    left = {0, 1} if header[1] == "setting" else {0}
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i in left else "---:" for i in range(len(header)))
                 + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                  for row in cells]
        return "\n".join(lines + [""] + [f"- {n}" for n in notes])
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(header)] + [line(r) for r in cells] + [""] + notes)


def plot_compare(runs: list[RunFacts], out_png: Path) -> Path:
    """Write :func:`compare_figure` of ``runs`` to ``out_png`` (any format matplotlib writes)."""
    import matplotlib

    matplotlib.use("Agg")
    from .plots import save_figure

    return save_figure(compare_figure(runs), out_png)


def compare_figure(runs: list[RunFacts]):  # noqa: ANN201 - matplotlib Figure
    """Accuracy and parameters per round of every run on one figure (two panels).

    Each run has one colour; its pruning rounds (``pruned`` in ``rounds.jsonl``) are marked
    with triangles on its parameter curve and as ticks along the bottom of the accuracy
    panel; dense FedAvg runs are dashed; a budget's parameter target is a dotted line.  The
    caller closes the figure (``matplotlib.pyplot.close``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    if not runs:
        raise ValueError("no runs to plot")
    fig, (ax_acc, ax_par) = plt.subplots(1, 2, figsize=(13, 4.4), layout="constrained")
    try:
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        all_params: list[float] = []
        for i, run in enumerate(runs):
            color = colors[i % len(colors)]
            style = "--" if run.dense else "-"
            xs, ys = _series(run.rows, "accuracy")
            ax_acc.plot(xs, ys, style, color=color, label=run.label,
                        marker="." if len(xs) < 30 else None)
            px, py = _series(run.rows, "params")
            all_params += py
            ax_par.plot(px, py, style, color=color, label=run.label)
            cuts = [(r["round"], r["params"]) for r in run.rows if r.get("pruned")]
            if cuts:
                ax_par.scatter(*zip(*cuts, strict=True), marker="v", color=color, zorder=3,
                               s=28)
                # ticks along the bottom of the accuracy panel, one row per run
                ax_acc.plot([c[0] for c in cuts], [0.025 + 0.04 * i] * len(cuts), "|",
                            color=color, markersize=7, mew=1.5,
                            transform=ax_acc.get_xaxis_transform())
            target = ((run.budget or {}).get("targets") or {}).get("params")
            if target:
                ax_par.axhline(target, color=color, ls=":", lw=1)
        if all_params and min(all_params) > 0 and max(all_params) / min(all_params) > 20:
            ax_par.set_yscale("log")
        ax_acc.set_title("Accuracy per round (ticks: pruning rounds)")
        ax_acc.set_ylabel("test accuracy")
        ax_par.set_title("Parameters per round (triangles: pruning rounds)")
        ax_par.set_ylabel("trainable parameters")
        for ax in (ax_acc, ax_par):
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
        handles, labels = ax_acc.get_legend_handles_labels()
        handles.append(Line2D([], [], color="gray", marker="v", ls="none"))
        labels.append("pruning round")
        if any(((r.budget or {}).get("targets") or {}).get("params") for r in runs):
            handles.append(Line2D([], [], color="gray", ls=":"))
            labels.append("params budget")
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    except BaseException:
        plt.close(fig)
        raise
    return fig
