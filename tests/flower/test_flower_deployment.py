"""Flower's deployment engine for real: one ``flower-superlink`` and three ``flower-supernode``
processes on 127.0.0.1 (free ports, private ``FLWR_HOME``), runs submitted with ``flwr run``.

1. three rounds in which the server prunes every round: ``summary.json``/``rounds.jsonl`` are
   written, every round aggregates the three replies, and the architecture sequence is the
   in-process loop's;
2. a SuperNode is killed (SIGKILL) while round 2 is under way: the round closes at its
   timeout with the two other replies, the run completes, and the records say how many replies
   each round aggregated.

Every process started (SuperLink, SuperNodes and what Flower detaches from them: SuperExec,
ServerApp, ClientApps) is shut down by pid at the end, and the test checks that none is left.
"""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("flwr")

from flower_harness import LocalFlower

from fedprune.config import from_dict
from fedprune.federated import run_simulation
from fedprune.flower.run_config import experiment_to_run_config
from fedprune.metrics import read_rounds

pytestmark = pytest.mark.slow

CFG = from_dict({
    "threads": 1,
    "data": {"num_clients": 3},
    "model": {"widths": [4, 8]},
    "train": {"local_epochs": 1, "engine": "per_client"},  # ClientApps train one by one
    "fed": {"rounds": 3, "clients_per_round": 3, "eval_every": 1},
    "prune": {"method": "boundary", "start_round": 1, "max_prune_round": 3, "interval": 1,
              "k": 0.5, "max_fraction": 0.5},
})
RUN_TIMEOUT = 300  # seconds for one `flwr run`, SuperLink start-up excluded


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    work = tmp_path_factory.mktemp("flower-deployment")
    lf = LocalFlower(work)
    try:
        lf.start_superlink()
        for pid in range(3):
            lf.start_supernode(pid, 3)
        yield lf
    finally:
        lf.close()
        assert lf.pids() == [], "Flower processes left running"


def _run_config(out_dir, round_timeout):
    return {**experiment_to_run_config(CFG), "out-dir": str(out_dir),
            "round-timeout": float(round_timeout), "node-wait-timeout": 120.0}


def test_three_supernodes_three_rounds_with_pruning(deployment, tmp_path):
    out = tmp_path / "run"
    deployment.run(_run_config(out, 120), timeout=RUN_TIMEOUT)

    summary = json.loads((out / "summary.json").read_text())
    rows = read_rounds(out)
    assert summary["rounds"] == 3 and [r["round"] for r in rows] == [1, 2, 3]
    assert summary["replies_per_round"] == [3, 3, 3] and [r["clients"] for r in rows] == [3] * 3
    assert summary["prune_steps"] >= 1 and any(r["pruned"] for r in rows)
    assert summary["params_final"] < summary["params_initial"]
    assert summary["arch_version"] == summary["prune_steps"]
    assert summary["widths_final"] == rows[-1]["widths"]
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert summary["failures_total"] == summary["dropped_total"] == 0
    assert json.loads((out / "config.json").read_text()) == {**CFG.to_dict(), "engine": "flower"}
    assert (out / "checkpoint.pt").is_file()

    loop = run_simulation(CFG)  # same seed, same data: the same architectures, round by round
    assert [r["widths"] for r in rows] == [r.widths for r in loop.records]
    assert [r["params"] for r in rows] == [r.params for r in loop.records]


def test_a_supernode_killed_mid_round_does_not_stop_the_run(deployment, tmp_path):
    out = tmp_path / "run"
    proc = deployment.submit(_run_config(out, 30))
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (out / "rounds.jsonl").is_file() or not read_rounds(out):
            assert proc.poll() is None, deployment.log_tail("flwr-run", 80)
            assert time.monotonic() < deadline, "round 1 did not finish"
            time.sleep(0.2)
        # round 1 is recorded, round 2 is being sent out: wait until supernode-2 has its
        # round-2 message (at most 10 s), then kill it mid-round like a crash
        log = deployment.logs["supernode-2"]
        until = time.monotonic() + 10
        while time.monotonic() < until and "ROUND 2]" not in log.read_text(errors="replace"):
            time.sleep(0.1)
        deployment.kill("supernode-2")
        proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, deployment.log_tail("flwr-run", 80)

    summary = json.loads((out / "summary.json").read_text())
    rows = read_rounds(out)
    assert summary["rounds"] == 3 and [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["clients"] == 3
    assert [r["clients"] for r in rows[1:]] == [2, 2]  # the dead node's reply is missing
    assert rows[1]["failures"] >= 1 and summary["failures_total"] >= 2
    assert summary["replies_per_round"] == [r["clients"] for r in rows]
    assert summary["prune_steps"] >= 1 and summary["params_final"] < summary["params_initial"]
