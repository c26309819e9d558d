"""The server of a round (:class:`fedprune.federated.PruningServer`) driven through a fake
transport with hand-made replies (:mod:`fake_transport`).

The engines' tests run it through the in-process and the Flower transports; here the
round's contract on its own: a skipped round changes nothing, the architecture version
follows the cuts, malformed replies are dropped with their reason, the meter's figures are
the transport's plus the clients' compute, and a restored server continues where the
checkpointed one was.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fake_transport import FakeTransport, poisoned, trained

from fedprune.config import from_dict
from fedprune.data import load_federated
from fedprune.federated import PruningServer
from fedprune.federated.client import evaluate
from fedprune.federated.transport import TrainReply
from fedprune.metrics import count_flops, read_rounds
from fedprune.models import new_model
from fedprune.pruners import pool_validation
from fedprune.rundir import RunDir

CFG = from_dict({
    "threads": 1, "data": {"num_clients": 4}, "model": {"widths": [8, 16]},
    "train": {"local_epochs": 1},
    "fed": {"rounds": 4, "clients_per_round": 3, "eval_every": 2, "min_replies": 2},
    "prune": {"method": "boundary", "start_round": 1, "max_prune_round": 4, "interval": 1,
              "k": 0.5, "max_fraction": 0.4},
})


def _server(cfg=CFG):
    data = load_federated(cfg.data, cfg.seed)
    return PruningServer.for_data(cfg, data), data


def test_a_skipped_round_averages_nothing_and_prunes_nothing():
    server, data = _server()
    before = {k: v.clone() for k, v in server.model.state_dict().items()}
    params = sum(p.numel() for p in server.model.parameters())

    # 1 valid reply < fed.min_replies = 2
    rec = server.run_round(1, FakeTransport(poisoned(trained(data, CFG), 2)))

    assert rec.extra["skipped"] and rec.clients == 0 and not rec.pruned
    assert [r["index"] for r in rec.extra["rejected"]] == [0, 1]
    assert server.arch_version == 0
    assert sum(p.numel() for p in server.model.parameters()) == params  # a pruning round
    for k, v in server.model.state_dict().items():
        assert torch.equal(v, before[k]), k

    rec = server.run_round(2, FakeTransport(trained(data, CFG)))
    assert not rec.extra["skipped"] and rec.clients == 3
    assert rec.pruned and server.arch_version == 1


def test_malformed_replies_are_dropped_with_their_reason():
    server, data = _server()
    honest = trained(data, CFG)

    def replies(plan):
        got = honest(plan)
        a, b, _ = got
        stranger = next(c for c in range(4) if c not in plan.clients)
        return [
            a, a,  # a second answer for the same client
            TrainReply(stranger, a.states, a.n),  # a client not asked
            TrainReply(b.client, (None,), b.n),  # no trained copy of the model
            TrainReply(got[2].client, got[2].states, 10**9),  # an implausible sample count
        ]

    rec = server.run_round(1, FakeTransport(replies))

    reasons = [r["reason"] for r in rec.extra["rejected"]]
    assert reasons[:3] == ["a second answer for the same client",
                           "answer for a client not asked this round",
                           "no trained copy of the model"]
    assert "sample count" in reasons[3] and len(reasons) == 4
    assert rec.extra["rejected"][1]["index"] == -1  # not a client of the round
    assert rec.clients == 0 and rec.extra["skipped"]  # one valid reply of min_replies = 2


def test_a_reply_of_another_architecture_version_is_rejected():
    server, data = _server()
    honest = trained(data, CFG)

    def replies(plan):
        return [TrainReply(r.client, r.states, r.n, version=plan.arch_version + (i == 0))
                for i, r in enumerate(honest(plan))]

    rec = server.run_round(1, FakeTransport(replies))
    assert [r["index"] for r in rec.extra["rejected"]] == [0] and rec.clients == 2


def test_the_round_counts_the_transports_bytes_and_the_clients_flops():
    server, data = _server()
    flops = count_flops(server.model, server.example)
    transport = FakeTransport(trained(data, CFG), bytes_per_message=1000)

    rec = server.run_round(1, transport)

    assert (rec.bytes_down, rec.bytes_up) == (3000, 3000)  # what the transport measured
    samples = sum(len(data.clients[c]) for c in transport.plans[0].clients)
    # forward and backward (3 x the forward FLOPs) over every sample of the one epoch
    assert rec.extra["client_flops_train"] == 3 * flops * samples
    assert rec.extra["client_flops_val"] == 0
    assert rec.extra["messages"] == {"train": 3, "validate": 0}
    assert server.client_flops_total == rec.extra["client_flops"]
    assert server.client_flops_total_dense == 3 * flops * samples  # dense: the same model


def test_a_restored_server_continues_where_the_checkpoint_was(tmp_path):
    server, data = _server()
    server.begin(RunDir(tmp_path).open(CFG, resume=False, engine="in-process"))
    for rnd in (1, 2):
        server.run_round(rnd, FakeTransport(trained(data, CFG)))
    with pytest.raises(ValueError, match="in use by another fedprune process"):
        RunDir(tmp_path).open(CFG, resume=True, engine="in-process")  # one writer at a time
    server.close()  # what the engines do when the run ends
    restored, _ = _server()
    restored.begin(RunDir(tmp_path).open(CFG, resume=True, engine="in-process"))

    assert restored.rounds_done == 2 and restored.arch_version == server.arch_version
    assert restored.spec.to_json() == server.spec.to_json()
    for k, v in server.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[k], v), k
    assert [r.round for r in restored.records] == [r["round"] for r in read_rounds(tmp_path)]
    server.run_dir = None  # the original goes on beside it, writing nothing
    a, b = FakeTransport(trained(data, CFG)), FakeTransport(trained(data, CFG))
    restored.run_round(3, a)
    server.run_round(3, b)
    assert a.plans[0].clients == b.plans[0].clients  # the sampling stream's state came back
    assert (restored.bytes_total, restored.accuracy) == (server.bytes_total, server.accuracy)
    assert restored.client_flops_total == server.client_flops_total


def test_a_candidate_left_at_a_skipped_last_round_is_judged_all_the_same():
    cfg = from_dict({**CFG.to_dict(), "data": {**CFG.to_dict()["data"], "val_fraction": 0.2},
                     "prune": {**CFG.to_dict()["prune"], "start_round": 3},
                     "budget": {"params_fraction": 0.3, "guard_recovery_rounds": 2,
                                "guard_tolerance": 1.0, "guard_clients": 3}})
    server, data = _server(cfg=cfg)

    def validate(net, _spec, ids):
        return pool_validation(
            (i, *evaluate(net, data.clients[i].val_x, data.clients[i].val_y),
             len(data.clients[i].val_y)) for i in ids)

    records = []
    for rnd in range(1, 5):
        replies = trained(data, cfg)
        if rnd == 4:  # the last round: every reply NaN, nothing aggregated
            replies = poisoned(replies, cfg.fed.clients_per_round)
        records.append(server.run_round(rnd, FakeTransport(replies, validate)))

    assert records[2].extra["budget"]["pending"]  # the cut of round 3 awaits its verdict
    last = records[3]
    assert last.extra["skipped"] and not last.extra["budget"]["pending"]
    assert [e["decision"] for e in last.extra["budget"]["guard"]] == ["accept"]
    assert last.extra["messages"]["validate"] == 3  # the guard's queries, counted
    assert last.extra["client_flops_val"] > 0
    assert server.summary()["budget_status"] in ("met", "deadline")


def test_the_sizes_must_describe_the_same_clients():
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=[4, 8], seed=0)
    with pytest.raises(ValueError, match="3 training sizes but 2 validation sizes"):
        PruningServer(CFG, model, spec, train_sizes=[5, 5, 5], val_sizes=[1, 1],
                      test_x=torch.zeros(1, 1, 28, 28), test_y=torch.zeros(1).long())
    assert math.isfinite(count_flops(model, spec.example_input()))


def test_where_replies_carry_versions_one_without_a_version_is_rejected():
    from fedprune.federated.averaging import average_round

    model, _ = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                         widths=[4, 8], seed=0)
    state = model.state_dict()
    replies = [TrainReply(0, (state,), 5, version=None), TrainReply(1, (state,), 5, version=3)]
    checked = average_round(1, CFG.fed, [model], replies, arch_version=3, sizes=[10, 10],
                            check_versions=True)
    assert [(r.index, r.reason) for r in checked.rejections] == [
        (0, "architecture version None, expected 3")]
    # in process nothing can be stale: the versions are not looked at
    unchecked = average_round(1, CFG.fed, [model], replies, arch_version=3, sizes=[10, 10])
    assert unchecked.rejections == [] and unchecked.clients == 2


def _answers(data, model, spec, clients, variants, lie=None):
    """Every client's honest answers for ``model`` and its sub-models; ``lie(c, figures,
    n)`` may replace a client's ``(figures, n)``."""
    from fedprune.pruning.widths import variant_models

    nets = [model, *variant_models(model, spec, variants)]
    answers, per = [], []
    for c in clients:
        cd = data.clients[c]
        figures, n = [evaluate(net, cd.val_x, cd.val_y) for net in nets], len(cd.val_y)
        if lie is not None:
            figures, n = lie(c, figures, n)
        answers.append((c, *figures[0], n))
        per.append(figures[1:])
    return pool_validation(answers, per if variants else None)


