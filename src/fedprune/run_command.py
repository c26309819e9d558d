"""``fedprune run``: open the run directory, train with a progress bar, print the outcome.

The folder is opened by the one run-directory policy (:meth:`fedprune.rundir.RunDir.open`):
``--out`` starts a new run, ``--resume`` continues one of the in-process loop from its own
``config.json`` (only ``--set device=...`` may be given, to continue on another device).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from typing import Any

from .config import ConfigError, ExperimentConfig, load_config
from .rundir import OpenedRun, RunDir

logger = logging.getLogger("fedprune")

__all__ = ["auto_line", "budget_line", "cmd_run"]


class PlotsNotWritten(ValueError):
    """A finished run whose plots the system refused to write (one line, exit 2)."""


def cmd_run(args: argparse.Namespace) -> int:
    """Run (or resume) one experiment in process; print its outcome as JSON."""
    run = _open(args)
    try:
        cfg = _on_device(args, run)
        _check_precision(cfg)  # before the progress bar
        summary = _train(cfg, run, progress=not args.no_progress)
    finally:
        run.close()
    if not args.no_plots:
        from .metrics import plot_run

        try:
            plot_run(run.path)
        except OSError as exc:  # the run is complete: say so, and no --resume
            where = f"{exc.filename}: " if exc.filename is not None else ""
            raise PlotsNotWritten(
                f"{where}{exc.strerror or exc}: the run finished and its records are complete "
                f"in {run.path} (rounds.jsonl, summary.json, checkpoint.pt); only its plots "
                "were not written") from exc
    _print_outcome(summary, run)
    return 0


def _open(args: argparse.Namespace) -> OpenedRun:
    """``--out`` (a new run of ``--config``/``--set``) or ``--resume`` (the run's own
    configuration), opened by the run-directory policy."""
    if args.resume is None:
        if getattr(args, "allow_unverified_checkpoint", False):
            raise ConfigError("--allow-unverified-checkpoint applies to --resume only (a new "
                              "run reads no checkpoint)")
        cfg = load_config(args.config, args.sets)
        _check_precision(cfg)  # before a folder is made
        return RunDir(args.out).open(cfg, resume=False, engine="in-process")
    rd = RunDir(args.resume, allow_unverified=args.allow_unverified_checkpoint)
    if args.config is not None or len(_device_sets(args)) != len(args.sets):
        raise ConfigError(f"--resume takes the run's own {rd.config_file.name}; drop "
                          "--config/--set (only --set device=... may be given, to "
                          "continue on another device)")
    return rd.open(None, resume=True, engine="in-process")


def _check_precision(cfg: ExperimentConfig) -> None:
    from .device import check_precision, resolve_device

    check_precision(resolve_device(cfg.device), cfg.train.precision)


def _device_sets(args: argparse.Namespace) -> list[str]:
    return [x for x in args.sets if x.partition("=")[0].strip() == "device"]


def _on_device(args: argparse.Namespace, run: OpenedRun) -> ExperimentConfig:
    """The opened run's configuration, on the device ``--set device=...`` names when a
    resumed run continues elsewhere (the last one wins, as ``--set`` does)."""
    cfg = run.cfg
    device_sets = _device_sets(args) if args.resume is not None else []
    if device_sets:
        device = load_config(None, device_sets[-1:]).device
        if device != cfg.device:
            logger.warning("%s: continuing on device %r instead of %r; the result agrees "
                           "with an uninterrupted run to float rounding, not bit for bit, "
                           "and %s keeps %r", run.path, device, cfg.device,
                           run.run_dir.config_file.name, cfg.device)
            cfg = dataclasses.replace(cfg, device=device)
    return cfg


def _train(cfg: ExperimentConfig, run: OpenedRun, progress: bool) -> dict[str, Any]:
    """The rounds, with a progress bar unless ``progress`` is false; the run's summary."""
    from .federated import run_simulation
    from .metrics import RoundRecord

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.fed.rounds, unit="round", dynamic_ncols=True,
                   initial=run.run_dir.rounds_done() if run.resume else 0)
    last_acc = math.nan

    def on_round(rec: RoundRecord) -> None:
        nonlocal last_acc
        if rec.accuracy is not None:
            last_acc = rec.accuracy
        if bar is not None:
            bar.set_postfix(acc=f"{last_acc:.3f}", params=rec.params, refresh=False)
            bar.update(1)

    try:
        return run_simulation(cfg, run, on_round=on_round).summary
    finally:
        if bar is not None:
            bar.close()


