"""A Flower run resumes from its checkpoint (``resume = true``) like an in-process run.

In process (:class:`~fedprune.flower.grid.LocalGrid`): a budget-mode run stopped while a
guard candidate is pending, then resumed, ends bit for bit as the uninterrupted run, and
``resume`` refuses directories it cannot continue.  The slow test kills the ServerApp's
process of a real simulation-engine run (Ray) mid-run and resumes it on a new SuperLink.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from golden_runs import fingerprint
from interrupt import Stop, stop_after

from fedprune.config import ConfigError, from_dict
from fedprune.flower.client_app import client_app
from fedprune.flower.grid import LocalGrid
from fedprune.flower.run_config import experiment_to_run_config
from fedprune.flower.server_app import run_server
from fedprune.metrics import read_rounds

CFG = from_dict({
    "threads": 1, "data": {"num_clients": 4, "val_fraction": 0.2},
    "model": {"widths": [8, 16]}, "train": {"local_epochs": 1},
    "fed": {"rounds": 10, "clients_per_round": 3, "eval_every": 2},
    "prune": {"method": "boundary", "start_round": 2, "max_prune_round": 9, "interval": 1,
              "max_fraction": 0.4},
    "budget": {"params_fraction": 0.3, "guard_recovery_rounds": 2, "guard_tolerance": 1.0,
               "guard_clients": 3},
})


def _grid(n=4):
    return LocalGrid(client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)])


def _run_config(out: Path, **flower):
    return {**experiment_to_run_config(CFG), "out-dir": str(out), "plots": False, **flower}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("flower") / "full"
    run_server(_grid(), _run_config(out))
    return out


def test_budget_run_resumes_bit_identically_with_a_pending_candidate(uninterrupted, tmp_path):
    rows = read_rounds(uninterrupted)
    pending = [r["round"] for r in rows if r["budget"]["pending"]]
    assert pending, "no round ended with a guard candidate pending"
    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        run_server(_grid(), _run_config(cut), on_round=stop_after(pending[0]))
    assert len(read_rounds(cut)) == pending[0] and not (cut / "summary.json").exists()

    summary = run_server(_grid(), _run_config(cut, resume=True))

    assert summary["status"] == "completed"
    assert fingerprint(cut) == fingerprint(uninterrupted)
    assert [r["round"] for r in read_rounds(cut)] == list(range(1, CFG.fed.rounds + 1))


AUTO = from_dict({
    "threads": 1, "data": {"num_clients": 4, "val_fraction": 0.2},
    "model": {"widths": [8, 16]}, "train": {"local_epochs": 1},
    "fed": {"rounds": 8, "clients_per_round": 3, "eval_every": 2},
    "prune": {"method": "auto-paired", "start_round": 2, "interval": 2,
              "max_accuracy_drop": 1.0, "val_clients": 3},
})


def test_automatic_run_killed_with_a_candidate_and_a_reference_resumes_bit_identically(
        tmp_path):
    def rc(out, **flower):
        return {**experiment_to_run_config(AUTO), "out-dir": str(out), "plots": False,
                **flower}

    full = tmp_path / "full"
    run_server(_grid(), rc(full))
    rows = read_rounds(full)
    # round 5: the cut of round 4 is being trained beside the kept one and the reference
    assert rows[3]["auto"]["judged"]["decision"] == "accept"
    assert rows[4]["auto"]["status"] == "trial"
    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        run_server(_grid(), rc(cut), on_round=stop_after(5))

    run_server(_grid(), rc(cut, resume=True))

    assert fingerprint(cut) == fingerprint(full)


def test_resume_refuses_a_finished_run_another_config_and_an_empty_dir(uninterrupted, tmp_path):
    with pytest.raises(ConfigError, match="finished run"):
        run_server(_grid(), _run_config(uninterrupted, resume=True))
    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        run_server(_grid(), _run_config(cut), on_round=stop_after(2))
    with pytest.raises(ConfigError, match=r"differs from .*config\.json \(section prune\)"):
        run_server(_grid(), {**_run_config(cut, resume=True), "prune.k": 1.5})
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        run_server(_grid(), _run_config(tmp_path / "empty", resume=True))
    with pytest.raises(ConfigError, match="not empty"):  # without resume: never overwritten
        run_server(_grid(), _run_config(cut))


# ----------------------------------------------------------------------------- Ray


def _serverapp_pids(lf) -> list[int]:
    """The marked processes running the ServerApp (``flwr-simulation`` in simulation)."""
    out = []
    for pid in lf.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(Path(part.decode(errors="replace")).name in ("flwr-simulation", "flwr-serverapp")
               for part in cmd[:2]):
            out.append(pid)
    return out


@pytest.mark.slow
def test_simulation_run_killed_mid_run_resumes_to_the_uninterrupted_result(uninterrupted,
                                                                           tmp_path):
    pytest.importorskip("ray")
    from flower_harness import LocalFlower

    out = tmp_path / "flower"
    federation = {"num-supernodes": CFG.data.num_clients, "client-resources-num-cpus": 1}
    with LocalFlower(tmp_path / "first") as lf:
        lf.start_superlink(simulation=True)
        lf.submit(_run_config(out, **{"round-timeout": 120.0}), federation_config=federation)
        deadline = time.monotonic() + 240
        while not ((out / "rounds.jsonl").exists() and read_rounds(out)):
            assert time.monotonic() < deadline, lf.log_tail("flwr-run", 80)
            time.sleep(0.1)
        pids = _serverapp_pids(lf)
        assert pids, "no ServerApp process found among the run's processes"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        assert not _serverapp_pids(lf)
    done = len(read_rounds(out))
    assert 1 <= done < CFG.fed.rounds and not (out / "summary.json").exists()

    with LocalFlower(tmp_path / "second") as lf:
        lf.start_superlink(simulation=True)
        lf.run(_run_config(out, resume=True, **{"round-timeout": 120.0}),
               federation_config=federation, timeout=300)

    assert [r["round"] for r in read_rounds(out)] == list(range(1, CFG.fed.rounds + 1))
    assert fingerprint(out) == fingerprint(uninterrupted)  # threads = 1: bit for bit


def test_a_run_of_one_engine_is_not_resumed_by_the_other(uninterrupted, tmp_path, capsys):
    from fedprune.cli import main
    from fedprune.federated import run_simulation
    from fedprune.rundir import RunDir

    flower_run = tmp_path / "flower"
    shutil.copytree(uninterrupted, flower_run)
    RunDir(flower_run).summary_file.unlink()  # unfinished: resumable
    assert main(["run", "--resume", str(flower_run), "--no-progress"]) == 2
    assert "run of the Flower app" in capsys.readouterr().err

    loop_run = tmp_path / "loop"
    run_simulation(CFG, loop_run)
    RunDir(loop_run).summary_file.unlink()
    with pytest.raises(ConfigError, match="in-process loop"):
        run_server(_grid(), _run_config(loop_run, resume=True))
