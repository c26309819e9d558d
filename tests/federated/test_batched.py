"""Batched local training equals the one-client-at-a-time path (up to float rounding)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fedprune.config import TrainConfig, from_dict
from fedprune.data.transform import PixelTransform
from fedprune.federated.batched import BatchedTrainer, ClientJob, batched_support
from fedprune.federated.client import PerClientTrainer, train_local
from fedprune.federated.loop import make_trainer, run_simulation
from fedprune.models import new_model
from fedprune.pruning import RatioRule, prune_model

MODELS = {
    "cnn_femnist": {"num_classes": 10, "in_channels": 1, "image_size": 28, "widths": [4, 6]},
    "cnn_celeba": {"num_classes": 2, "in_channels": 3, "image_size": 32, "widths": [3, 4, 2, 5]},
}
OPTIMIZERS = [
    {"optimizer": "adam", "lr": 3e-3},
    {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0},
    {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
]


def _clients(model: nn.Module, sizes: list[int], num_classes: int, seed: int = 0,
             dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    c, h, w = model.input_shape
    out = []
    for n in sizes:
        if dtype == torch.uint8:
            x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
        else:
            x = torch.randn(n, c, h, w, generator=g)
        out.append((x, torch.randint(0, num_classes, (n,), generator=g)))
    return out


def _per_client(model, state, clients, cfg, transform=None):
    out = []
    for i, (x, y) in enumerate(clients):
        worker = copy.deepcopy(model)
        worker.load_state_dict(state)
        out.append(train_local(worker, x, y, cfg, torch.Generator().manual_seed(100 + i),
                               transform=transform))
    return out


def _batched(model, state, clients, cfg, memory_mb=1024, transform=None):
    jobs = [ClientJob(x, y, torch.Generator().manual_seed(100 + i), transform)
            for i, (x, y) in enumerate(clients)]
    return BatchedTrainer(model, cfg, memory_mb=memory_mb).train(state, jobs)


def _assert_same(ref, got, atol=2e-5):
    assert len(ref) == len(got)
    for (s1, n1, m1), (s2, n2, m2) in zip(ref, got, strict=True):
        assert n1 == n2
        assert s1.keys() == s2.keys()
        for k in s1:
            assert s1[k].shape == s2[k].shape, k
            torch.testing.assert_close(s2[k], s1[k], atol=atol, rtol=1e-4)
        assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o['optimizer']}-{o['momentum']}"
                         if "momentum" in o else o["optimizer"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_equals_per_client_training(name, opt):
    kw = MODELS[name]
    model, _ = new_model(name, seed=3, **kw)
    # uneven sizes: partial last batches, a client smaller than one batch, different step counts
    clients = _clients(model, [5, 8, 13, 21, 3, 16], kw["num_classes"])
    cfg = TrainConfig(local_epochs=2, batch_size=8, **opt)
    state = copy.deepcopy(model.state_dict())
    ref = _per_client(model, state, clients, cfg)
    got = _batched(model, state, clients, cfg)
    _assert_same(ref, got)
    # the clients really trained: every one moved away from the global weights
    for s, _, _ in got:
        assert any(not torch.equal(s[k], state[k]) for k in s)


def test_chunks_and_uint8_inputs_give_the_same_result():
    kw = MODELS["cnn_femnist"]
    model, _ = new_model("cnn_femnist", seed=1, **kw)
    clients = _clients(model, [9, 4, 17, 12, 30], kw["num_classes"], dtype=torch.uint8)
    tf = PixelTransform.of([0.4], [0.3])
    cfg = TrainConfig(local_epochs=3, batch_size=4)
    state = copy.deepcopy(model.state_dict())
    ref = _per_client(model, state, clients, cfg, transform=tf)
    trainer = BatchedTrainer(model, cfg, memory_mb=0)  # forces one client per chunk
    assert trainer.clients_per_chunk == 1
    _assert_same(ref, _batched(model, state, clients, cfg, memory_mb=0, transform=tf))
    got = _batched(model, state, clients, cfg, transform=tf)
    _assert_same(ref, got)
    # the transform passed with the jobs is the one applied: without it, other weights
    unscaled = _batched(model, state, clients, cfg)
    assert not torch.equal(unscaled[0][0]["features.0.weight"], got[0][0]["features.0.weight"])


def test_a_pruned_model_trains_batched_like_per_client():
    kw = MODELS["cnn_femnist"]
    model, _ = new_model("cnn_femnist", seed=2, **kw)
    ex = torch.zeros(1, *model.input_shape)
    prune_model(model, ex, RatioRule(0.5))
    assert (model.features[0].out_channels, model.features[3].out_channels) == (2, 3)
    clients = _clients(model, [7, 11, 20], kw["num_classes"])
    cfg = TrainConfig(local_epochs=2, batch_size=4)
    state = copy.deepcopy(model.state_dict())
    _assert_same(_per_client(model, state, clients, cfg), _batched(model, state, clients, cfg))


def test_relu_before_maxpool_is_reordered_and_values_match_the_model():
    kw = MODELS["cnn_celeba"]
    model, _ = new_model("cnn_celeba", seed=0, **kw)
    x = torch.randn(4, *model.input_shape)
    seq = nn.Sequential(*model.as_sequence())
    torch.testing.assert_close(seq(x), model(x))
    trainer = BatchedTrainer(model, TrainConfig())
    kinds = [type(m).__name__ for m in trainer.ops]
    assert kinds[:3] == ["Conv2d", "MaxPool2d", "ReLU"]
    params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}
    h = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(trainer._forward(params, h, 1)[0], model(x))


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_inception"])
def test_models_with_batchnorm_or_branches_fall_back_to_per_client(name):
    size = 24 if name == "tiny_resnet" else 16
    model, _ = new_model(name, num_classes=10, in_channels=1, image_size=size, widths=None,
                         seed=0)
    assert batched_support(model) is not None
    with pytest.raises(ValueError, match="batched training is not possible"):
        BatchedTrainer(model, TrainConfig())
    auto = from_dict({"model": {"name": name}})
    assert isinstance(make_trainer(model, auto), PerClientTrainer)
    forced = from_dict({"model": {"name": name}, "train": {"engine": "batched"}})
    with pytest.raises(ValueError, match="train.engine = 'batched' cannot train"):
        make_trainer(model, forced)


def test_the_loop_gives_the_same_run_with_either_engine(tmp_path):
    base = {
        "threads": 1, "data": {"num_clients": 6}, "model": {"widths": [6, 10]},
        "train": {"local_epochs": 2},
        "fed": {"rounds": 5, "clients_per_round": 4, "eval_every": 1},
        "prune": {"method": "boundary", "start_round": 2, "max_prune_round": 4, "interval": 1,
                  "k": 0.5, "max_fraction": 0.5},
    }
    runs = {}
    for engine in ("per_client", "batched"):
        cfg = from_dict({**base, "train": {**base["train"], "engine": engine}})
        runs[engine] = run_simulation(cfg, tmp_path / engine)
    a, b = runs["per_client"], runs["batched"]
    assert a.summary["prune_steps"] >= 1  # the architecture changed during the run
    assert [r.widths for r in a.records] == [r.widths for r in b.records]
    assert a.summary["params_final"] == b.summary["params_final"]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], atol=1e-4, rtol=1e-3)
    assert b.summary["accuracy"] == pytest.approx(a.summary["accuracy"], abs=0.01)


def test_a_batch_size_beyond_every_client_pads_steps_only_to_the_largest_client():
    model, _ = new_model("cnn_femnist", **MODELS["cnn_femnist"], seed=0)
    clients = _clients(model, [7, 19, 12], 10)
    state = model.state_dict()
    huge = TrainConfig(local_epochs=2, batch_size=20000, lr=3e-3)
    trainer = BatchedTrainer(model, huge)
    jobs = [ClientJob(x, y, torch.Generator().manual_seed(100 + i))
            for i, (x, y) in enumerate(clients)]
    assert trainer.step_width(jobs) == 19  # not 20000: what the largest client holds
    # ... and the results are those of the per-client path, and of a batch size of 19
    _assert_same(_per_client(model, state, clients, huge), _batched(model, state, clients, huge))
    same = TrainConfig(local_epochs=2, batch_size=19, lr=3e-3)
    _assert_same(_batched(model, state, clients, same), _batched(model, state, clients, huge),
                 atol=0)


def test_ordered_dropout_per_batch_trains_batched_like_per_client():
    from fedprune.federated.client import Dropout, dropout_schedule
    from fedprune.pruning.widths import channel_scores, dropout_masks, keep_of, ladder, sub_record

    model, spec = new_model("cnn_femnist", seed=3, num_classes=10, in_channels=1,
                            image_size=28, widths=[8, 12])
    x = spec.example_input()
    full = {g["root"]: g["channels"] for g in spec.record["groups"]}
    records = [sub_record(spec.record, channel_scores(model, x), w) for w in ladder(full, 4)]
    masks = tuple(dropout_masks(model, spec.record, [keep_of(r) for r in records[:-1]], x))
    clients = _clients(model, [5, 8, 13, 21], 10)
    cfg = TrainConfig(local_epochs=2, batch_size=8, optimizer="adam", lr=3e-3)
    drops = [Dropout(dropout_schedule(0, 1, i, len(y), cfg, len(masks)), masks)
             for i, (_, y) in enumerate(clients)]
    assert any(w >= 0 for d in drops for w in d.schedule)
    state = copy.deepcopy(model.state_dict())
    ref = []
    for i, ((cx, cy), d) in enumerate(zip(clients, drops, strict=True)):
        worker = copy.deepcopy(model)
        worker.load_state_dict(state)
        ref.append(train_local(worker, cx, cy, cfg, torch.Generator().manual_seed(100 + i),
                               dropout=d))
    jobs = [ClientJob(cx, cy, torch.Generator().manual_seed(100 + i), None, d)
            for i, ((cx, cy), d) in enumerate(zip(clients, drops, strict=True))]
    got = BatchedTrainer(model, cfg).train(state, jobs)
    _assert_same(ref, got)
    # and it is not plain training
    plain = _per_client(model, state, clients, cfg)
    assert any(not torch.allclose(p[0][k], r[0][k]) for p, r in zip(plain, ref, strict=True)
               for k in p[0])
