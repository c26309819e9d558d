"""The one run-directory policy (RunDir.open): what a run may start in, or continue."""

import json
import logging

import pytest

from fedprune.config import ConfigError, from_dict
from fedprune.federated import run_simulation
from fedprune.rundir import RunDir, RunDirBusy, RunDirRefused

CFG = from_dict({"threads": 1, "data": {"num_clients": 4}, "model": {"widths": [4, 8]},
                 "train": {"local_epochs": 1},
                 "fed": {"rounds": 2, "clients_per_round": 2, "eval_every": 2},
                 "prune": {"start_round": 1, "max_prune_round": 2, "interval": 1}})


def _resumable(path, engine="in-process", cfg=CFG):
    """A folder as a run of ``engine`` killed after a checkpoint leaves it (the policy reads
    config.json and sees the checkpoint; it does not load it)."""
    with RunDir(path).open(cfg, resume=False, engine=engine) as run:
        run.write_config(cfg)
    (path / "checkpoint.pt").write_bytes(b"checkpoint")
    (path / "rounds.jsonl").write_text('{"round": 1}\n')
    return RunDir(path)


def test_a_new_folder_is_opened_locked_and_its_config_records_the_engine(tmp_path):
    rd = RunDir(tmp_path / "new")
    run = rd.open(CFG, resume=False, engine="in-process")
    try:
        assert (run.resume, run.restarted, run.cfg) == (False, False, CFG)
        with pytest.raises(RunDirBusy, match="in use by another fedprune process"):
            rd.open(CFG, resume=False, engine="in-process")  # one writer at a time
        run.write_config(CFG)
    finally:
        run.close()
    stored = json.loads(rd.config_file.read_text())
    assert stored.pop("engine") == "in-process" and stored == CFG.to_dict()
    assert rd.read_config() == CFG and rd.config_differences(CFG) == []
    assert rd.written_by() == "in-process"
    with pytest.raises(ConfigError, match="unknown key 'engine'"):  # a setting it is not
        from_dict({**CFG.to_dict(), "engine": "elsewhere"})


def test_a_folder_with_other_content_is_refused_untouched_and_unlocked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirRefused, match=r"--out .* exists and is not empty") as err:
        RunDir(out).open(CFG, resume=False, engine="in-process")
    assert err.value.reason == "not_empty"
    with pytest.raises(RunDirRefused, match="or set resume = true to continue the run it holds"):
        RunDir(out).open(CFG, resume=False, engine="flower")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no lock file either
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirRefused, match="is a file, not a directory"):
        RunDir(tmp_path / "file").open(CFG, resume=False, engine="in-process")


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_the_leftovers_of_a_run_killed_before_its_first_checkpoint_are_cleared(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"seed": 5}))
    (out / ".summary.json.abc123.tmp").write_text("{")
    with RunDir(out).open(CFG, resume=False, engine="in-process") as run:
        assert not run.resume and not run.restarted
        assert sorted(p.name for p in out.iterdir()) == [".lock"]

    (out / "config.json").write_text(json.dumps({"seed": 5}))
    (out / "rounds.jsonl.tmp").write_text("{")
    log, said = logging.getLogger("fedprune.runpolicy"), _Lines()
    log.addHandler(said)
    try:
        with RunDir(out).open(None, resume=True, engine="in-process") as run:
            assert run.restarted and not run.resume
            assert run.cfg.seed == 5  # the run's own config.json
            assert not (out / "rounds.jsonl.tmp").exists()
            # kept until the run writes it anew: a restart that fails before then (data
            # missing, no SuperNodes) does not lose the run's settings
            assert json.loads((out / "config.json").read_text()) == {"seed": 5}
    finally:
        log.removeHandler(said)
    assert any("starts again from round 1" in line for line in said.lines)
    with RunDir(out).open(None, resume=True, engine="in-process") as run:  # so, again
        assert run.restarted and run.cfg.seed == 5


