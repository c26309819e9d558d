"""Export models to ONNX and measure their single-thread, batch-1 latency side by side."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..metrics.latency import LatencyStats, measure_interleaved
from ..metrics.size import count_flops, n_params
from .onnx import export_onnx, ort_session

LATENCY_SETUP = "onnxruntime, 1 thread, batch 1, interleaved"


@dataclass(frozen=True)
class LatencyRow:
    name: str
    params: int
    flops: int
    file_bytes: int
    stats: LatencyStats
    speedup_vs_first: float  # median of the first model / median of this one

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "stats"},
                **asdict(self.stats)}


def bench_onnx_latency(
    models: dict[str, nn.Module],
    example_input: torch.Tensor,
    *,
    runs: int = 200,
    warmup: int = 20,
    out_dir: Path | None = None,
) -> list[LatencyRow]:
    """Export every model to ONNX (verified), then time them interleaved in onnxruntime."""
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(out_dir) if out_dir is not None else Path(tmp)
        x = example_input[:1].numpy().astype(np.float32)
        sessions, sizes = {}, {}
        for name, model in models.items():
            report = export_onnx(model, example_input[:1], where / f"{name}.onnx")
            sessions[name] = ort_session(report.path, threads=1)
            sizes[name] = report.bytes
        stats = measure_interleaved(
            {n: (lambda s=s: s.run(["logits"], {"input": x})) for n, s in sessions.items()},
            warmup=warmup, runs=runs,
        )
    first = next(iter(models))
    return [
        LatencyRow(n, n_params(m), count_flops(m, example_input[:1]), sizes[n], stats[n],
                   stats[first].median_ms / stats[n].median_ms)
        for n, m in models.items()
    ]


def format_rows(rows: list[LatencyRow]) -> str:
    head = (f"{'model':<28} {'params':>9} {'FLOPs':>12} {'file KB':>8} {'median ms':>9} "
            f"{'p90 ms':>8} {'speed-up':>8}")
    lines = [head]
    for r in rows:
        lines.append(f"{r.name:<28} {r.params:>9} {r.flops:>12} {r.file_bytes / 1024:>8.1f} "
                     f"{r.stats.median_ms:>9.3f} {r.stats.p90_ms:>8.3f} "
                     f"{r.speedup_vs_first:>7.2f}x")
    return "\n".join(lines)


def run_latency_record(rows: list[LatencyRow]) -> dict:
    """The ``latency.json`` of a run from its [initial dense, final] rows.

    ``ratio`` is the final model's median latency over the initial dense model's (lower is
    better); ``dense`` and ``final`` are the two rows (``median_ms``, ``p90_ms``, ...).
    """
    if len(rows) != 2:
        raise ValueError(f"a run's latency record needs 2 rows (dense, final), got {len(rows)}")
    dense, final = rows
    return {"ratio": final.stats.median_ms / dense.stats.median_ms, "timed": True,
            "dense": dense.to_dict(), "final": final.to_dict(), "setup": LATENCY_SETUP}
