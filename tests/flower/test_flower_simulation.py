"""Flower's simulation engine (``flwr run`` on a ``--simulation`` SuperLink, Ray backend, one
virtual SuperNode per partition) against the in-process loop: same seed, same data, same
architecture sequence, same accuracy within noise.

Both paths sample the same partitions (``fedprune.seeds.client_sampling(seed)``), shuffle each
client's batches with the same generator (``fedprune.seeds.batch_order(seed, round, partition)``), build
the same initial weights and average in partition order, so with ``threads = 1`` the numbers
come out identical on one machine; the accuracy tolerance only absorbs float differences
between torch builds/CPUs.
"""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from flower_harness import FlowerProcessError, LocalFlower

from fedprune.config import from_dict
from fedprune.federated import run_simulation
from fedprune.flower.run_config import experiment_to_run_config
from fedprune.metrics import read_rounds

pytestmark = pytest.mark.slow

ACCURACY_TOLERANCE = 0.02  # observed: 0.0 (bit-identical) on the development machine

CFG = from_dict({
    "threads": 1,
    "data": {"num_clients": 4},
    "model": {"widths": [16, 32]},
    # per_client: the loop trains clients one by one, as the ClientApps do, so the two runs
    # are bit-identical; the batched engine agrees only to float rounding (test_batched.py)
    "train": {"local_epochs": 2, "lr": 0.02, "engine": "per_client"},
    "fed": {"rounds": 5, "clients_per_round": 3, "eval_every": 1},
    "prune": {"method": "boundary", "start_round": 2, "max_prune_round": 5, "interval": 1,
              "k": 0.5, "max_fraction": 0.3},
})


@pytest.fixture(scope="module")
def simulation_link(tmp_path_factory):
    lf = LocalFlower(tmp_path_factory.mktemp("flwr"))
    try:
        lf.start_superlink(simulation=True)
        yield lf
    finally:
        lf.close()
        assert lf.pids() == [], "Flower processes left running"


def _snake_case(run_config, keys):
    """``fedprune run --set`` spellings for ``keys``: Flower must pass them to the app."""
    out = dict(run_config)
    for key in keys:
        out[key.replace("-", "_")] = out.pop(key)
    return out


def test_simulation_engine_matches_the_in_process_loop(tmp_path, simulation_link):
    loop = run_simulation(CFG, tmp_path / "loop")

    out = tmp_path / "flower"
    rc = _snake_case({**experiment_to_run_config(CFG), "out-dir": str(out),
                      "round-timeout": 300.0},
                     ["fed.clients-per-round", "prune.start-round", "out-dir"])
    simulation_link.run(rc, federation_config={"num-supernodes": CFG.data.num_clients,
                                               "backend": "ray", "client-resources-num-cpus": 1},
                        timeout=400)

    rows = read_rounds(out)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["widths"] for r in rows] == [r.widths for r in loop.records]  # architectures
    assert [r["params"] for r in rows] == [r.params for r in loop.records]
    assert [r["pruned"] for r in rows] == [r.pruned for r in loop.records]
    assert sum(r.pruned for r in loop.records) >= 2
    assert [r["clients"] for r in rows] == [3] * CFG.fed.rounds
    assert [r["bytes_cumulative"] for r in rows] == [r.bytes_cumulative for r in loop.records]
    diffs = [abs(r["accuracy"] - l.accuracy) for r, l in zip(rows, loop.records, strict=True)]
    assert max(diffs) <= ACCURACY_TOLERANCE, diffs
    assert abs(summary["accuracy"] - loop.summary["accuracy"]) <= ACCURACY_TOLERANCE
    assert loop.summary["accuracy"] > 0.3  # a model that learnt something, not chance
    for key in ("params_final", "flops_final", "widths_final", "prune_steps", "bytes_total",
                "bytes_total_dense"):
        assert summary[key] == loop.summary[key], key
    assert summary["status"] == "completed"
    for png in ("accuracy.png", "params.png", "bytes.png"):  # the plots of `fedprune run`
        assert (out / png).stat().st_size > 1000, png


def test_num_supernodes_other_than_data_num_clients_fails_at_once(tmp_path, simulation_link):
    # 3 virtual SuperNodes for an experiment split over 4 partitions: the ServerApp stops
    # before round 1 naming both settings (it used to wait node-wait-timeout, 300 s, and then
    # report a completed run at chance accuracy)
    rc = {**experiment_to_run_config(CFG), "out-dir": str(tmp_path / "out"),
          "node-wait-timeout": 300.0}
    t0 = time.monotonic()
    with pytest.raises(FlowerProcessError) as err:
        simulation_link.run(rc, federation_config={"num-supernodes": 3,
                                                   "client-resources-num-cpus": 1}, timeout=200)
    assert time.monotonic() - t0 < 150  # Ray's start-up, not the 300 s wait
    text = str(err.value)
    assert "finished:failed" in text
    assert "num-supernodes = 3" in text and "data.num-clients = 4" in text
    assert not (tmp_path / "out" / "rounds.jsonl").exists()
