"""scripts/keep_records.py: a suite's records kept elsewhere make the same report, runs are
never silently replaced, and several invocations' logs add up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from fedprune.reproduce import get_suite, plan_suite, run_plan
from fedprune.reproduce.report import write_report

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "keep_records.py"


def _keep(src, dest):
    return subprocess.run([sys.executable, str(SCRIPT), str(src), str(dest)],
                          capture_output=True, text=True, check=False)


def test_kept_records_make_the_same_report_and_are_never_replaced_silently(tmp_path):
    out, kept = tmp_path / "suite", tmp_path / "kept"
    plan = plan_suite(get_suite("test"), out, seeds=[0], methods=["dense", "ratio50"],
                      models=["cnn_femnist"])
    run_plan(plan, jobs=1, argv=["reproduce", "--suite", "test"])
    # a run that did not finish is left out
    unfinished = out / "digits" / "cnn_femnist" / "ratio85" / "seed0"
    unfinished.mkdir(parents=True)
    shutil.copy(plan.runs[0].run_dir / "config.json", unfinished / "config.json")
    r = _keep(out, kept)
    assert r.returncode == 0, r.stderr
    assert "2 runs copied, 0 already kept, 1 not finished" in r.stdout
    for run in plan.runs:
        there = kept / run.run_dir.relative_to(out)
        assert sorted(p.name for p in there.iterdir()) == [
            "config.json", "latency.json", "rounds.jsonl", "summary.json"]  # no weights
    assert not (kept / unfinished.relative_to(out)).exists()
    a = write_report(plan, tmp_path / "ra" / "r.md").read_text()
    again = plan_suite(get_suite("test"), kept, seeds=[0], methods=["dense", "ratio50"],
                       models=["cnn_femnist"])
    b = write_report(again, tmp_path / "rb" / "r.md").read_text()
    assert a.replace(str(out), "X") == b.replace(str(kept), "X")
    # kept again: nothing changes, the log holds each invocation once
    assert "0 runs copied, 2 already kept" in _keep(out, kept).stdout
    log = json.loads((kept / "suite.json").read_text())
    assert len(log["invocations"]) == 1 and log["suite"] == "test"
    # another invocation (another machine, say) adds to the log
    mine = json.loads((out / "suite.json").read_text())
    extra = dict(mine["invocations"][0], started="2099-01-01T00:00:00+0000",
                 machine={**mine["invocations"][0]["machine"], "cpu": "Other CPU"})
    (out / "suite.json").write_text(json.dumps({**mine, "invocations": [extra]}))
    assert _keep(out, kept).returncode == 0
    log = json.loads((kept / "suite.json").read_text())
    assert len(log["invocations"]) == 2
    text = write_report(again, tmp_path / "c.md").read_text()
    assert "Machines: " in text and "Other CPU" in text
    # a run made again with other results is refused, the kept one untouched
    summary = plan.runs[0].run_dir / "summary.json"
    s = json.loads(summary.read_text())
    summary.write_text(json.dumps({**s, "accuracy": 0.0}))
    r = _keep(out, kept)
    assert r.returncode == 2 and "already holds another run's records" in r.stderr
    assert json.loads((kept / plan.runs[0].run_dir.relative_to(out) / "summary.json")
                      .read_text())["accuracy"] == s["accuracy"]
    assert _keep(tmp_path / "nowhere", kept).returncode == 2