@pytest.mark.parametrize("lie, reason", [
    (lambda c, f, n: ([(1.0, 0.0)] * len(f), 10 ** 6), "reports 1000000 validation samples"),
    (lambda c, f, n: ([(1.5, 0.0)] * len(f), n), "accuracy 1.5 of the model is not in [0, 1]"),
    (lambda c, f, n: ([f[0], (0.5 + 0.1 / n, 0.1)], n), "is not a count of"),
    (lambda c, f, n: ([f[0], (f[1][0], math.nan)], n), "loss nan of sub-model 0"),
])
def test_a_validation_answer_the_server_knows_cannot_be_true_is_left_out(lie, reason, caplog):
    from fedprune.federated.server import _Tally
    from fedprune.federated.transport import Queried
    from fedprune.pruning.widths import keep_of, ladder, sub_record

    cfg = from_dict({**CFG.to_dict(), "data": {"num_clients": 4, "val_fraction": 0.3}})
    server, data = _server(cfg)
    model, spec = server.model, server.spec
    full = {g["root"]: g["channels"] for g in spec.record["groups"]}
    half = ladder(full, 4)[0]
    scores = {g["root"]: np.arange(g["channels"], 0, -1, dtype=float)
              for g in spec.record["groups"]}
    variants = [keep_of(sub_record(spec.record, scores, half))]
    ids = [0, 1, 2, 3]
    honest = _answers(data, model, spec, [0, 1, 3], variants)

    class Lying(FakeTransport):
        def validate(self, model, spec, clients, experiment, payload_dtype, variants=(),
                     calibrate=0):
            v = _answers(data, model, spec, clients, variants,
                         lambda c, f, n: lie(c, f, n) if c == 2 else (f, n))
            return Queried(v, list(clients), 0, 0)

    validate = server._validator(Lying(trained(data, cfg)), _Tally(0, 0, 0))
    with caplog.at_level("WARNING", logger="fedprune.federated.server"):
        got = validate(model, spec, ids, variants)
    assert "the answer of client 2 left out" in caplog.text and reason in caplog.text
    # what is left is the honest clients' answers, pooled as they would be alone
    assert got.clients == honest.clients and got.samples == honest.samples
    assert got.accuracy == pytest.approx(honest.accuracy)
    assert got.loss == pytest.approx(honest.loss)
    assert got.variants[0].clients == honest.variants[0].clients
    # an honest query comes back as it was sent
    plain = server._validator(FakeTransport(trained(data, cfg), lambda m, s, c: _answers(
        data, m, s, c, ())), _Tally(0, 0, 0))(model, spec, ids)
    assert plain == _answers(data, model, spec, ids, ())
