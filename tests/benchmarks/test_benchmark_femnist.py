"""benchmarks/data_femnist.py in its short form: 10 writers, 1 round, real processes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "data_femnist.py"


def _bench():
    spec = importlib.util.spec_from_file_location("data_femnist", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_femnist_benchmark_prepares_runs_both_partitions_and_cleans_up(tmp_path, capsys):
    bench = _bench()
    args = bench.parse_args(["--quick", "--workdir", str(tmp_path), "--threads", "1"])
    assert (args.scale, args.rounds) == (bench.QUICK_SCALE, 1)
    figures = bench.run(args)
    out = capsys.readouterr().out
    # the sizes follow the scale: TFF's counts times 0.003, at least one image per writer
    assert figures["writers"] == 10
    assert figures["train_images"] == round(bench.TRAIN * bench.QUICK_SCALE) == 2015
    assert figures["test_images"] == round(bench.TEST * bench.QUICK_SCALE) == 232
    assert "generated LEAF JSON: 10 writers, 2015 train + 232 test images" in out
    assert "prepare cache:" in out and figures["cache_mb"] >= 1
    for label in ("natural", "dirichlet"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"run ({label:9})"))
        assert "1 round of 10 clients + evaluating 232 test images" in line
        # the probes come in order: imports, data loaded, first round done
        load = figures[f"{label}_data_load_s"]
        done = figures[f"{label}_first_round_done_s"]
        assert 0 <= load < done
        assert f"first round done {done:.2f} s after launch" in line
        assert 0.0 <= figures[f"{label}_accuracy"] <= 1.0
        assert 50 < figures[f"{label}_peak_rss_mb"] < 3072
    assert figures["targets_met"] == all(
        figures[f"{k}_first_round_done_s"] < 10 and figures[f"{k}_peak_rss_mb"] < 3072
        for k in ("natural", "dirichlet"))
    # the figures are printed as the last JSON object, and the data are deleted
    assert json.loads(out[out.index("\n{\n") + 1:]) == figures
    assert list(tmp_path.iterdir()) == []
