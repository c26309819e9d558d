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
    bl.add_argument("--table", type=Path, default=None, metavar="FILE",
                    help="write a latency table for budget.latency_table: --model at widths "
                         "scaled by --fractions, timed on this device")
    bl.add_argument("--model", default="cnn_femnist", help="model of the --table")
    bl.add_argument("--num-classes", type=int, default=None)
    bl.add_argument("--in-channels", type=int, default=None)
    bl.add_argument("--image-size", type=int, default=None)
    bl.add_argument("--fractions", default="1,0.75,0.5,0.35,0.25,0.15,0.1",
                    help="width scales of the --table rows (comma-separated)")


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
    if not args.run_dirs and not args.paper_models and args.table is None:
        raise ValueError("give at least one run directory, --paper-models or --table FILE")
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
    if args.table is not None:
        write_latency_table(args)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


def write_latency_table(args: argparse.Namespace) -> Path:
    """Time ``args.model`` at scaled widths on this device; write the budget latency table."""
    import platform

    if args.table.exists():
        raise ValueError(f"--table {args.table} exists: choose a new file")
    try:
        fractions = sorted({float(f) for f in args.fractions.split(",")}, reverse=True)
    except ValueError:
        raise ValueError(f"--fractions {args.fractions!r}: give numbers such as 1,0.5,0.25"
                         ) from None
    if len(fractions) < 2 or not all(0 < f <= 1 for f in fractions):
        raise ValueError("--fractions needs at least two width scales in (0, 1]")
    d = model_defaults(args.model)
    in_ch = args.in_channels or d["in_channels"]
    size = args.image_size or d["image_size"]
    classes = args.num_classes or (62 if in_ch == 1 else 2)
    base = list(d["widths"])
    models, widths = {}, {}
    for f in fractions:
        w = [max(1, round(v * f)) for v in base]
        name = f"x{f:g}"
        models[name], spec = new_model(args.model, num_classes=classes, in_channels=in_ch,
                                       image_size=size, widths=w, seed=0)
        widths[name] = w
    rows = bench_onnx_latency(models, spec.example_input(), runs=args.runs, warmup=args.warmup)
    print(f"latency table of {args.model} ({in_ch}x{size}x{size}, {classes} classes):")
    print(format_rows(rows))
    doc = {"device": f"{platform.machine()} {platform.processor() or platform.platform()}",
           "runtime": "onnxruntime, 1 thread, batch 1", "model": args.model,
           "input_shape": [in_ch, size, size],
           "rows": [{"widths": widths[r.name], "params": r.params, "flops": r.flops,
                     "latency_ms": r.stats.median_ms, "p90_ms": r.stats.p90_ms}
                    for r in rows]}
    args.table.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    print(f"wrote {args.table}")
    return args.table