def test_a_run_resumes_with_the_same_engine_and_config_only(tmp_path):
    rd = _resumable(tmp_path / "loop")
    with rd.open(CFG, resume=True, engine="in-process") as run:
        assert run.resume and not run.restarted and run.cfg == CFG
    with rd.open(None, resume=True, engine="in-process") as run:  # fedprune run --resume
        assert run.resume and run.cfg == CFG
    assert (rd.path / "checkpoint.pt").read_bytes() == b"checkpoint"  # nothing cleared

    other = from_dict({**CFG.to_dict(), "prune": {**CFG.to_dict()["prune"], "k": 1.5}})
    with pytest.raises(RunDirRefused, match=r"differs from .*config\.json \(section prune\)"):
        rd.open(other, resume=True, engine="in-process")
    with pytest.raises(RunDirRefused, match="holds a run of the in-process loop: resume it "
                                            f"with fedprune run --resume {rd.path}"):
        rd.open(CFG, resume=True, engine="flower")

    flower = _resumable(tmp_path / "flower", engine="flower")
    with pytest.raises(RunDirRefused, match="a run of the Flower app; resume it there") as err:
        flower.open(None, resume=True, engine="in-process")
    assert err.value.reason == "other_engine"
    with flower.open(CFG, resume=True, engine="flower") as run:
        assert run.resume


def test_a_run_written_before_the_engine_was_recorded_is_told_by_its_records(tmp_path):
    rd = _resumable(tmp_path / "old", engine="flower")
    rd.config_file.write_text(json.dumps(CFG.to_dict()))  # no "engine" key
    assert rd.written_by() == "in-process"
    rd.rounds_file.write_text('{"round": 1, "failures": 0}\n')  # the Flower app's records
    assert rd.written_by() == "flower"
    with pytest.raises(RunDirRefused, match="a run of the Flower app"):
        rd.open(None, resume=True, engine="in-process")


def test_a_finished_run_or_a_folder_without_a_run_is_not_resumed(tmp_path):
    rd = _resumable(tmp_path / "done")
    rd.summary_file.write_text("{}")
    with pytest.raises(RunDirRefused, match="the run finished"):
        rd.open(None, resume=True, engine="in-process")
    with pytest.raises(RunDirRefused, match="it holds a finished run"):
        rd.open(CFG, resume=True, engine="flower")
    with pytest.raises(RunDirRefused, match="not empty"):
        rd.open(CFG, resume=False, engine="in-process")
    with pytest.raises(RunDirRefused, match="holds no run") as err:
        RunDir(tmp_path / "absent").open(None, resume=True, engine="in-process")
    assert err.value.reason == "no_run" and not (tmp_path / "absent").exists()
    with pytest.raises(RunDirRefused, match="holds no checkpoint of a run"):
        RunDir(tmp_path / "absent").open(CFG, resume=True, engine="flower")


def test_a_killed_run_resumed_through_the_policy_ends_as_an_uninterrupted_one(tmp_path):
    class Stop(Exception):
        pass

    def stop_after_1(rec):
        if rec.round == 1:
            raise Stop

    with pytest.raises(Stop):
        run_simulation(CFG, tmp_path / "cut", on_round=stop_after_1)
    cut = RunDir(tmp_path / "cut")
    assert cut.state() == "resumable" and cut.written_by() == "in-process"
    with pytest.raises(RunDirRefused, match="holds a run of the in-process loop"):
        cut.open(CFG, resume=True, engine="flower")
    resumed = run_simulation(CFG, cut.path, resume=True)
    whole = run_simulation(CFG, tmp_path / "whole")
    assert resumed.summary["accuracy"] == whole.summary["accuracy"]
    assert json.loads(cut.config_file.read_text())["engine"] == "in-process"
    with pytest.raises(RunDirRefused, match="the run finished"):
        run_simulation(CFG, cut.path, resume=True)


def test_neither_engine_restarts_the_others_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # a Flower run killed before its first checkpoint
    (out / "config.json").write_text(json.dumps({**CFG.to_dict(), "engine": "flower"}))
    with pytest.raises(RunDirRefused, match="run of the Flower app"):
        RunDir(out).open(None, resume=True, engine="in-process")
    with RunDir(out).open(None, resume=True, engine="flower") as run:
        assert run.restarted
