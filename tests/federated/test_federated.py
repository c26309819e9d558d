"""FedAvg, client training, the round loop, records and checkpoints."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedprune.config import from_dict
from fedprune.data import ClientData, FederatedData
from fedprune.federated import (
    AggregationError,
    fedavg,
    load_checkpoint,
    run_simulation,
    train_local,
)
from fedprune.metrics import count_flops, payload_bytes, read_rounds
from fedprune.models import ModelSpec, build, create_model, list_models, model_defaults, new_model
from fedprune.pruning import BoundaryRule, prune_model


def test_fedavg_weights_by_sample_count():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(2)}
    b = {"w": torch.tensor([4.0, 8.0]), "n": torch.tensor(5)}
    out = fedavg([(a, 1), (b, 2)])
    # (1*[1,2] + 2*[4,8]) / 3 = [3, 6]; integer buffer: (2 + 2*5)/3 = 4
    torch.testing.assert_close(out["w"], torch.tensor([3.0, 6.0]))
    assert out["n"].item() == 4 and out["n"].dtype == torch.int64


@pytest.mark.parametrize(
    "replies, message",
    [
        ([], "no client replies"),
        ([({"w": torch.zeros(2)}, 1), ({"v": torch.zeros(2)}, 1)], "keys differ"),
        ([({"w": torch.zeros(2)}, 1), ({"w": torch.zeros(3)}, 1)], "shape"),
        ([({"w": torch.zeros(2)}, 0)], "positive integer"),
    ],
)
def test_fedavg_rejects_disagreeing_replies(replies, message):
    with pytest.raises(AggregationError, match=message):
        fedavg(replies)


def _tiny_cfg(**over):
    base = {
        "data": {"num_clients": 6},
        "model": {"name": "cnn_femnist", "widths": [8, 16]},
        "train": {"local_epochs": 1, "batch_size": 16},
        "fed": {"rounds": 6, "clients_per_round": 3, "eval_every": 3},
        "prune": {"method": "boundary", "start_round": 2, "max_prune_round": 5, "interval": 1,
                  "k": 0.5, "max_fraction": 0.5},
    }
    for key, value in over.items():
        base.setdefault(key, {}).update(value)
    return from_dict(base)


def _synthetic_data(seed=0, n_clients=6, per_client=20):
    g = torch.Generator().manual_seed(seed)
    clients = [ClientData(torch.randn(per_client + i, 1, 28, 28, generator=g),
                          torch.randint(0, 4, (per_client + i,), generator=g))
               for i in range(n_clients)]
    return FederatedData(clients, torch.randn(30, 1, 28, 28, generator=g),
                         torch.randint(0, 4, (30,), generator=g), 4, (1, 28, 28))


def test_local_training_is_seeded_and_starts_a_fresh_optimizer():
    data = _synthetic_data()
    cfg = _tiny_cfg().train
    m1, _ = new_model("cnn_femnist", num_classes=4, in_channels=1, image_size=28,
                      widths=[4, 8], seed=0)
    m2, _ = new_model("cnn_femnist", num_classes=4, in_channels=1, image_size=28,
                      widths=[4, 8], seed=0)
    c = data.clients[0]
    s1, n1, _ = train_local(m1, c.x, c.y, cfg, torch.Generator().manual_seed(5))
    s2, n2, _ = train_local(m2, c.x, c.y, cfg, torch.Generator().manual_seed(5))
    assert n1 == n2 == 20
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k])
    # a second client starting from the same weights with a fresh optimizer gives the same
    # result as the first: no optimizer state carries over
    m1.load_state_dict(m2.state_dict())
    s3, _, _ = train_local(m1, c.x, c.y, cfg, torch.Generator().manual_seed(5))
    s4, _, _ = train_local(m2, c.x, c.y, cfg, torch.Generator().manual_seed(5))
    for k in s3:
        torch.testing.assert_close(s3[k], s4[k])


def test_loop_records_bytes_params_and_pruning(tmp_path):
    data = _synthetic_data()
    cfg = _tiny_cfg()
    res = run_simulation(cfg, tmp_path, data=data)
    rows = read_rounds(tmp_path)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["accuracy"] is not None for r in rows] == [False, False, True, False, False, True]
    assert any(r["pruned"] for r in rows)
    assert rows[-1]["params"] < rows[0]["params"]
    # round 1 sends the initial model down to 3 clients, with its spec; 3 replies come up
    _, spec0 = new_model("cnn_femnist", num_classes=4, in_channels=1, image_size=28,
                         widths=[8, 16], seed=0)
    dense = create_model("cnn_femnist", num_classes=4, in_channels=1, image_size=28,
                         widths=[8, 16])
    p = payload_bytes(dense)  # no integer buffers in this model: every array counts
    # down: weights, spec and config text, round, version and partition (8 bytes a number)
    per_message = p + len(spec0.to_json().encode()) + len(cfg.to_json().encode()) + 3 * 8
    assert rows[0]["bytes_down"] == 3 * per_message
    assert rows[0]["bytes_up"] == 3 * (p + 4 * 8)  # weights, samples, loss, version, partition
    assert rows[-1]["bytes_cumulative"] == sum(r["bytes_down"] + r["bytes_up"] for r in rows)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["bytes_total"] == rows[-1]["bytes_cumulative"]
    assert s["bytes_total_dense"] == 6 * 3 * (per_message + p + 4 * 8)
    assert s["bytes_total"] < s["bytes_total_dense"]
    assert s["params_final"] == rows[-1]["params"] == res.summary["params_final"]
    assert s["widths_final"] == rows[-1]["widths"]
    assert s["prune_stopped_round"] is not None
    # the checkpoint rebuilds the pruned model from JSON + weights, no pickle
    spec, model, rnd = load_checkpoint(tmp_path / "checkpoint.pt")
    assert rnd == 6 and spec.widths_now() == s["widths_final"]
    res.model.eval(), model.eval()
    torch.testing.assert_close(model(data.test_x), res.model(data.test_x))


def test_a_run_shorter_than_the_default_window_still_prunes():
    # no prune.* window keys: the window follows fed.rounds (3 rounds: tries from round 1)
    cfg = from_dict({"data": {"num_clients": 6}, "model": {"widths": [8, 16]},
                     "train": {"local_epochs": 1, "batch_size": 16},
                     "fed": {"rounds": 3, "clients_per_round": 3, "eval_every": 3},
                     "prune": {"method": "boundary"}})
    assert (cfg.prune.start_round, cfg.prune.interval) == (1, 1)
    s = run_simulation(cfg, data=_synthetic_data()).summary
    assert s["prune_steps"] >= 1 and s["params_final"] < s["params_initial"]


def test_dense_baseline_sends_what_it_would_and_never_prunes(tmp_path):
    cfg = _tiny_cfg(prune={"enabled": False})
    s = run_simulation(cfg, tmp_path, data=_synthetic_data()).summary
    assert s["params_final"] == s["params_initial"]
    assert s["bytes_total"] == s["bytes_total_dense"]
    assert s["prune_stopped_round"] is None


def test_same_seed_same_run_and_other_seed_differs():
    data = _synthetic_data()
    a = run_simulation(_tiny_cfg(), data=data).summary
    b = run_simulation(_tiny_cfg(), data=data).summary
    c = run_simulation(from_dict({**_tiny_cfg().to_dict(), "seed": 1}), data=data).summary
    for key in ("accuracy", "params_final", "widths_final", "bytes_total"):
        assert a[key] == b[key]
    assert (a["accuracy"], a["widths_final"]) != (c["accuracy"], c["widths_final"])


@pytest.mark.parametrize("name", list_models())
def test_flops_match_torch_flop_counter_before_and_after_pruning(name):
    d = model_defaults(name)
    model, spec = new_model(name, num_classes=5, in_channels=d["in_channels"],
                            image_size=d["image_size"], widths=None, seed=0)
    x = spec.example_input()
    for _ in range(2):
        with FlopCounterMode(display=False) as fc:
            model.eval()(x)
        assert count_flops(model, x) == fc.get_total_flops()
        spec = ModelSpec(**{**spec.__dict__, "record": prune_model(
            model, x, BoundaryRule(k=0.5, mode="low", max_fraction=0.2),
            record=spec.record).record})
    rebuilt = build(ModelSpec.from_json(spec.to_json()))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert np.isclose(count_flops(rebuilt, x), count_flops(model, x))


@pytest.mark.slow
def test_pruning_on_digits_does_not_collapse_to_chance():
    """Cuts with kept weights must leave a net that still learns (chance is 0.10 here)."""
    cfg = from_dict({
        "threads": 1,
        "fed": {"rounds": 40, "eval_every": 5},
        "train": {"local_epochs": 2},
        "prune": {"method": "boundary", "start_round": 10, "max_prune_round": 20},
    })
    res = run_simulation(cfg)
    s = res.summary
    assert s["params_final"] < 0.3 * s["params_initial"]
    accs = [r.accuracy for r in res.records if r.accuracy is not None and r.round > 20]
    # measured with these settings: 0.72 five rounds after the last cut, 0.84 at round 40
    assert min(accs) > 0.5 and s["accuracy"] > 0.8 and s["accuracy"] > accs[0]
