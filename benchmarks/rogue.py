"""One rogue client among ten: final test accuracy under each aggregation rule.

The configuration and the rogue are those of ``tests/federated/test_rogue.py`` (digits, 10
clients all sampled every round, widths [8, 16], 2 local epochs, 30 rounds, no pruning, seed 0, one
thread): client 3 trains honestly, then sends ``global + scale * update``.  Printed as a
Markdown table, one row per rule, one column per rogue (none, x1e4, x-10, x-3: a sign flip
that stays at the default bound of 3 median norms).

    python benchmarks/rogue.py          # 16 runs, about 1.5 minutes
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_rogue import DENSE, _loop_run

RULES = [
    ("`fedavg`, `clip_factor` 3 (default)", {}),
    ("`trimmed_mean` 0.1, `clip_factor` 3", {"aggregator": "trimmed_mean"}),
    ("`median`, `clip_factor` 3", {"aggregator": "median"}),
    ("`fedavg`, `clip_factor` 0 (plain FedAvg)", {"clip_factor": 0.0}),
]
SCALES = [None, 1e4, -10.0, -3.0]


def main() -> int:
    print("| rule | no rogue | x1e4 | x-10 | x-3 |")
    print("|---|---|---|---|---|")
    for name, fed in RULES:
        accuracies = []
        for scale in SCALES:
            with tempfile.TemporaryDirectory() as tmp:
                accuracies.append(_loop_run(DENSE, Path(tmp), scale, **fed).summary["accuracy"])
        print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accuracies) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
