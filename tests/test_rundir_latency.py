"""RunDir's latency record and its listing of run directories below a folder."""

from __future__ import annotations

import json

import pytest

from fedprune.rundir import RunDir


def test_latency_record_is_absent_then_written_atomically_and_read_back(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.read_latency() is None
    record = {"ratio": 0.5, "timed": True, "dense": {"median_ms": 2.0},
              "final": {"median_ms": 1.0}}
    assert rd.write_latency(record) == tmp_path / "latency.json"
    assert rd.read_latency() == record
    assert json.loads((tmp_path / "latency.json").read_text()) == record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency.json"]  # no temporary left
    (tmp_path / "latency.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="latency.json does not hold a JSON object"):
        rd.read_latency()


def test_runs_below_a_folder_shallowest_first_up_to_the_limit(tmp_path):
    for rel in ("b/seed0", "a/seed1", "a/seed0", "deep/x/y/seed0", "too/deep/x/y/seed0"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "rounds.jsonl").write_text('{"round": 1}\n')
    (tmp_path / "no-run").mkdir()
    (tmp_path / "no-run" / "config.json").write_text("{}")
    assert RunDir(tmp_path / "a" / "seed0").has_rounds()
    assert not RunDir(tmp_path / "no-run").has_rounds()
    found = [r.path.relative_to(tmp_path).as_posix() for r in RunDir.below(tmp_path, limit=10)]
    assert found == ["a/seed0", "a/seed1", "b/seed0", "deep/x/y/seed0"]  # 4 levels at most
    assert [r.path.name for r in RunDir.below(tmp_path, limit=2)] == ["seed0", "seed1"]
    assert RunDir.below(tmp_path / "no-run") == []
