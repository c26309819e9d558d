"""Pruned vs dense FedAvg on the embedded default data, over several seeds.

Runs the default configuration with pruning on and off (``prune.enabled=false``), same seeds,
rounds, clients and validation split, and prints per-seed figures, means, and whether the
pruned runs' mean final accuracy is within ``prune.max_accuracy_drop`` (1 point) of dense.
The automatic method decides the size from the data, so the size is reported, not checked.

    python benchmarks/prune_vs_dense.py --seeds 0 1 2 [--jobs 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run(seed: int, dense: bool, extra: list[str], out: Path, threads: int) -> dict:
    run_dir = out / f"{'dense' if dense else 'pruned'}-seed{seed}"
    sets = [f"seed={seed}", f"threads={threads}", *extra]
    if dense:
        sets.append("prune.enabled=false")
    cmd = [sys.executable, "-m", "fedprune", "run", "--out", str(run_dir), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (each 1 thread)")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", type=Path, default=None, help="keep the run folders here")
    ap.add_argument("--plot", type=Path, default=None,
                    help="write a pruned-vs-dense overview PNG of the first seed here")
    args = ap.parse_args()
    if args.out is not None:
        return report(args, args.out)
    with tempfile.TemporaryDirectory(prefix="fedprune-bench-") as tmp:  # removed afterwards
        return report(args, Path(tmp))


def report(args: argparse.Namespace, out: Path) -> int:
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(s, d) for s in args.seeds for d in (False, True)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run(j[0], j[1], args.sets, out, threads), jobs))
    rows = {(s, d): r for (s, d), r in zip(jobs, results, strict=True)}

    if args.out is not None:
        print(f"runs under {out}")
    print(f"{'seed':>4} {'dense acc':>9} {'pruned acc':>10} {'params cut':>10} {'FLOPs cut':>9} "
          f"{'bytes ratio':>11} {'widths final':>20} {'dense s':>7} {'pruned s':>8}")
    acc_d, acc_p, pcut, fcut, bratio = [], [], [], [], []
    for s in args.seeds:
        d, p = rows[(s, True)], rows[(s, False)]
        acc_d.append(d["accuracy"])
        acc_p.append(p["accuracy"])
        pcut.append(1 - p["params_final"] / p["params_initial"])
        fcut.append(1 - p["flops_final"] / p["flops_initial"])
        bratio.append(d["bytes_total"] / p["bytes_total"])
        widths = list(p["widths_final"].values())
        print(f"{s:>4} {acc_d[-1]:>9.4f} {acc_p[-1]:>10.4f} {pcut[-1]:>10.1%} {fcut[-1]:>9.1%} "
              f"{bratio[-1]:>10.2f}x {str(widths):>20} {d['seconds']:>7.1f} {p['seconds']:>8.1f}")
    gap = 100 * (statistics.mean(acc_d) - statistics.mean(acc_p))
    sd = statistics.stdev if len(args.seeds) > 1 else (lambda _: 0.0)
    print(f"mean dense accuracy  {statistics.mean(acc_d):.4f} +- {sd(acc_d):.4f}")
    print(f"mean pruned accuracy {statistics.mean(acc_p):.4f} +- {sd(acc_p):.4f}")
    print(f"accuracy gap (dense - pruned) {gap:.2f} points (target <= 1.0)")
    print(f"params cut {statistics.mean(pcut):.1%} (min {min(pcut):.1%}), FLOPs cut "
          f"{statistics.mean(fcut):.1%} (min {min(fcut):.1%})")
    print(f"mean bytes ratio dense/pruned {statistics.mean(bratio):.2f}x")
    if args.plot is not None:
        from fedprune.metrics import plot_overview

        s0 = args.seeds[0]
        print("plot:", plot_overview(out / f"pruned-seed{s0}", out / f"dense-seed{s0}", args.plot))
    ok = gap <= 1.0
    print("target met" if ok else "target NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
