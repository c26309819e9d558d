"""A real `fedprune run` killed with SIGKILL mid-run and resumed ends as if never killed."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from fedprune.cli import main

SETS = ["threads=1", "data.num_clients=6", "model.widths=[8,16]", "train.local_epochs=2",
        "fed.rounds=12", "fed.clients_per_round=3", "fed.eval_every=3", "prune.start_round=2",
        "prune.max_prune_round=9", "prune.interval=1", "prune.k=0.5", "prune.max_fraction=0.3"]


def _cmd(*extra):
    cmd = [sys.executable, "-m", "fedprune", "run", "--no-progress", "--no-plots", *extra]
    for s in SETS if "--out" in extra else []:
        cmd += ["--set", s]
    return cmd


def _lines(path):
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cmd("--out", str(full)), check=True, capture_output=True, timeout=300)
    kill_after = random.Random(os.getpid()).randint(2, 9)  # a random round, logged on failure
    proc = subprocess.Popen(_cmd("--out", str(cut)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _lines(cut / "rounds.jsonl") < kill_after and proc.poll() is None:
            assert time.monotonic() < deadline, "run did not progress"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill at {kill_after}"
    assert not (cut / "summary.json").exists()
    subprocess.run(_cmd("--resume", str(cut)), check=True, capture_output=True, timeout=300)

    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert a["spec"] == b["spec"] and a["round"] == b["round"] == 12
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, cut))
    sa.pop("seconds"), sb.pop("seconds")
    assert sa == sb, f"killed after round {kill_after}"
    rows = [json.loads(x)["round"] for x in (cut / "rounds.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 13))


def test_resume_errors_are_clear(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path / "nope")]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path), "--set", "seed=1"]) == 2
    assert "drop --config/--set" in capsys.readouterr().err


def test_resuming_a_finished_run_is_refused(tmp_path, capsys):
    from fedprune.cli import main

    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--no-progress", "--no-plots", "--set",
                 "fed.rounds=1", "--set", "train.local_epochs=1", "--set",
                 "fed.clients_per_round=2"]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    assert "the run finished" in capsys.readouterr().err


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_again(tmp_path, capsys):
    from fedprune.cli import main
    from fedprune.rundir import RunDir

    short = {"fed": {"rounds": 1, "clients_per_round": 2}, "train": {"local_epochs": 1}}
    out = tmp_path / "run"
    out.mkdir()
    # what a run killed during round 1 leaves: its config and an interrupted atomic write
    (out / "config.json").write_text(json.dumps(short) + "\n")
    (out / ".summary.json.abc123.tmp").write_text("{")
    rd = RunDir(out)
    assert rd.state() == "fresh" and len(rd.stale_files()) == 2

    assert main(["run", "--out", str(out), "--no-progress", "--no-plots", "--set",
                 "fed.rounds=1", "--set", "train.local_epochs=1", "--set",
                 "fed.clients_per_round=2"]) == 0
    assert rd.state() == "finished" and not list(out.glob(".*.tmp"))

    # --resume starts such a run again from round 1, with its own config.json
    again = tmp_path / "again"
    again.mkdir()
    (again / "config.json").write_text(json.dumps(short) + "\n")
    (again / "rounds.jsonl").write_text('{"round": 1, "accuracy": 0.5}\n')  # no checkpoint
    assert main(["run", "--resume", str(again), "--no-progress", "--no-plots"]) == 0
    assert RunDir(again).state() == "finished"
    assert [r["round"] for r in RunDir(again).read_rounds()] == [1]
    assert RunDir(again).read_config().fed.rounds == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "--resume", str(empty), "--no-progress"]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_a_folder_with_other_files_is_never_cleared(tmp_path, capsys):
    from fedprune.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}\n")
    (out / "notes.txt").write_text("mine")

    assert main(["run", "--out", str(out), "--no-progress", "--set", "fed.rounds=1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and (out / "config.json").exists()
