"""Dense vs pruned single-thread, batch-1 CPU latency (onnxruntime), interleaved.

For each run directory given: the run's initial dense model and its final pruned model are
exported to ONNX (verified), timed in turns, and the ratio of medians is printed.

    python benchmarks/latency.py RUN_DIR [RUN_DIR ...] [--runs 300]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedprune.export import bench_onnx_latency, format_rows, load_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs_dirs", type=Path, nargs="+")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    args = ap.parse_args()
    ratios = {}
    for run_dir in args.runs_dirs:
        rm = load_run(run_dir)
        rows = bench_onnx_latency({f"{rm.spec.name} dense": rm.initial,
                                   f"{rm.spec.name} pruned": rm.final},
                                  rm.spec.example_input(), runs=args.runs, warmup=args.warmup)
        print(f"\n{run_dir}  (widths {rm.spec.widths_now()})")
        print(format_rows(rows))
        ratios[str(run_dir)] = rows[1].speedup_vs_first
    print("\ndense/pruned median latency ratio:")
    for k, v in ratios.items():
        print(f"  {v:5.2f}x  {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
