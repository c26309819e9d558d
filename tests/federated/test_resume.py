"""Checkpoints every round; an interrupted run resumed ends bit-identical to an uninterrupted one."""

import json

import pytest
import torch
from interrupt import Stop, stop_after

from fedprune.config import from_dict
from fedprune.federated import run_simulation
from fedprune.rundir import CHECKPOINT_FILE, load_checkpoint

VOLATILE = {"seconds"}


def _cfg():
    return from_dict({
        "threads": 1, "data": {"num_clients": 6},
        "model": {"widths": [8, 16]}, "train": {"local_epochs": 1},
        "fed": {"rounds": 7, "clients_per_round": 3, "eval_every": 2},
        "prune": {"method": "boundary", "start_round": 2, "max_prune_round": 6, "interval": 1,
                  "k": 0.5, "max_fraction": 0.3},
    })


def _rows(d):
    return [json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stop_at", [1, 4])
def test_resumed_run_equals_uninterrupted_run(tmp_path, stop_at):
    full, cut = tmp_path / "full", tmp_path / "cut"
    ref = run_simulation(_cfg(), full)
    with pytest.raises(Stop):
        run_simulation(_cfg(), cut, on_round=stop_after(stop_at))
    assert len(_rows(cut)) == stop_at
    res = run_simulation(_cfg(), cut, resume=True)
    a, b = ref.model.state_dict(), res.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s_ref = json.loads((full / "summary.json").read_text())
    s_res = json.loads((cut / "summary.json").read_text())
    assert {k: v for k, v in s_ref.items() if k not in VOLATILE} == \
        {k: v for k, v in s_res.items() if k not in VOLATILE}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    assert strip(_rows(full)) == strip(_rows(cut))


def test_checkpoint_loads_without_pickle_and_resume_needs_one(tmp_path):
    run_simulation(_cfg(), tmp_path / "r", on_round=None)
    ckpt = torch.load(tmp_path / "r" / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["round"] == 7 and isinstance(ckpt["spec"], str)
    spec, model, rnd, state = load_checkpoint(tmp_path / "r" / CHECKPOINT_FILE, with_state=True)
    assert rnd == 7 and state["schedule"]["stopped"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="does not exist"):
        run_simulation(_cfg(), tmp_path / "empty", resume=True)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read safely"):
        load_checkpoint(tmp_path / "bad.pt")