def _print_outcome(s: dict[str, Any], run: OpenedRun) -> None:
    """The summary's headline numbers as JSON on stdout; budget and automatic pruning
    outcomes as one line each on stderr."""
    budget_status = s.get("budget_status", (s.get("budget") or {}).get("status"))
    print(json.dumps({
        "accuracy": round(s["accuracy"], 4),
        "params": f"{s['params_initial']} -> {s['params_final']}",
        "flops": f"{s['flops_initial']} -> {s['flops_final']}",
        "bytes_total": s["bytes_total"],
        "bytes_total_dense": s["bytes_total_dense"],
        "client_flops_total": s["client_flops_total"],
        "client_flops_total_dense": s["client_flops_total_dense"],
        "widths_final": s["widths_final"],
        "budget_status": budget_status,
        "seconds": round(s["seconds"], 1),
        "out": str(run.path),
    }, indent=2))
    if s.get("budget"):
        sys.stdout.flush()
        print(budget_line(s["budget"], budget_status), file=sys.stderr)
    if s.get("auto"):
        sys.stdout.flush()
        print(auto_line(s["auto"], s), file=sys.stderr)
    if s.get("nested"):
        sys.stdout.flush()
        print(nested_line(s["nested"], s), file=sys.stderr)
    sys.stdout.flush()
    print(cost_line(s), file=sys.stderr)


def cost_line(summary: dict) -> str:
    """One line on what the run cost against dense FedAvg on the same rounds, e.g. ``against
    dense FedAvg: bytes 1.12x, client FLOPs 0.95x``."""
    def ratio(key: str) -> str:
        dense = summary.get(f"{key}_dense")
        return f"{summary[key] / dense:.2f}x" if dense else "-"
    return (f"against dense FedAvg: bytes {ratio('bytes_total')}, client FLOPs "
            f"{ratio('client_flops_total')}")


def auto_line(auto: dict, summary: dict) -> str:
    """One line on what the automatic method decided, e.g. ``automatic pruning: 3 cuts kept,
    FLOPs -55.0 %, measured cost 0.68 points (<= 1.00); stopped: ...``."""
    cut = 1 - summary["flops_final"] / summary["flops_initial"]
    cost = auto.get("measured_cost") or 0.0
    why = auto.get("stop_reason") or auto.get("status", "?")
    return (f"automatic pruning: {auto.get('accepted', 0)} cuts kept, {auto.get('rejected', 0)} "
            f"dropped, FLOPs -{100 * cut:.1f} %, measured cost {100 * cost:.2f} points "
            f"(prune.max_accuracy_drop {100 * auto.get('max_accuracy_drop', 0):.2f}); "
            f"stopped: {why}")


def nested_line(nested: dict, summary: dict) -> str:
    """One line on what the automatic method decided, e.g. ``automatic pruning: cut at
    round 24 to widths [16, 32], FLOPs -71.9 %, measured cost 0.40 points (<= 1.00)``."""
    cut = 1 - summary["flops_final"] / summary["flops_initial"]
    limit = 100 * nested.get("max_accuracy_drop", 0)
    last = (nested.get("judged") or [{}])[-1]
    chosen = next((w for w in last.get("widths", []) if w.get("widths") == last.get("chosen")),
                  None)
    if nested.get("cut_round") is None:
        return (f"automatic pruning: nothing cut ({nested.get('stop_reason') or 'searching'}; "
                f"prune.max_accuracy_drop {limit:.2f} points)")
    cost = chosen.get("cost") if chosen else None
    return (f"automatic pruning: cut at round {nested['cut_round']} to widths "
            f"{list(nested['widths'].values())}, FLOPs -{100 * cut:.1f} %, measured cost "
            + (f"{100 * cost:.2f}" if cost is not None else "?")
            + f" points (prune.max_accuracy_drop {limit:.2f})")


def budget_line(budget: dict, status: str | None = None) -> str:
    """One line on a budget run's outcome, e.g. ``budget met: params 5,229 <= 5,274``."""
    status = status or budget.get("status") or "?"
    final, targets = budget.get("final") or {}, budget.get("targets") or {}
    parts = []
    for key, target in targets.items():
        if target is None or key not in final:
            continue
        value = final[key]
        unit = " ms" if key == "latency_ms" else ""
        name = "latency" if key == "latency_ms" else key
        fmt = (lambda v: f"{v:,.3f}") if key == "latency_ms" else (lambda v: f"{int(v):,}")
        sign = "<=" if value <= target * (1 + 1e-12) else ">"
        parts.append(f"{name} {fmt(value)}{unit} {sign} {fmt(target)}{unit}")
    if budget.get("met"):
        head = "budget met" if status == "met" else f"budget met ({status})"
    else:
        head = f"budget NOT met ({status})"
    return head + (": " + ", ".join(parts) if parts else "")
