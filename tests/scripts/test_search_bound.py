"""scripts/search_bound.py: the bytes of a search that cut to a fixed ratio's size at round R,
the in-flight costs of that size and the fixed ratio's own gap, from run records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "search_bound.py"


def _run(folder: Path, rounds: list[dict], summary: dict, config: dict | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (folder / "summary.json").write_text(json.dumps(summary))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))


def _records(root: Path) -> Path:
    """Ten rounds; dense moves 100 bytes a round; the ratio is cut at round 4 and moves 25
    a round after; the search moves 60 a round before round 5 and 200 a judging round."""
    s = root / "ds" / "m"
    acc = {5: 0.5, 10: 0.8}

    def rnd(r, b, **extra):
        return {"round": r, "bytes_down": b // 2, "bytes_up": b - b // 2,
                "accuracy": acc.get(r), **extra}

    sizes = {"params_initial": 100, "flops_initial": 1000}
    _run(s / "dense" / "seed0", [rnd(r, 100) for r in range(1, 11)],
         {**sizes, "params_final": 100, "flops_final": 1000})
    fixed = [rnd(r, 100 if r <= 4 else 25) for r in range(1, 11)]
    fixed[4]["accuracy"], fixed[9]["accuracy"] = 0.47, 0.81  # -3 and +1 points
    _run(s / "ratio75" / "seed0", fixed,
         {**sizes, "params_final": 30, "flops_final": 400, "prune_stopped_round": 4})
    width = {"params": 30, "cost": 0.02, "cost_se": 0.005}
    searched = [rnd(r, 60) for r in range(1, 5)] + [
        rnd(5, 200, nested={"status": "search", "judged": {"round": 5, "widths": [width]}}),
        rnd(6, 60, nested={"status": "search"}),
        rnd(7, 200, nested={"status": "stopped", "judged": {"round": 7, "widths": [width]}})]
    _run(s / "auto" / "seed0", searched, {**sizes, "params_final": 100, "flops_final": 1000},
         {"prune": {"start_round": 5, "interval": 2}, "fed": {"rounds": 10}})
    return root


def test_the_bound_is_measured_from_the_runs(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from search_bound import bound, render
    finally:
        sys.path.remove(str(SCRIPT.parent))
    b = bound(_records(tmp_path), "ds/m")
    assert b["bytes_bar"] == pytest.approx(0.45) and b["flops_cut"] == pytest.approx(0.6)
    rows = {r["round"]: r for r in b["rows"]}
    # cut at 5: five searching rounds of 60, five of the cut model's 25, of dense's 1000
    assert rows[5]["bytes_no_judgement"] == pytest.approx((5 * 60 + 5 * 25) / 1000)
    # one judgement, 140 bytes above a searching round (only searching rounds count)
    assert rows[5]["bytes_with_judgements"] == pytest.approx((5 * 60 + 5 * 25 + 140) / 1000)
    assert rows[10]["judgements"] == 3
    assert rows[5]["fixed_gap"] == pytest.approx(-3.0) and rows[10]["fixed_gap"] == \
        pytest.approx(1.0)
    assert b["per_seed"]["seed0"]["costs"] == [(5, pytest.approx(2.0), pytest.approx(0.5)),
                                               (7, pytest.approx(2.0), pytest.approx(0.5))]
    text = render(b)
    assert "| 5 | 0.425 | 0.565 (1) | -3.00 |" in text and "round 5: 2.00 +- 0.50" in text


def test_missing_runs_are_one_line(tmp_path):
    (tmp_path / "ds" / "m").mkdir(parents=True)
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "ds/m"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("search_bound:") and "\n" not in res.stderr.strip()
