"""Single-thread, batch-1 CPU inference latency, measured interleaved.

Several models are timed in turns (A, B, A, B, ... with the order alternating each turn) after
a warm-up, so that a noisy shared machine slows them alike; the report gives the median and
the 90th percentile in milliseconds, and the ratio of medians is what to quote.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    device: str = "cpu, 1 thread, batch 1"


def measure_interleaved(
    runners: dict[str, Callable[[], object]], *, warmup: int = 20, runs: int = 200
) -> dict[str, LatencyStats]:
    """Time each zero-argument callable ``runs`` times, interleaved, after ``warmup`` calls."""
    if not runners:
        raise ValueError("nothing to measure")
    if warmup < 0 or runs < 1:
        raise ValueError(f"need warmup >= 0 and runs >= 1, got {warmup}, {runs}")
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {
        n: LatencyStats(float(np.median(t)), float(np.percentile(t, 90)), float(np.mean(t)), runs)
        for n, t in times.items()
    }
