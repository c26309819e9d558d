"""benchmarks/sim_speed.py in a short form: the columns and ratios it reports (not speeds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_speed.py"


def test_sim_speed_reports_plain_and_batched_columns_per_precision(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--widths", "4,8", "--clients", "3", "--samples", "40",
         "--epochs", "1", "--reps", "1", "--no-flower", "--threads", "1",
         "--precisions", "fp32", "bf16", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["peak_flops"] > 0 and res["peak_flops_bf16"] > 0
    row = res["widths"]["4,8"]
    for key in ("plain", "fast-fp32", "fast-bf16"):
        assert row[key]["s_per_round"] > 0 and len(row["seconds"][key]) == 1
    assert set(row["ratios"]) == {"fast-fp32_vs_plain", "fast-bf16_vs_plain",
                                  "fast-bf16_vs_fast-fp32"}
    assert "fast     bf16" in proc.stdout and "fast-bf16 vs fast-fp32" in proc.stdout


def test_sim_speed_refuses_a_device_that_is_not_here():
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cuda:4096", "--no-flower"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "device = 'cuda:4096' but" in proc.stderr
