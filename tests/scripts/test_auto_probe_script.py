"""scripts/auto_probe_table.py on short real runs: a probe (one cut, never kept, judged at
every interval), dense FedAvg and the fixed ratio with the same cut."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fedprune.config import from_dict
from fedprune.federated import run_simulation
from fedprune.metrics import read_rounds

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "auto_probe_table.py"
BASE = {"threads": 1, "train": {"local_epochs": 1},
        "fed": {"rounds": 8, "clients_per_round": 5, "eval_every": 1}}


def _run(out: Path, prune: dict) -> dict:
    return run_simulation(from_dict({**BASE, "prune": prune}), out).summary


def test_the_probe_table_shows_each_judgement_the_ratio_gap_and_the_fitted_line(tmp_path):
    probe = tmp_path / "probes" / "inception-cut75" / "seed0"
    suite = tmp_path / "suite" / "fashion-mnist" / "inception"
    summary = _run(probe, {"method": "auto-paired", "start_round": 2, "max_prune_round": 8,
                           "interval": 2, "judgements": 10, "max_accuracy_drop": 0.0,
                           "step": 0.75, "min_step": 0.75})
    tries = summary["auto"]["tries"]
    # one candidate judged every 2 rounds to the window's end (with max_accuracy_drop = 0 it
    # fits only if cost + 2 s.e. <= 0, which on these tiny validation splits can happen)
    assert [t["round"] for t in tries] == [4, 6, 8] and len({t["params"] for t in tries}) == 1
    assert [t["decision"] for t in tries[:2]] == ["again", "again"]
    assert tries[2]["decision"] in ("accept", "reject")
    _run(suite / "dense" / "seed0", {"enabled": False})
    _run(suite / "ratio75" / "seed0", {"method": "ratio", "ratio": 0.75, "start_round": 2,
                                       "max_prune_round": 2})
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--probes", str(tmp_path / "probes"), "--suite",
         str(tmp_path / "suite"), "--rounds", "4", "6", "8", "--fit", "4", "8"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "## inception-cut75" in out
    assert ("warning: seed0 kept its cut at round 8" in out) == (tries[2]["decision"] == "accept")
    row = next(line for line in out.splitlines() if line.startswith("| seed0 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    for t, cell in zip(tries, cells[1:4]):
        assert cell == f"{100 * t['cost']:.2f} ({100 * t['cost_se']:.2f})"
    fits = [t["round"] for t in tries if 100 * t["cost"] + 2 * (100 * t["cost_se"]) <= 1.0]
    assert cells[4] == (str(fits[0]) if fits else "none")
    loss_line = next(line for line in out.splitlines() if line.startswith("paired validation"))
    shown = float(re.search(r"\b8: (-?\d+\.\d+)", loss_line).group(1))
    assert abs(shown - (tries[-1]["loss_candidate"] - tries[-1]["loss_reference"])) <= 0.0006
    # the ratio's test gap, from the cut's round on
    dense = {r["round"]: r["accuracy"] for r in read_rounds(suite / "dense" / "seed0")}
    cut = {r["round"]: r["accuracy"] for r in read_rounds(suite / "ratio75" / "seed0")}
    gap_line = next(line for line in out.splitlines() if line.startswith("ratio75"))
    listed = dict(re.findall(r"(\d+): (-?\d+\.\d+)", gap_line.split("(points): ")[1]))
    assert sorted(int(r) for r in listed) == list(range(2, 9))
    assert abs(float(listed["8"]) - 100 * (dense[8] - cut[8])) <= 0.006
    # a straight line through the three judgements, extrapolated to round 8 (the last)
    fit = re.search(r"seed0: slope ([-+]\d+\.\d+)/round, (-?\d+\.\d+) points", out)
    assert fit is not None
    ys = [100 * t["cost"] for t in tries]
    slope = ((4 - 6) * (ys[0] - sum(ys) / 3) + (8 - 6) * (ys[2] - sum(ys) / 3)) / 8
    assert abs(float(fit.group(1)) - slope) <= 0.0006
    assert abs(float(fit.group(2)) - (sum(ys) / 3 + slope * (8 - 6))) <= 0.006
