"""The ``fedprune export`` and ``fedprune bench-latency`` commands (called from the CLI)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from ..checkpoint import ALLOW_FLAG, ALLOW_HELP
from ..models import model_defaults, new_model
from ..rundir import CHECKPOINT_FILE, CONFIG_FILE, LATENCY_FILE, RunDir
from .bench import bench_onnx_latency, format_rows, run_latency_record
from .runs import load_run

PAPER_MODELS = ("cnn_femnist", "cnn_celeba", "resnet7", "inception")
FORMATS = {".onnx": "onnx", ".pte": "executorch"}  # file extension -> export format
FORMAT_NAMES = {"onnx": "an ONNX model", "executorch": "an ExecuTorch program"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "export", help="export a run's final (or initial) model for phones",
        description="Export the pruned model of a finished run (or, with --initial, the dense "
                    "model it started from) to ONNX or ExecuTorch, and check the file against "
                    "PyTorch on random inputs. The format follows the extension of --out "
                    "(.onnx: ONNX, .pte: ExecuTorch) unless --format names it.")
    ex.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                    help=f"a run directory (the --out of 'fedprune run': {CHECKPOINT_FILE}, "
                         f"{CONFIG_FILE})")
    ex.add_argument("--out", type=Path, required=True, metavar="FILE",
                    help="file to write: FILE.onnx (ONNX) or FILE.pte (ExecuTorch); never "
                         "overwritten")
    ex.add_argument("--format", choices=("onnx", "executorch"), default=None,
                    help="onnx (verified with onnxruntime) or executorch (XNNPACK; needs "
                         "'fedprune[executorch]'); must agree with a .onnx or .pte --out "
                         "(default: from the --out extension)")
    ex.add_argument("--initial", action="store_true",
                    help="export the dense model the run started from, not the pruned one "
                         "(default: the pruned final model)")
    ex.add_argument(ALLOW_FLAG, action="store_true", help=ALLOW_HELP)
    bl = sub.add_parser(
        "bench-latency",
        help="single-thread batch-1 latency of dense vs pruned (onnxruntime)",
        description="Time models in onnxruntime (1 thread, batch 1, interleaved runs, median "
                    "and 90th percentile): the dense/pruned pair of each run given, the "
                    "paper's architectures, or a latency table for budget.latency_table.")
    bl.add_argument("run_dirs", type=Path, nargs="*", metavar="RUN_DIR",
                    help="runs whose initial dense and final pruned models to time")
    bl.add_argument("--save", action="store_true",
                    help=f"also write each run's figures to RUN_DIR/{LATENCY_FILE}, where "
                         "'fedprune compare' reads them (an existing file is an error unless "
                         "--force)")
    bl.add_argument("--force", action="store_true",
                    help=f"with --save: replace an existing RUN_DIR/{LATENCY_FILE}")
    bl.add_argument(ALLOW_FLAG, action="store_true", help=ALLOW_HELP)
    bl.add_argument("--paper-models", action="store_true",
                    help="also time the paper's four architectures at their initial widths")
    bl.add_argument("--runs", type=int, default=200, metavar="N",
                    help="timed runs per model (default: %(default)s)")
    bl.add_argument("--warmup", type=int, default=20, metavar="N",
                    help="untimed warm-up runs per model (default: %(default)s)")
    bl.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write all rows as JSON to FILE (default: none)")
    bl.add_argument("--table", type=Path, default=None, metavar="FILE",
                    help="write a latency table for budget.latency_table: --model at widths "
                         "scaled by --fractions, timed on this device; never overwritten "
                         "(default: no table)")
    bl.add_argument("--model", default="cnn_femnist",
                    help="model of the --table, one of 'fedprune models' (default: %(default)s)")
    bl.add_argument("--num-classes", type=int, default=None, metavar="N",
                    help="classes of the --table model (default: 62 for 1 input channel, "
                         "else 2)")
    bl.add_argument("--in-channels", type=int, default=None, metavar="N",
                    help="input channels of the --table model (default: the model's own)")
    bl.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                    help="input height and width of the --table model (default: the model's "
                         "own)")
    bl.add_argument("--fractions", default="1,0.75,0.5,0.35,0.25,0.15,0.1", metavar="LIST",
                    help="width scales of the --table rows, comma-separated "
                         "(default: %(default)s)")


def export_format(out: Path, fmt: str | None) -> str:
    """The export format for ``--out`` and ``--format``: inferred from, and checked against,
    the extension (``.onnx`` ONNX, ``.pte`` ExecuTorch); raise ``ValueError`` otherwise."""
    ext = out.suffix.lower()
    implied = FORMATS.get(ext)
    known = " or ".join(f"{e} ({f})" for e, f in FORMATS.items())
    if fmt is None:
        if implied is None:
            raise ValueError(
                f"--out {out}: cannot tell the format from "
                f"{'the extension ' + repr(ext) if ext else 'a name without extension'}: "
                f"name the file {known}, or give --format")
        return implied
    if fmt not in FORMAT_NAMES:
        raise ValueError(f"--format {fmt!r}: choose {' or '.join(FORMAT_NAMES)}")
    if implied is not None and implied != fmt:
        right = next(e for e, f in FORMATS.items() if f == fmt)
        raise ValueError(
            f"--format {fmt} writes {FORMAT_NAMES[fmt]}, but --out {out} has the extension of "
            f"{FORMAT_NAMES[implied]}: use --out {out.with_suffix(right)}, or drop --format")
    return fmt


def cmd_export(args: argparse.Namespace) -> int:
    fmt = export_format(args.out, args.format)
    if args.out.exists():
        raise ValueError(f"--out {args.out} exists: choose a new file (exports never overwrite)")
    rm = load_run(args.run_dir, allow_unverified=args.allow_unverified_checkpoint)
    model = rm.initial if args.initial else rm.final
    x = rm.spec.example_input()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written and verified under a temporary name, then linked into place: a failed export
    # (parity, a full disk) leaves nothing at --out, and an existing file is never replaced
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        if fmt == "onnx":
            from .onnx import export_onnx

            report = export_onnx(model, x, tmp)
        else:
            from .executorch import export_executorch

            report = export_executorch(model, x, tmp)
        os.link(tmp, out)
    except OSError as exc:  # a full disk, a read-only folder: name the file asked for
        if exc.filename in (None, str(tmp)):
            raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
    report = dataclasses.replace(report, path=out)
    print(json.dumps({"file": str(report.path), "format": fmt, "bytes": report.bytes,
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
    if (args.save or args.force) and not args.run_dirs:
        raise ValueError("--save and --force need at least one run directory")
    if args.force and not args.save:
        raise ValueError("--force only applies with --save")
    if args.save and not args.force:
        for run_dir in args.run_dirs:
            if RunDir(run_dir).latency_file.exists():
                raise ValueError(f"{RunDir(run_dir).latency_file} exists: add --force to "
                                 "measure again and replace it")
    models = [(run_dir, load_run(run_dir, allow_unverified=args.allow_unverified_checkpoint))
              for run_dir in args.run_dirs]  # all readable first
    out = []
    for run_dir, rm in models:
        rows = bench_onnx_latency({"dense (initial)": rm.initial, "pruned (final)": rm.final},
                                  rm.spec.example_input(), runs=args.runs, warmup=args.warmup)
        print(f"{run_dir}: {rm.spec.name}, widths {rm.spec.widths_now()}")
        print(format_rows(rows))
        print(f"dense/pruned median latency ratio: {rows[1].speedup_vs_first:.2f}x")
        if args.save:
            print(f"wrote {RunDir(run_dir).write_latency(run_latency_record(rows))}")
        print()
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
