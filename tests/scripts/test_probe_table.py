"""scripts/probe_table.py: a probe's runs beside dense FedAvg's of the same seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_table.py"


def _summary(folder: Path, **values) -> None:
    folder.mkdir(parents=True)
    base = {"params_initial": 100, "flops_initial": 1000, "client_flops_peak": 1.0,
            "bytes_total_dense": 1000, "client_flops_total_dense": 2000}
    (folder / "summary.json").write_text(json.dumps({**base, **values}))


def test_each_probe_run_is_set_beside_dense_and_the_bars(tmp_path):
    probes, records = tmp_path / "probes", tmp_path / "records"
    _summary(probes / "ds" / "m" / "seed0", accuracy=0.80, params_final=40, flops_final=400,
             bytes_total=600, client_flops_total=1000,
             nested={"cut_round": 22, "widths": {"a": 16, "b": 48}})
    _summary(probes / "ds" / "m" / "seed1", accuracy=0.70, params_final=40, flops_final=400,
             bytes_total=500, client_flops_total=1000, nested={"cut_round": 24, "widths": {}})
    _summary(probes / "ds" / "m" / "seed2", accuracy=0.9, params_final=40, flops_final=400,
             bytes_total=1, client_flops_total=1)  # no dense run of this seed: left out
    for s, acc in ((0, 0.81), (1, 0.72)):
        _summary(records / "ds" / "m" / "dense" / f"seed{s}", accuracy=acc, params_final=100,
                 flops_final=1000, bytes_total=1000, client_flops_total=2000)
    _summary(records / "ds" / "m" / "auto" / "seed0", accuracy=0.805, params_final=90,
             flops_final=900, bytes_total=900, client_flops_total=1900)
    res = subprocess.run([sys.executable, str(SCRIPT), str(probes), str(records),
                          "--baseline", "auto"], capture_output=True, text=True, check=True)
    out = res.stdout
    # bytes 0.6 against a bar of 0.4 + 0.15; client FLOPs 0.5 against 0.4 + 0.15
    assert ("| ds/m | seed0 | 22 | [16, 48] | 60.0 % | -1.00 | 0.600 (0.550) | 0.500 (0.550) "
            "| 1.00 | 10.0 %, -0.50 |") in out
    assert "| ds/m | seed1 | 24 | [] | 60.0 % | -2.00 | 0.500 (0.550) |" in out
    assert "seed2" not in out
    assert "| ds/m | 2 | 60.0 % | -1.50 | -2.00 | 1 of 2 | 2 of 2 |" in out


def test_nothing_to_show_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2 and res.stderr.startswith("probe_table:")
