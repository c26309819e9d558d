"""The ``fedprune export`` and ``fedprune bench-latency`` commands (called from the CLI)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..models import model_defaults, new_model
from .bench import bench_onnx_latency, format_rows
from .runs import load_run

PAPER_MODELS = ("cnn_femnist", "cnn_celeba", "resnet7", "inception")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="export a run's final (or initial) model for phones")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("--format", choices=("onnx", "executorch"), default="onnx")
    ex.add_argument("--out", type=Path, required=True, help="file to write (.onnx or .pte)")
    ex.add_argument("--initial", action="store_true",
                    help="export the dense model the run started from, not the pruned one")
    bl = sub.add_parser("bench-latency",
                        help="single-thread batch-1 latency of dense vs pruned (onnxruntime)")
    bl.add_argument("run_dirs", type=Path, nargs="*", help="runs whose dense/pruned pair to time")
    bl.add_argument("--paper-models", action="store_true",
                    help="also time the paper's four architectures at their initial widths")
    bl.add_argument("--runs", type=int, default=200)
    bl.add_argument("--warmup", type=int, default=20)
    bl.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")


def cmd_export(args: argparse.Namespace) -> int:
    rm = load_run(args.run_dir)
    model = rm.initial if args.initial else rm.final
    x = rm.spec.example_input()
    if args.out.exists():
        raise ValueError(f"--out {args.out} exists: choose a new file (exports never overwrite)")
    if args.format == "onnx":
        from .onnx import export_onnx

        report = export_onnx(model, x, args.out)
    else:
        from .executorch import export_executorch

        report = export_executorch(model, x, args.out)
    print(json.dumps({"file": str(report.path), "bytes": report.bytes,
                      "max_abs_diff_vs_pytorch": report.max_abs_diff,
                      "input": {"name": "input", "shape": list(x.shape), "dtype": "float32",
                                "layout": "NCHW"},
                      "which": "initial" if args.initial else "final"}, indent=2))
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    if not args.run_dirs and not args.paper_models:
        raise ValueError("give at least one run directory or --paper-models")
    if args.runs < 1 or args.warmup < 0:
        raise ValueError("--runs must be >= 1 and --warmup >= 0")
    out = []
    for run_dir in args.run_dirs:
        rm = load_run(run_dir)
        rows = bench_onnx_latency({"dense (initial)": rm.initial, "pruned (final)": rm.final},
                                  rm.spec.example_input(), runs=args.runs, warmup=args.warmup)
        print(f"{run_dir}: {rm.spec.name}, widths {rm.spec.widths_now()}")
        print(format_rows(rows))
        print(f"dense/pruned median latency ratio: {rows[1].speedup_vs_first:.2f}x\n")
        out.append({"run": str(run_dir), "rows": [r.to_dict() for r in rows]})
    if args.paper_models:
        for name in PAPER_MODELS:
            d = model_defaults(name)
            model, spec = new_model(name, num_classes=62 if d["in_channels"] == 1 else 2,
                                    in_channels=d["in_channels"], image_size=d["image_size"],
                                    widths=None, seed=0)
            rows = bench_onnx_latency({name: model}, spec.example_input(), runs=args.runs,
                                      warmup=args.warmup)
            print(format_rows(rows))
            out.append({"model": name, "rows": [r.to_dict() for r in rows]})
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0
