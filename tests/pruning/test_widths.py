"""Nested widths: aligned channel counts, the ladder, sub-models and where their weights sit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from nets import ConcatNet, ResidualNet

from fedprune.models import new_model
from fedprune.pruning import RatioRule, initial_record, prune_model
from fedprune.pruning.widths import (
    aligned,
    batch_schedule,
    channel_scores,
    dropout_masks,
    gather_maps,
    keep_of,
    ladder,
    record_from_keep,
    sub_model,
    sub_record,
    variant_models,
)


def test_aligned_rounds_to_the_nearest_multiple_within_the_group():
    assert aligned(24, 32, 16) == 32  # half up
    assert aligned(23.9, 32, 16) == 16
    assert aligned(4, 32, 16) == 16  # at least one multiple
    assert aligned(40, 64, 16) == 48 and aligned(39, 64, 16) == 32
    assert aligned(8, 16, 16) == 16 and aligned(3, 8, 16) == 8  # a small group stays whole
    assert aligned(72, 72, 16) == 72 and aligned(70, 72, 16) == 64  # never more than n
    assert aligned(21, 32, 1) == 21 and aligned(20.5, 32, 1) == 21
    assert aligned(2, 64, 1, floor=4) == 4
    with pytest.raises(ValueError):
        aligned(3, 0, 16)


@given(n=st.integers(1, 300), k=st.floats(0, 300), m=st.sampled_from([1, 2, 4, 8, 16, 32]))
def test_aligned_is_a_multiple_or_the_whole_group(n, k, m):
    a = aligned(k, n, m)
    assert 1 <= a <= n
    assert a == n or a % m == 0


def test_the_ladder_is_nested_aligned_and_ends_at_the_full_width():
    widths = {"a": 32, "b": 64, "c": 16, "d": 96}
    steps = ladder(widths, 16)
    assert steps[-1] == widths
    assert [list(w.values()) for w in steps][:2] == [[16, 16, 16, 16], [16, 16, 16, 32]]
    for lo, hi in itertools.pairwise(steps):
        assert lo != hi and all(lo[r] <= hi[r] for r in widths)
        assert all(w % 16 == 0 for w in lo.values())
    assert ladder({"a": 16, "b": 8}, 16) == [{"a": 16, "b": 8}]  # nothing narrower
    assert len(ladder({"a": 32, "b": 64}, 1)) == 8
    # a group left whole keeps its width in every step; steps that then repeat go
    fixed = ladder({"a": 32, "b": 64}, 16, fixed={"b"})
    assert fixed == [{"a": 16, "b": 64}, {"a": 32, "b": 64}]


def _example(shape=(1, 1, 28, 28)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("make", [
    lambda: (new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                       widths=None, seed=0)[0], (1, 1, 28, 28)),
    lambda: (ResidualNet(c=8), (1, 1, 8, 8)),
    lambda: (ConcatNet(), (1, 1, 8, 8)),
    lambda: (new_model("inception", num_classes=10, in_channels=1, image_size=28,
                       widths=None, seed=0)[0], (1, 1, 28, 28)),
], ids=["cnn", "residual-bn", "concat", "inception"])
def test_gather_maps_place_every_sub_model_weight_in_the_full_model(make):
    model, shape = make()
    x = _example(shape)
    model.eval()
    record = initial_record(model, x)
    full = {g["root"]: g["channels"] for g in record["groups"]}
    scores = channel_scores(model, x)
    for widths in ladder(full, 4 if max(full.values()) <= 16 else 16)[:-1]:
        rec = sub_record(record, scores, widths)
        sub = sub_model(model, rec, x)
        maps = gather_maps(model, rec, x)
        state, whole = sub.state_dict(), model.state_dict()
        assert set(maps) == {k for k, v in state.items() if v.is_floating_point()}
        for k, pos in maps.items():
            assert torch.equal(whole[k].reshape(-1)[pos].view_as(state[k]), state[k]), k
            assert len(set(pos.tolist())) == pos.numel()  # one place each
        sub.eval()
        assert sub(x).shape == model(x).shape
        # the sub-model is what zeroing the other channels of the full model computes, for
        # a net without BatchNorm statistics between the cut and the output
        # (checked on the plain CNN only: gather maps are exact for every net above)


def test_sub_records_keep_the_highest_scores_or_the_first_channels():
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=None, seed=0)
    x = spec.example_input()
    scores = channel_scores(model, x)
    rec = sub_record(spec.record, scores, {"features.0": 16, "features.3": 32})
    for g in rec["groups"]:
        s = scores[g["root"]]
        top = sorted(int(i) for i in np.argsort(-s, kind="stable")[:len(g["kept"])])
        assert g["kept"] == top
    prefix = sub_record(spec.record, {}, {"features.0": 16, "features.3": 32})
    assert [g["kept"] for g in prefix["groups"]] == [list(range(16)), list(range(32))]
    # what travels in a query describes the same sub-model
    assert record_from_keep(spec.record, keep_of(rec)) == rec
    a = sub_model(model, rec, x)
    (b,) = variant_models(model, spec, [keep_of(rec)])
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(ValueError, match="unknown groups"):
        record_from_keep(spec.record, {"nope": [0]})
    with pytest.raises(ValueError, match="not in"):
        sub_record(spec.record, scores, {"features.0": 33})
    pruned = prune_model(model, x, RatioRule(0.5), record=spec.record).record
    with pytest.raises(ValueError, match="unpruned"):
        sub_record(pruned, scores, {})


def test_ratio_rule_rounds_the_kept_channels_to_its_multiple():
    s = np.arange(64, dtype=float)
    assert int(RatioRule(0.5, round_to=16).decide(s).keep.sum()) == 32
    assert int(RatioRule(0.25, round_to=16).decide(s).keep.sum()) == 48
    assert int(RatioRule(0.75, round_to=16).decide(s).keep.sum()) == 16
    assert int(RatioRule(0.75, round_to=16).decide(s[:32]).keep.sum()) == 16  # 8 -> 16
    assert int(RatioRule(0.25, round_to=16).decide(s[:32]).keep.sum()) == 32  # 24 -> 32
    assert int(RatioRule(0.6, round_to=16).decide(s[:16]).keep.sum()) == 16  # whole
    assert int(RatioRule(0.25, round_to=1).decide(s[:32]).keep.sum()) == 24
    keep = RatioRule(0.75, round_to=16).decide(s).keep
    assert keep[-16:].all() and not keep[:-16].any()  # the lowest go first, as before
    with pytest.raises(ValueError, match="round_to"):
        RatioRule(0.5, round_to=0)


def test_groups_split_into_blocks_are_left_whole_by_nested_widths():
    from nets import DepthwiseNet

    from fedprune.pruning.widths import fixed_groups

    model = DepthwiseNet().eval()
    x = _example((1, 1, 8, 8))
    record = initial_record(model, x)
    fixed = fixed_groups(model, x)
    widths = {g["root"]: g["channels"] for g in record["groups"]}
    # the conv feeding the depthwise conv and the pointwise conv feeding the grouped one
    assert fixed and fixed <= set(widths)
    assert fixed_groups(ResidualNet(c=8).eval(), x) == set()
    # a width that keeps such a group whole is an ordinary sub-model
    steps = [{r: (widths[r] if r in fixed else w) for r, w in step.items()}
             for step in ladder(widths, 2)]
    scores = channel_scores(model, x)
    for w in steps[:-1]:
        sub = sub_model(model, sub_record(record, scores, w), x).eval()
        assert sub(x).shape == model(x).shape


@pytest.mark.parametrize("name, widths", [("cnn_femnist", None), ("tiny_resnet", [16, 16, 32]),
                                           ("inception", None)])
def test_a_narrower_width_is_the_held_width_times_its_masks(name, widths):
    """Ordered dropout trains a narrower width in place: the held width with its values
    times the width's masks computes exactly the narrower sub-model (batch norm too)."""
    model, spec = new_model(name, num_classes=10, in_channels=1, image_size=28, widths=widths,
                            seed=0)
    x = spec.example_input()
    full = {g["root"]: g["channels"] for g in spec.record["groups"]}
    records = [sub_record(spec.record, channel_scores(model, x), w)
               for w in ladder(full, 4 if widths else 16)]
    assert len(records) >= 3
    held_at = len(records) - 2
    held = sub_model(model, records[held_at], x).eval()
    masks = dropout_masks(held, records[held_at], [keep_of(r) for r in records[:held_at]], x)
    batch = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    for j, m in enumerate(masks):
        assert set(m) == {k for k, v in held.state_dict().items() if v.is_floating_point()}
        narrow = sub_model(model, records[j], x).eval()
        assert int(sum(v.sum() for v in m.values())) == sum(
            v.numel() for v in narrow.state_dict().values() if v.is_floating_point())
        params = {k: p * m[k] for k, p in held.named_parameters()}
        got = torch.func.functional_call(held, params, (batch,))
        torch.testing.assert_close(got, narrow(batch), atol=1e-5, rtol=1e-5)
    # a width that is not inside the held one is refused, naming the group
    wider = keep_of(records[held_at + 1]) or {
        g["root"]: list(range(g["channels"])) for g in spec.record["groups"]}
    with pytest.raises(ValueError, match="does not keep channels"):
        dropout_masks(held, records[held_at], [wider], x)


def test_the_batch_schedule_draws_one_width_per_batch_half_of_them_the_own_width():
    rng = np.random.default_rng(0)
    sched = batch_schedule(rng, n=1000, batch_size=10, epochs=20, narrower=3)
    assert len(sched) == 2000 and set(sched) == {-1, 0, 1, 2}
    assert 0.45 < sched.count(-1) / 2000 < 0.55
    assert all(0.13 < sched.count(j) / 2000 < 0.2 for j in range(3))
    # the same stream gives the same schedule; without narrower widths, every batch is own
    assert batch_schedule(np.random.default_rng(0), 1000, 10, 20, 3) == sched
    assert set(batch_schedule(np.random.default_rng(0), 5, 10, 2, 0)) == {-1}
    assert len(batch_schedule(np.random.default_rng(0), 21, 10, 2, 1)) == 6
    with pytest.raises(ValueError, match="batch_schedule"):
        batch_schedule(rng, 0, 10, 1, 1)
