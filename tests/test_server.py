"""The server of a round (:class:`fedprune.federated.PruningServer`) driven by hand.

The engines' tests run it through the in-process loop and the Flower strategy; here a
minimal driver checks the round's contract on its own: a skipped round changes nothing, the
architecture version follows the cuts, and a restored server continues where the
checkpointed one was.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fedprune import seeds
from fedprune.config import from_dict
from fedprune.data import load_federated
from fedprune.federated import PruningServer, train_local
from fedprune.metrics import read_rounds
from fedprune.models import new_model
from fedprune.rundir import RunDir

CFG = from_dict({
    "threads": 1, "data": {"num_clients": 4}, "model": {"widths": [8, 16]},
    "train": {"local_epochs": 1},
    "fed": {"rounds": 4, "clients_per_round": 3, "eval_every": 2, "min_replies": 2},
    "prune": {"method": "boundary", "start_round": 1, "max_prune_round": 4, "interval": 1,
              "k": 0.5, "max_fraction": 0.4},
})


def _server():
    data = load_federated(CFG.data, CFG.seed)
    c, h, _ = data.input_shape
    model, spec = new_model(CFG.model.name, num_classes=data.num_classes, in_channels=c,
                            image_size=h, widths=CFG.model.widths, seed=CFG.seed)
    server = PruningServer(CFG, model, spec, num_clients=len(data.clients),
                           has_validation=[False] * len(data.clients), test_x=data.test_x,
                           test_y=data.test_y)
    return server, data


def _round(server, data, rnd, poison=0):
    """One round trained client by client; the first ``poison`` replies are NaN."""
    sampled = server.sample(rnd)
    replies = []
    for cid in sampled:
        worker = copy.deepcopy(server.model)
        state, n, _ = train_local(worker, data.clients[cid].x, data.clients[cid].y,
                                  CFG.train, seeds.batch_order(CFG.seed, rnd, cid))
        replies.append((state, n))
    for i in range(poison):
        replies[i] = ({k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                       for k, v in replies[i][0].items()}, replies[i][1])
    server.aggregate(rnd, replies)
    step = server.after_aggregate(rnd, validate=lambda *a: (math.nan, 0))
    return step, server.finish_round(rnd, bytes_down=server.bytes_down(len(sampled)),
                                     bytes_up=0)


def test_a_skipped_round_averages_nothing_and_prunes_nothing():
    server, data = _server()
    before = {k: v.clone() for k, v in server.model.state_dict().items()}
    params = sum(p.numel() for p in server.model.parameters())

    step, rec = _round(server, data, 1, poison=2)  # 1 valid reply < fed.min_replies = 2

    assert rec.extra["skipped"] and rec.clients == 0 and not rec.pruned
    assert [r["index"] for r in rec.extra["rejected"]] == [0, 1]
    assert not step.changed and server.arch_version == 0
    assert sum(p.numel() for p in server.model.parameters()) == params  # a pruning round
    for k, v in server.model.state_dict().items():
        assert torch.equal(v, before[k]), k

    step, rec = _round(server, data, 2)
    assert not rec.extra["skipped"] and rec.clients == 3
    assert step.changed and rec.pruned and server.arch_version == 1


def test_a_restored_server_continues_where_the_checkpoint_was(tmp_path):
    server, data = _server()
    server.begin(RunDir(tmp_path).open(CFG, resume=False, engine="in-process"))
    for rnd in (1, 2):
        _round(server, data, rnd)
    with pytest.raises(ValueError, match="in use by another fedprune process"):
        RunDir(tmp_path).open(CFG, resume=True, engine="in-process")  # one writer at a time
    server.close()  # what the engines do when the run ends
    restored, _ = _server()
    restored.begin(RunDir(tmp_path).open(CFG, resume=True, engine="in-process"))

    assert restored.rounds_done == 2 and restored.arch_version == server.arch_version
    assert restored.spec.to_json() == server.spec.to_json()
    for k, v in server.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[k], v), k
    assert restored.sample(3) == server.sample(3)  # the sampling stream's state came back
    assert (restored.bytes_total, restored.accuracy) == (server.bytes_total, server.accuracy)
    assert [r.round for r in restored.records] == [r["round"] for r in read_rounds(tmp_path)]


def test_a_candidate_left_at_a_skipped_last_round_is_judged_all_the_same():
    from fedprune.federated.client import evaluate

    cfg = from_dict({**CFG.to_dict(), "data": {**CFG.to_dict()["data"], "val_fraction": 0.2},
                     "prune": {**CFG.to_dict()["prune"], "start_round": 3},
                     "budget": {"params_fraction": 0.3, "guard_recovery_rounds": 2,
                                "guard_tolerance": 1.0, "guard_clients": 3}})
    data = load_federated(cfg.data, cfg.seed)
    c, h, _ = data.input_shape
    model, spec = new_model(cfg.model.name, num_classes=data.num_classes, in_channels=c,
                            image_size=h, widths=cfg.model.widths, seed=cfg.seed)
    server = PruningServer(cfg, model, spec, num_clients=len(data.clients),
                           has_validation=[cl.val_y is not None and len(cl.val_y) > 0
                                           for cl in data.clients],
                           test_x=data.test_x, test_y=data.test_y)

    def validate(net, _spec, ids):
        accs = [(evaluate(net, data.clients[i].val_x, data.clients[i].val_y)[0],
                 len(data.clients[i].val_y)) for i in ids]
        total = sum(n for _, n in accs)
        return sum(a * n for a, n in accs) / total, total

    records = []
    for rnd in range(1, 5):
        sampled = server.sample(rnd)
        replies = []
        for cid in sampled:
            state, n, _ = train_local(copy.deepcopy(server.model), data.clients[cid].x,
                                      data.clients[cid].y, cfg.train,
                                      seeds.batch_order(cfg.seed, rnd, cid))
            replies.append((state, n))
        if rnd == 4:  # the last round: every reply NaN, nothing aggregated
            replies = [({k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                         for k, v in s.items()}, n) for s, n in replies]
        server.aggregate(rnd, replies)
        server.after_aggregate(rnd, validate)
        records.append(server.finish_round(rnd, bytes_down=0, bytes_up=0))

    assert records[2].extra["budget"]["pending"]  # the cut of round 3 awaits its verdict
    last = records[3]
    assert last.extra["skipped"] and not last.extra["budget"]["pending"]
    assert [e["decision"] for e in last.extra["budget"]["guard"]] == ["accept"]
    assert server.summary()["budget_status"] in ("met", "deadline")
