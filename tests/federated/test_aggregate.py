"""The averaging rules and the norm bound of :mod:`fedprune.federated.aggregate`, against
values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

import fedprune.federated.aggregate as agg
from fedprune.config import ConfigError, from_dict
from fedprune.federated.aggregate import (
    clip_updates,
    fedavg,
    median,
    robust_aggregate,
    screen_replies,
    trim_count,
    trimmed_mean,
    update_norm,
)


def _replies(*columns, counts=None):
    """Replies whose tensor ``w`` holds the given values (one list per reply)."""
    counts = counts or [1] * len(columns)
    return [({"w": torch.tensor(c, dtype=torch.float32)}, n) for c, n in zip(columns, counts,
                                                                           strict=True)]


def _w(state):
    return state["w"].tolist()


# ----------------------------------------------------------------------------- averages


def test_trimmed_mean_drops_the_extremes_of_every_coordinate():
    # coordinate 0: 1 2 3 4 100 -> 2 3 4; coordinate 1: -50 0 0 0 1 -> 0 0 0
    replies = _replies([1, 0], [2, 0], [3, -50], [4, 1], [100, 0], counts=[9, 1, 1, 1, 1])
    assert _w(trimmed_mean(replies, 0.2)) == [3.0, 0.0]  # sample counts do not weigh
    # nothing trimmed: the plain (unweighted) mean
    assert _w(trimmed_mean(replies, 0.0)) == pytest.approx([22.0, -9.8], rel=1e-7)
    # 0.39 of 5 clients trims floor(1.95) = 1 from each end
    assert _w(trimmed_mean(replies, 0.39)) == [3.0, 0.0]


def test_trim_count_always_leaves_a_value():
    assert [trim_count(m, 0.1) for m in (1, 5, 9, 10, 19, 20)] == [0, 0, 0, 1, 1, 2]
    assert [trim_count(m, 0.49) for m in (1, 2, 3, 4, 5)] == [0, 0, 1, 1, 2]
    # two replies, trimmed as hard as allowed: both remain
    assert _w(trimmed_mean(_replies([0.0], [1.0]), 0.49)) == [0.5]


def test_median_of_odd_and_even_counts():
    assert _w(median(_replies([1, 5], [2, -7], [3, 0], [4, 8], [100, 1]))) == [3.0, 1.0]
    assert _w(median(_replies([1], [2], [10], [20]))) == [6.0]  # mean of the middle two


def test_fedavg_weighs_by_sample_count():
    assert _w(fedavg(_replies([0.0], [3.0], counts=[2, 1]))) == [1.0]


def test_one_reply_is_returned_as_it_is_by_every_rule():
    ref = {"w": torch.zeros(3), "n": torch.tensor(4)}
    reply = {"w": torch.tensor([1.5, -2.0, 7.0]), "n": torch.tensor(9)}
    for aggregator in agg.AGGREGATORS:
        for factor in (0.0, 1.0, 3.0):
            out, clips, _ = robust_aggregate([(reply, 17)], ref, aggregator=aggregator,
                                          clip_factor=factor, trim_fraction=0.4)
            assert clips == []
            assert torch.equal(out["w"], reply["w"]) and torch.equal(out["n"], reply["n"])


def test_equal_replies_are_returned_unchanged_and_never_clipped():
    ref = {"w": torch.zeros(2, 2)}
    state = {"w": torch.tensor([[0.1, -3.0], [2.5, 1e-3]])}
    for aggregator in agg.AGGREGATORS:
        out, clips, _ = robust_aggregate([(state, n) for n in (1, 5, 2, 8)], ref,
                                      aggregator=aggregator, clip_factor=1.0,
                                      trim_fraction=0.25)
        assert clips == [] and torch.equal(out["w"], state["w"]), aggregator


# ----------------------------------------------------------------------------- integer buffers


def _bn_replies(counts):
    return [({"w": torch.tensor([float(i)]), "num_batches_tracked": torch.tensor(c)}, 1)
            for i, c in enumerate(counts)]


def test_integer_buffers_are_the_rounded_mean_under_plain_fedavg_else_the_lower_median():
    replies = _bn_replies([5, 7, 9, 10**12])  # one client claims a huge count
    ref = {"w": torch.zeros(1), "num_batches_tracked": torch.tensor(0)}
    plain, _, _ = robust_aggregate(replies, ref, aggregator="fedavg", clip_factor=0.0)
    assert int(plain["num_batches_tracked"]) == round((5 + 7 + 9 + 10**12) / 4)
    for aggregator, factor in (("fedavg", 3.0), ("trimmed_mean", 0.0), ("median", 0.0),
                               ("median", 3.0)):
        out, _, _ = robust_aggregate(replies, ref, aggregator=aggregator, clip_factor=factor,
                                  trim_fraction=0.25)
        nbt = out["num_batches_tracked"]
        assert nbt.dtype == torch.int64 and int(nbt) == 7, (aggregator, factor)


def test_integer_tensors_are_left_out_of_the_norm_and_never_scaled():
    ref = {"w": torch.zeros(2), "n": torch.tensor([0, 0])}
    state = {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor([10**6, -3])}
    assert update_norm(state, ref) == 5.0
    replies = [(state, 1), ({"w": torch.tensor([0.03, 0.04]), "n": torch.tensor([1, 1])}, 1),
               ({"w": torch.tensor([0.0, 0.05]), "n": torch.tensor([2, 2])}, 1)]
    out, clips = clip_updates(replies, ref, 1.0)
    assert [c.index for c in clips] == [0]
    assert torch.equal(out[0][0]["n"], state["n"])


# ----------------------------------------------------------------------------- the norm bound


def test_an_update_beyond_the_bound_is_scaled_to_bound_squared_over_its_norm():
    ref = {"w": torch.tensor([1.0, 1.0])}
    # updates of norm 1, 2, 3 and 100 from the reference: median 2.5, bound 2 x 2.5 = 5
    replies = [({"w": ref["w"] + torch.tensor(u)}, 1)
               for u in ([1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 100.0])]
    out, clips = clip_updates(replies, ref, 2.0)
    assert [(c.index, c.norm, c.bound) for c in clips] == [(3, 100.0, 5.0)]
    # scaled by (5 / 100)^2: norm 25 / 100 = 0.25, the direction kept
    assert _w(out[3][0]) == [1.0, 1.25]
    assert all(out[i][0] is replies[i][0] for i in range(3))  # within the bound: untouched
    # the same update just over the bound keeps about the bound
    near = [*replies[:3], ({"w": ref["w"] + torch.tensor([0.0, 5.5])}, 1)]
    out, clips = clip_updates(near, ref, 2.0)
    assert clips[0].bound == 5.0 and update_norm(out[3][0], ref) == pytest.approx(25 / 5.5)


def test_clipped_fedavg_against_a_hand_computed_average():
    ref = {"w": torch.tensor([0.0])}
    replies = _replies([1.0], [2.0], [-40.0], counts=[1, 1, 2])  # median 2, bound 3 x 2 = 6
    out, clips, _ = robust_aggregate(replies, ref, aggregator="fedavg", clip_factor=3.0)
    assert [(c.index, c.norm, c.bound) for c in clips] == [(2, 40.0, 6.0)]
    # -40 scaled by (6 / 40)^2 -> -0.9; then (1 + 2 + 2 x -0.9) / 4
    assert _w(out)[0] == pytest.approx((1 + 2 - 1.8) / 4, rel=1e-6)
    unclipped, none, _ = robust_aggregate(replies, ref, aggregator="fedavg", clip_factor=0.0)
    assert none == [] and _w(unclipped)[0] == pytest.approx((1 + 2 - 80) / 4)


def test_running_statistics_are_clipped_with_the_weights_and_stay_positive():
    ref = {"w": torch.zeros(1), "running_var": torch.ones(2)}
    replies = [({"w": torch.tensor([0.1]), "running_var": torch.tensor([1.1, 0.9])}, 1),
               ({"w": torch.tensor([0.2]), "running_var": torch.tensor([1.0, 1.2])}, 1),
               ({"w": torch.tensor([1e4]), "running_var": torch.tensor([1e-6, 1e4])}, 1)]
    out, clips, _ = robust_aggregate(replies, ref, clip_factor=3.0)
    assert [c.index for c in clips] == [2]
    assert (out["running_var"] > 0.5).all() and (out["running_var"] < 1.5).all()
    assert abs(float(out["w"][0])) < 1.0


def test_the_bound_is_deterministic_and_chunking_changes_no_bit(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    ref = {"w": torch.randn(7, 5, generator=gen), "b": torch.randn(3, generator=gen)}
    replies = [({k: v + torch.randn(v.shape, generator=gen) * (1 + 20 * (i == 4))
                 for k, v in ref.items()}, 1 + i) for i in range(6)]
    whole = {a: robust_aggregate(replies, ref, aggregator=a, clip_factor=2.0,
                                 trim_fraction=0.2) for a in agg.AGGREGATORS}
    assert all([c.index for c in clips] == [4] for _, clips, _ in whole.values())
    monkeypatch.setattr(agg, "CHUNK", 4)  # 35 values of w sorted four coordinates at a time
    for a, (state, clips, _) in whole.items():
        again, clips2, _ = robust_aggregate(replies, ref, aggregator=a, clip_factor=2.0,
                                            trim_fraction=0.2)
        assert clips2 == clips
        assert all(torch.equal(again[k], state[k]) for k in state), a


def test_a_reply_of_another_dtype_is_rejected_before_any_norm():
    ref = {"w": torch.zeros(2)}
    _, rejected = screen_replies([({"w": torch.zeros(2, dtype=torch.float64)}, 1)], ref)
    assert "dtype torch.float64, expected torch.float32" in rejected[0].reason


def test_an_unknown_aggregator_is_an_error():
    with pytest.raises(ValueError, match="unknown aggregator 'mean'"):
        robust_aggregate(_replies([1.0]), {"w": torch.zeros(1)}, aggregator="mean")


@pytest.mark.parametrize("values, key", [
    ({"clip_factor": 0.5}, "fed.clip_factor"),
    ({"clip_factor": -1.0}, "fed.clip_factor"),
    ({"trim_fraction": 0.5}, "fed.trim_fraction"),
    ({"trim_fraction": -0.1}, "fed.trim_fraction"),
    ({"aggregator": "mean"}, "fed.aggregator"),
])
def test_bad_aggregation_settings_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict({"fed": values})


def test_the_default_bounds_influence():
    fed = from_dict({}).fed
    assert fed.clip_factor >= 1 and math.isfinite(fed.clip_factor)
    assert fed.aggregator == "fedavg"


# ----------------------------------------------------------------------------- the server


def _server():
    import copy

    from fedprune.federated.server import PruningServer
    from fedprune.models import new_model

    cfg = from_dict({"threads": 1, "data": {"num_clients": 5},
                     "fed": {"rounds": 2, "clients_per_round": 4},
                     "prune": {"method": "auto-paired"}})
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=[4, 8], seed=0)
    server = PruningServer(cfg, model, spec, train_sizes=[7] * 5, val_sizes=[2] * 5,
                           test_x=torch.zeros(2, 1, 28, 28), test_y=torch.zeros(2).long())
    candidate = copy.deepcopy(model)
    server.pruner.candidate = (candidate, spec)  # one trial model, as the automatic method has
    return server, candidate


def _moved(state, steps):
    """``state`` with every floating tensor moved by ``steps[i]`` at its i-th element
    (cycled): an update of a chosen shape."""
    out = {}
    for k, v in state.items():
        delta = torch.tensor(steps, dtype=v.dtype).repeat(v.numel() // len(steps) + 1)
        out[k] = v + delta[:v.numel()].reshape(v.shape)
    return out


def test_the_server_bounds_the_model_and_its_trial_copies_by_client():
    from fake_transport import FakeTransport

    from fedprune.federated.transport import TrainReply

    server, candidate = _server()
    sent = {k: v.clone() for k, v in server.model.state_dict().items()}
    sent_trial = {k: v.clone() for k, v in candidate.state_dict().items()}
    # the third of the four clients: its model update is about 1e4 times the others', its
    # trial copy about 40 times
    main = [_moved(sent, [1e-3 * (1 + i / 10)]) for i in range(4)]
    main[2] = _moved(sent, [10.0])
    trial = [_moved(sent_trial, [-1e-3]) for _ in range(4)]
    trial[2] = _moved(sent_trial, [-5e-2])
    trial[0] = _moved(sent_trial, [-2e-3])
    transport = FakeTransport(lambda plan: [TrainReply(c, (main[i], trial[i]), 7)
                                            for i, c in enumerate(plan.clients)])
    record = server.run_round(1, transport)
    rogue = transport.plans[0].clients[2]
    assert len(transport.plans[0].models) == 2  # the model and its trial copy were sent
    (clip,) = record.extra["clipped"]
    assert clip["client"] == rogue and clip["norm"] / clip["bound"] > 1000
    (tclip,) = record.extra["trial_clipped"]
    assert tclip["client"] == rogue and tclip["trial"] == 0
    # its own median: steps 1, 1, 2 and 50 (x 1e-3), median 1.5, bound 2 x 1.5 = 3: 50 / 3
    # beyond
    assert tclip["norm"] / tclip["bound"] == pytest.approx(50 / 3, rel=1e-4)
    # every coordinate moved by the mean of the honest steps 1.0, 1.1, 1.3 (x 1e-3) and the
    # rogue's 10 scaled by (bound / norm)^2: the rogue all but drops out
    expected = ((1.0 + 1.1 + 1.3) * 1e-3 + 10 * (clip["bound"] / clip["norm"]) ** 2) / 4
    key = "classifier.0.weight" if "classifier.0.weight" in sent else next(iter(sent))
    moved = server.model.state_dict()[key] - sent[key]
    assert moved.min() == pytest.approx(expected, rel=1e-3)
    assert moved.max() == pytest.approx(expected, rel=1e-3)


def test_a_reply_without_the_trial_copies_still_counts_for_the_model():
    from fake_transport import FakeTransport

    from fedprune.federated.transport import TrainReply

    server, _ = _server()
    sent = server.model.state_dict()
    record = server.run_round(1, FakeTransport(
        lambda plan: [TrainReply(c, (sent,), 1) for c in plan.clients]))
    assert record.clients == 4
    assert [r["index"] for r in record.extra["trial_rejected"]] == [0, 1, 2, 3]
    assert all("no trained copy" in r["reason"] for r in record.extra["trial_rejected"])


# ----------------------------------------------------------------------------- directions


def _honest(gen, m=9):
    """``m`` updates sharing a direction (plus noise of each client's own)."""
    common = torch.randn(20, generator=gen)
    return [common + 0.8 * torch.randn(20, generator=gen) for _ in range(m)]


def test_an_update_pointing_against_the_median_is_left_out_at_any_scale():
    from fedprune.federated.aggregate import screen_directions

    gen = torch.Generator().manual_seed(0)
    ref = {"w": torch.zeros(20), "n": torch.zeros((), dtype=torch.long)}
    ups = _honest(gen)
    for scale in (1e-3, 1.0, 2.99, 1e4):
        flipped = -scale * ups[3]
        replies = [({"w": u, "n": ref["n"]}, 10) for u in [*ups, flipped]]
        kept, against = screen_directions(replies, ref, 0.0)
        assert [a.index for a in against] == [9] and against[0].cosine < 0
        assert [k[0] for k in kept] == [r[0] for r in replies[:9]]
    # every honest update points along the median: nothing is left out, the average is
    # bit for bit the one without the screen
    honest = [({"w": u, "n": ref["n"]}, 10 + i) for i, u in enumerate(ups)]
    on = robust_aggregate(honest, ref, clip_factor=3.0, min_cosine=0.0)
    off = robust_aggregate(honest, ref, clip_factor=3.0, min_cosine=-1.0)
    assert on.against == [] and torch.equal(on.state["w"], off.state["w"])


def test_three_colluding_flips_of_ten_are_left_out_and_two_replies_are_never_judged():
    from fedprune.federated.aggregate import screen_directions

    gen = torch.Generator().manual_seed(1)
    ref = {"w": torch.zeros(20)}
    ups = _honest(gen, 7)
    mean = sum(ups) / 7
    replies = [({"w": u}, 1) for u in ups] + [({"w": -2.99 * mean}, 1)] * 3
    out = robust_aggregate(replies, ref, clip_factor=3.0, min_cosine=0.0)
    assert [a.index for a in out.against] == [7, 8, 9]
    assert torch.allclose(out.state["w"], mean.to(torch.float32), atol=1e-6)
    # the median of two is their mean: no direction is judged among fewer than three
    two = [({"w": ups[0]}, 1), ({"w": -10 * ups[0]}, 1)]
    assert screen_directions(two, ref, 0.0) == (two, [])


def test_the_direction_setting_is_bounded():
    with pytest.raises(ConfigError, match="fed.min_cosine"):
        from_dict({"fed": {"min_cosine": 1.5}})
    assert from_dict({"fed": {"min_cosine": -1.0}}).fed.min_cosine == -1.0
