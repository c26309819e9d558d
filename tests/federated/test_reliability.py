"""Bad client updates are rejected and logged; malformed inputs get clean, documented errors."""

import dataclasses
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nets import ResidualNet

import fedprune.federated.loop as loop_mod
from fedprune.config import ConfigError, from_dict
from fedprune.federated import run_simulation
from fedprune.federated.aggregate import screen_replies
from fedprune.models import ModelSpec
from fedprune.pruning import rebuild

REF = {"w": torch.zeros(2, 3), "b": torch.zeros(3), "n": torch.tensor(0)}


def _ok():
    return {"w": torch.ones(2, 3), "b": torch.ones(3), "n": torch.tensor(1)}


@pytest.mark.parametrize(
    "reply, reason",
    [
        (({**_ok(), "w": torch.full((2, 3), math.nan)}, 5), "NaN or Inf"),
        (({**_ok(), "b": torch.tensor([1.0, math.inf, 0.0])}, 5), "NaN or Inf"),
        (({**_ok(), "w": torch.ones(3, 2)}, 5), "shape"),
        (({"w": torch.ones(2, 3), "b": torch.ones(3)}, 5), "keys differ"),
        ((_ok(), 0), "positive integer"),
        ((_ok(), 10**9), "training samples its client holds"),
        ((_ok(), 2.5), "positive integer"),
        (({**_ok(), "w": [[1.0]]}, 5), "not a tensor"),
    ],
)
def test_each_kind_of_bad_reply_is_rejected_with_its_reason(reply, reason):
    accepted, rejected = screen_replies([(_ok(), 3), reply], REF, max_samples=1000)
    assert len(accepted) == 1 and accepted[0][1] == 3
    assert [r.index for r in rejected] == [1] and reason in rejected[0].reason


def test_a_sample_count_is_bounded_by_the_clients_own_partition():
    # client 0 holds 107 samples and claims 228, the largest partition's: rejected (its
    # weight would double); client 1 holding 228 may say so, and fewer is no gain
    from fedprune.federated.averaging import average_round
    from fedprune.federated.transport import TrainReply
    from fedprune.models import new_model

    model, _ = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                         widths=[4, 8], seed=0)
    state = model.state_dict()
    fed = from_dict({}).fed
    replies = [TrainReply(0, (state,), 228), TrainReply(1, (state,), 228),
               TrainReply(2, (state,), 50)]
    out = average_round(1, fed, [model], replies, arch_version=0, sizes=[107, 228, 60])
    assert [(r.index, r.reason) for r in out.rejections] == [
        (0, "sample count 228 exceeds the 107 training samples its client holds")]
    assert out.clients == 2


def test_stale_architecture_version_is_rejected():
    accepted, rejected = screen_replies([(_ok(), 3), (_ok(), 4)], REF, versions=[2, 1],
                                        arch_version=2)
    assert [n for _, n in accepted] == [3]
    assert "architecture version 1, expected 2" in rejected[0].reason


def _tiny(**fed):
    return from_dict({
        "threads": 1, "data": {"num_clients": 6},
        "model": {"widths": [4, 8]}, "train": {"local_epochs": 1},
        "fed": {"rounds": 3, "clients_per_round": 3, "eval_every": 3, **fed},
        "prune": {"enabled": False},
    })


def _tamper_replies(monkeypatch, change):
    """Make every round's replies pass through ``change(list of (state, n, metrics))``."""
    real_make = loop_mod.make_trainer

    def make_trainer(model, cfg, device=None):
        trainer = real_make(model, cfg, device)
        real_train = trainer.train
        trainer.train = lambda state, jobs: change(real_train(state, jobs))
        return trainer

    monkeypatch.setattr(loop_mod, "make_trainer", make_trainer)


@pytest.mark.parametrize("engine", ["batched", "per_client"])
def test_loop_drops_a_poisoned_client_and_goes_on(monkeypatch, tmp_path, engine):
    def poison_first(replies):  # the first reply of every round is NaN
        state, n, m = replies[0]
        state = {k: v.float().fill_(math.nan) if v.is_floating_point() else v
                 for k, v in state.items()}
        return [(state, n, m), *replies[1:]]

    _tamper_replies(monkeypatch, poison_first)
    cfg = _tiny()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, engine=engine))
    res = run_simulation(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rows] == [2, 2, 2]
    assert all(len(r["rejected"]) == 1 and "NaN" in r["rejected"][0]["reason"] for r in rows)
    assert all(torch.isfinite(v).all() for v in res.model.state_dict().values())


def test_round_is_skipped_when_too_few_valid_replies(monkeypatch, tmp_path):
    _tamper_replies(monkeypatch, lambda replies: [(s, -1, m) for s, _, m in replies])
    res = run_simulation(_tiny(min_replies=2), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [True, True, True]
    assert [r["clients"] for r in rows] == [0, 0, 0]
    assert res.summary["rounds"] == 3
    assert res.summary["params_final"] == res.summary["params_initial"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids,
                                                               max_size=4),
    max_leaves=12,
)
sections = st.sampled_from(["seed", "threads", "data", "model", "train", "fed", "prune",
                            "budget", "prune.k", "fed.rounds", "model.widths", "train.lr",
                            "budget.params_fraction", "bogus"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(sections, json_values, max_size=4))
def test_config_parser_raises_only_config_errors(values):
    nested: dict = {}
    for key, value in values.items():
        head, _, tail = key.partition(".")
        if tail:
            node = nested.setdefault(head, {})
            if isinstance(node, dict):
                node[tail] = value
        else:
            nested[head] = value
    try:
        from_dict(nested)
    except ConfigError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=60), json_values.map(json.dumps)))
def test_model_spec_parser_raises_only_value_errors(text):
    try:
        ModelSpec.from_json(text)
    except ValueError:
        pass


@settings(max_examples=80, deadline=None)
@given(json_values)
def test_record_parser_raises_only_value_errors(record):
    x = torch.zeros(1, 1, 8, 8)
    try:
        rebuild(ResidualNet(), record, x)
    except ValueError:
        pass


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 1), st.sampled_from(["root", "members", "channels", "kept", "extra"]),
       json_values)
def test_mutated_valid_records_raise_only_value_errors(group, field, value):
    from fedprune.pruning import initial_record

    x = torch.zeros(1, 1, 8, 8)
    record = initial_record(ResidualNet(), x)
    record["groups"][group][field] = value
    try:
        model = rebuild(ResidualNet(), record, x)
    except ValueError:
        return
    assert model(x).shape == (1, 3)  # accepted records must give a working model
