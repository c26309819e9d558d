"""The pruning engine on hand-built nets: grouping, weight preservation, records, rebuild."""

import copy
import inspect
import json

import pytest
import torch
from nets import ConcatNet, DepthwiseNet, ResidualNet
from torch import nn

from fedprune.config import PruneConfig
from fedprune.pruning import (
    BoundaryRule,
    default_rule,
    initial_record,
    prune_model,
    rebuild,
    widths_of,
)

# k = 0.5 with the configuration's other defaults: the low tail, at most 20 % a step
HALF = BoundaryRule(k=0.5, mode="low", max_fraction=0.2)


def _equalise_filters(model: nn.Module, seed: int = 0) -> None:
    """Give every conv filter L1 norm 1 (random pattern), and BN random affine and statistics.

    All filters of a layer then score the same, so a zeroed filter is the only outlier.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = torch.randn(m.weight.shape, generator=g)
                m.weight.copy_(w / w.abs().flatten(1).sum(1).view(-1, 1, 1, 1))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def _zero_out(modules: list[nn.Module], channels: list[int]) -> None:
    with torch.no_grad():
        for m in modules:
            m.weight[channels] = 0.0
            if m.bias is not None:
                m.bias[channels] = 0.0


def _assert_zero_channel_removed_and_output_kept(model, x, expect_widths):
    model.eval()
    before = model(x)
    result = prune_model(model, x[:1], BoundaryRule(k=2.0, mode="low", max_fraction=0.2))
    after = model(x)
    assert widths_of(result.record) == expect_widths
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    return result


def test_zeroed_filter_on_residual_net_is_removed_and_output_unchanged():
    torch.manual_seed(0)
    net = ResidualNet(c=16)
    _equalise_filters(net)
    # channel 5 of the residual stream: every producer (stem, conv2) and its BN are zero
    _zero_out([net.stem, net.stem_bn, net.conv2, net.bn2], [5])
    x = torch.randn(4, 1, 8, 8)
    res = _assert_zero_channel_removed_and_output_kept(net, x, {"stem": 15, "conv1": 16})
    grp = {g["root"]: g for g in res.record["groups"]}["stem"]
    assert grp["members"] == ["stem", "conv2"]  # the add couples them into one group
    assert 5 not in grp["kept"]
    assert net.conv1.in_channels == 15 and net.fc.in_features == 15
    assert net.fc.out_features == 3  # classifier outputs untouched


def test_zeroed_filter_in_a_concat_branch_is_removed_and_output_unchanged():
    net = ConcatNet()
    _equalise_filters(net)
    original_post = net.post.weight.detach().clone()
    _zero_out([net.b3], [2])
    x = torch.randn(4, 1, 8, 8)
    _assert_zero_channel_removed_and_output_kept(
        net, x, {"stem": 6, "b1": 5, "b3": 6, "post": 9}
    )
    # the consumer lost input channel 5 + 2 = 7 (b1 has 5 channels before b3 in the concat)
    assert net.post.in_channels == 11
    keep_in = [i for i in range(12) if i != 7]
    torch.testing.assert_close(net.post.weight, original_post[:, keep_in])


def test_depthwise_and_grouped_convs_stay_consistent():
    net = DepthwiseNet()
    _equalise_filters(net)
    _zero_out([net.conv, net.dw], [3])  # conv and its depthwise follower form one group
    _zero_out([net.pw], [1, 7])  # local position 1 in both blocks of gconv (groups=2)
    x = torch.randn(4, 1, 8, 8)
    _assert_zero_channel_removed_and_output_kept(net, x, {"conv": 7, "pw": 10, "gconv": 12})
    assert net.dw.groups == 7 and net.dw.in_channels == 7
    assert net.gconv.groups == 2 and net.gconv.in_channels == 10


def test_grouped_conv_loses_the_same_positions_in_every_block():
    net = DepthwiseNet()
    _equalise_filters(net)
    _zero_out([net.pw], [1])  # only one block: its twin (7) is not zero, so the mean is 0.5
    net.eval()
    x = torch.randn(2, 1, 8, 8)
    res = prune_model(net, x[:1], BoundaryRule(k=0.5, mode="low", max_fraction=0.5))
    kept = {g["root"]: g["kept"] for g in res.record["groups"]}["pw"]
    local = [i for i in kept if i < 6]
    assert kept == local + [i + 6 for i in local]  # same local positions in both blocks
    assert net(x).shape == (2, 3)


def test_surviving_weights_are_slices_of_the_originals():
    torch.manual_seed(1)
    net = ResidualNet(c=8)
    orig = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 1, 8, 8)
    res = prune_model(net, x[:1], BoundaryRule(k=0.5, mode="both", max_fraction=0.2))
    assert res.n_removed > 0
    kept = {g["root"]: torch.tensor(g["kept"]) for g in res.record["groups"]}
    s, c1 = kept["stem"], kept["conv1"]
    sd = net.state_dict()
    torch.testing.assert_close(sd["stem.weight"], orig["stem.weight"][s])
    torch.testing.assert_close(sd["stem_bn.running_var"], orig["stem_bn.running_var"][s])
    torch.testing.assert_close(sd["conv1.weight"], orig["conv1.weight"][c1][:, s])
    torch.testing.assert_close(sd["conv2.weight"], orig["conv2.weight"][s][:, c1])
    torch.testing.assert_close(sd["bn2.bias"], orig["bn2.bias"][s])
    torch.testing.assert_close(sd["fc.weight"], orig["fc.weight"][:, s])
    torch.testing.assert_close(sd["fc.bias"], orig["fc.bias"])


@pytest.mark.parametrize("cls", [ResidualNet, ConcatNet, DepthwiseNet])
def test_record_rebuilds_the_pruned_architecture_after_several_steps(cls):
    torch.manual_seed(2)
    net = cls()
    x = torch.randn(3, 1, 8, 8)
    record = None
    for _ in range(3):
        record = prune_model(net, x[:1], BoundaryRule(k=0.7, mode="both", max_fraction=1.0),
                             record=record).record
    wire = json.loads(json.dumps(record))  # what travels is plain JSON
    fresh = rebuild(cls(), wire, x[:1])
    fresh.load_state_dict(net.state_dict(), strict=True)
    net.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), net(x))


def test_min_channels_is_never_crossed():
    torch.manual_seed(3)
    net = ConcatNet()
    x = torch.randn(1, 1, 8, 8)
    record = None
    for _ in range(6):
        record = prune_model(net, x, BoundaryRule(k=0.0, mode="both", min_channels=2,
                                                  max_fraction=1.0), record=record).record
    assert min(widths_of(record).values()) == 2


def test_output_layer_of_a_fully_convolutional_net_is_not_pruned():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(1))
    x = torch.randn(2, 1, 6, 6)
    prune_model(net, x[:1], BoundaryRule(k=0.0, mode="both", max_fraction=0.2))
    assert net[2].out_channels == 4
    assert net(x).shape == (2, 4 * 4 * 4)


def test_reinit_is_explicit_and_seeded():
    torch.manual_seed(4)
    base = ResidualNet(c=8)
    x = torch.randn(1, 1, 8, 8)
    a, b, kept = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    prune_model(a, x, HALF, reinit=True, seed=7)
    prune_model(b, x, HALF, reinit=True, seed=7)
    res = prune_model(kept, x, HALF)
    torch.testing.assert_close(a.state_dict(), b.state_dict())
    s = torch.tensor({g["root"]: g["kept"] for g in res.record["groups"]}["stem"])
    assert torch.equal(kept.stem.weight, base.stem.weight[s])
    assert not torch.equal(a.stem.weight, base.stem.weight[s])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(format="x"), "not a pruning record"),
        (lambda r: r.update(version=99), "version"),
        (lambda r: r["groups"][0].update(kept=[]), "non-empty"),
        (lambda r: r["groups"][0].update(kept=[0, 0]), "distinct"),
        (lambda r: r["groups"][0].update(kept=[99]), "indices"),
        (lambda r: r["groups"][0].update(root="nope"), "absent"),
        (lambda r: r["groups"][0].update(channels=3, kept=[0]), "output channels"),
    ],
)
def test_bad_records_are_rejected_with_a_clear_error(mutate, message):
    x = torch.randn(1, 1, 8, 8)
    record = initial_record(ResidualNet(), x)
    mutate(record)
    with pytest.raises(ValueError, match=message):
        rebuild(ResidualNet(), record, x)


def test_pruning_with_a_stale_record_is_refused():
    x = torch.randn(1, 1, 8, 8)
    net = ResidualNet()
    record = initial_record(net, x)
    prune_model(net, x, BoundaryRule(k=0.0, mode="low", max_fraction=0.2), record=record)
    with pytest.raises(ValueError, match="does not match"):
        prune_model(net, x, BoundaryRule(k=0.0, mode="low", max_fraction=0.2), record=record)


def test_the_library_and_the_configuration_share_one_set_of_defaults():
    assert inspect.signature(prune_model).parameters["rule"].default is None
    rule, cfg = default_rule(), PruneConfig()
    for name in ("k", "mode", "min_channels", "max_fraction"):
        assert getattr(rule, name) == getattr(cfg, name), name
    # and they act as such: one call removes at most 20 % of a group, weak filters only
    torch.manual_seed(5)
    net = ConcatNet()
    before = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    prune_model(net, torch.randn(1, 1, 8, 8))
    after = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(after[n] >= before[n] - int(0.2 * before[n]) for n in before)
