"""The ``fedprune`` command line: the only place that sets up logging and progress bars.

    fedprune run [--config FILE.toml] [--set key=value ...] --out DIR
    fedprune config [--config FILE.toml] [--set key=value ...]   # print the resolved config
    fedprune models                                              # list registered models
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from .config import ConfigError, load_config

logger = logging.getLogger("fedprune")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="TOML file of overrides")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set prune.k=1.5 (repeatable); "
                        "--set prune.enabled=false runs the dense FedAvg baseline")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedprune", description="Automatic structured pruning "
                                 "during federated training.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated experiment in process")
    _add_config_args(run)
    run.add_argument("--out", type=Path, required=True, help="run directory for records")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    cfg = sub.add_parser("config", help="print the resolved configuration as JSON")
    _add_config_args(cfg)
    sub.add_parser("models", help="list the registered models")
    return ap


def _cmd_run(args: argparse.Namespace) -> int:
    from .federated import run_simulation
    from .metrics import RoundRecord, plot_run

    cfg = load_config(args.config, args.sets)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a directory")
    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"--out {args.out} exists and is not empty: choose a new directory "
                          "(results are never overwritten)")
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.fed.rounds, unit="round", dynamic_ncols=True)

    last_acc = math.nan

    def on_round(rec: RoundRecord) -> None:
        nonlocal last_acc
        if rec.accuracy is not None:
            last_acc = rec.accuracy
        if bar is not None:
            bar.set_postfix(acc=f"{last_acc:.3f}", params=rec.params, refresh=False)
            bar.update(1)

    try:
        result = run_simulation(cfg, args.out, on_round=on_round)
    finally:
        if bar is not None:
            bar.close()
    if not args.no_plots:
        plot_run(args.out)
    s = result.summary
    print(json.dumps({
        "accuracy": round(s["accuracy"], 4),
        "params": f"{s['params_initial']} -> {s['params_final']}",
        "flops": f"{s['flops_initial']} -> {s['flops_final']}",
        "bytes_total": s["bytes_total"],
        "bytes_total_dense": s["bytes_total_dense"],
        "widths_final": s["widths_final"],
        "seconds": round(s["seconds"], 1),
        "out": str(args.out),
    }, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "config":
            print(json.dumps(load_config(args.config, args.sets).to_dict(), indent=2))
            return 0
        if args.command == "models":
            from .models import list_models

            print("\n".join(list_models()))
            return 0
    except (ConfigError, ValueError) as exc:
        print(f"fedprune: error: {exc}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover


def app() -> None:
    raise SystemExit(main())
