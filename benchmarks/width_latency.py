"""Which channel multiple makes pruned widths fast: ``prune.round_to`` chosen by measurement.

Takes the widths that pruning leaves when nothing aligns them (the automatic method's final
widths of the `auto` suite before alignment, and the fixed ratios'), rounds every group's
channel count to a multiple of M (``fedprune.pruning.widths.aligned``, the rule of
``prune.round_to``) for M in 1, 4, 8, 16, 32, and times each model against the dense one,
interleaved, single-threaded, batch 1, in ONNX Runtime and (where installed) ExecuTorch with
XNNPACK.  Latency does not depend on the weights: the models are built at those widths.

Prints, per multiple, the median over the widths of latency / dense latency and of FLOPs /
dense FLOPs, their ratio (latency paid per FLOP kept: 1 means latency falls as FLOPs do),
and how many of the widths run within 0.30 + 0.75 x their FLOPs ratio.

    python benchmarks/width_latency.py [--runs 200] [--no-executorch]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from fedprune.export.onnx import export_onnx, ort_session
from fedprune.metrics.latency import measure_interleaved
from fedprune.metrics.size import count_flops
from fedprune.models import new_model
from fedprune.pruning.widths import aligned

# CNN-FEMNIST at 28 x 28 (dense [32, 64]): widths left by the automatic method and the ratios
CNN_WIDTHS = [[21, 41], [19, 38], [18, 36], [17, 33], [16, 31], [13, 24], [26, 52],
              [24, 48], [12, 24], [8, 16], [28, 56]]
MULTIPLES = (1, 4, 8, 16, 32)
# the bar a pruned model's latency ratio should meet: BAR_BASE + BAR_SLOPE x its FLOPs ratio
BAR_BASE, BAR_SLOPE = 0.30, 0.75


def _runner(model: torch.nn.Module, x: torch.Tensor, kind: str, where: Path, name: str):
    if kind == "onnx":
        rep = export_onnx(model, x, where / f"{name}.onnx")
        sess = ort_session(rep.path, threads=1)
        arr = x.numpy()
        return lambda: sess.run(["logits"], {"input": arr})
    from fedprune.export.executorch import export_executorch, pte_runner

    rep = export_executorch(model, x, where / f"{name}.pte")
    return pte_runner(rep.path, x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--no-executorch", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    kinds = ["onnx"]
    if not args.no_executorch:
        try:
            import executorch  # noqa: F401

            kinds.append("executorch")
        except ImportError:
            print("ExecuTorch is not installed: ONNX Runtime only")
    dense, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=None, seed=0)
    x = spec.example_input()[:1]
    flops_dense = count_flops(dense, x)
    for kind in kinds:
        print(f"\n{kind}: latency and FLOPs over dense [32, 64], 1 thread, batch 1, "
              f"interleaved, {args.runs} runs")
        print(f"{'multiple':>8} {'median latency':>15} {'worst latency':>14} "
              f"{'median FLOPs':>13} {'latency/FLOPs':>14} {'within bar':>11}")
        for m in MULTIPLES:
            models = {"dense": dense}
            seen = set()
            for w in CNN_WIDTHS:
                a = (aligned(w[0], 32, m), aligned(w[1], 64, m))
                if a in seen or a == (32, 64):
                    continue
                seen.add(a)
                models[f"{a[0]}x{a[1]}"], _ = new_model("cnn_femnist", num_classes=10,
                                                        in_channels=1, image_size=28,
                                                        widths=list(a), seed=0)
            with tempfile.TemporaryDirectory() as tmp:
                runners = {n: _runner(mod.eval(), x, kind, Path(tmp), n)
                           for n, mod in models.items()}
                stats = measure_interleaved(runners, warmup=args.warmup, runs=args.runs)
            base = stats["dense"].median_ms
            lat = {n: stats[n].median_ms / base for n in models if n != "dense"}
            flops = {n: count_flops(models[n], x) / flops_dense for n in lat}
            per = [lat[n] / flops[n] for n in lat]
            within = sum(lat[n] <= BAR_BASE + BAR_SLOPE * flops[n] for n in lat)
            print(f"{m:>8} {statistics.median(lat.values()):>15.2f} {max(lat.values()):>14.2f} "
                  f"{statistics.median(flops.values()):>13.2f} {statistics.median(per):>14.2f}"
                  f" {f'{within} of {len(lat)}':>11}"
                  f"   {', '.join(f'{n} {lat[n]:.2f}' for n in lat)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
