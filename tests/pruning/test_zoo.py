"""Any model a user brings: the output layers are found, every cut checks itself, and a
group no cut can serve is left whole with its layers and the reason (tests/zoo.py)."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from torch import nn
from zoo import ZOO, GroupNormNet, SegmentationNet, TokenNet, TwoHeads

from fedprune.export.onnx import export_onnx
from fedprune.pruning import (
    PruneError,
    RatioRule,
    default_ignored_layers,
    initial_record,
    mark_fixed,
    output_tensors,
    prune_model,
    rebuild,
    widths_of,
    zero_removed,
)
from fedprune.pruning.widths import fixed_groups

X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ZOO[name][0]().eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return output_tensors(model.eval()(x))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_is_cut_correctly_or_left_whole_with_a_reason(name, tmp_path, caplog):
    _, fixed, exact = ZOO[name]
    model = _model(name)
    before = _outputs(model, X)
    with caplog.at_level(logging.WARNING, logger="fedprune.pruning.apply"):
        res = prune_model(model, X[:1], RatioRule(ratio=0.5))
    # the groups no cut can serve are refused, named, with the reason; the rest is cut
    assert {r.root for r in res.refused} == fixed
    for r in res.refused:
        assert r.root in r.members and r.reason
        assert f"group {r.root!r}" in caplog.text and r.reason in caplog.text
    widths, channels = widths_of(res.record), {g["root"]: g["channels"]
                                               for g in res.record["groups"]}
    for root, n in channels.items():
        assert widths[root] == (n if root in fixed else n // 2), root
    for d in res.decisions:
        assert d.kept == widths[d.root]
    # the cut model runs, its outputs of the same shapes
    after = _outputs(model, X)
    assert [t.shape for t in after] == [t.shape for t in before]
    # the JSON record rebuilds it from a fresh copy of the architecture
    fresh = _model(name, seed=1)
    rebuild(fresh, json.loads(json.dumps(res.record)), X[:1])
    fresh.load_state_dict(model.state_dict())
    for a, b in zip(_outputs(fresh, X), after, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ONNX Runtime agrees with PyTorch (models with one tensor out)
    if len(after) == 1:
        export_onnx(model, X[:1], tmp_path / "model.onnx")
    # with the removed channels zeroed first, removing them changes no output
    if exact:
        zeroed = _model(name)
        zero_removed(zeroed, res.record, X[:1])
        reference = _outputs(zeroed, X)
        rebuild(zeroed, res.record, X[:1])
        for a, b in zip(_outputs(zeroed, X), reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_refused_group_is_put_back_exactly_as_it_was():
    model = TokenNet().eval()
    embed = copy.deepcopy(model.embed.state_dict())
    proj = copy.deepcopy(model.proj.state_dict())
    res = prune_model(model, X[:1], RatioRule(ratio=0.5))
    assert [r.root for r in res.refused] == ["embed"]
    assert "shape" in res.refused[0].reason and "forward fails" in res.refused[0].reason
    for k, v in model.proj.state_dict().items():
        assert torch.equal(v, proj[k])
    # embed keeps all its filters, less the input channels the cut of features.0 removed
    kept = res.record["groups"][0]["kept"]
    assert torch.equal(model.embed.weight, embed["weight"][:, kept])
    assert torch.equal(model.embed.bias, embed["bias"])
    assert model.embed.out_channels == 16 and model.proj.in_features == model.token
    assert model.features[0].out_channels == 8  # the rest was cut
    # the model keeps training: the restored parameters are the ones the module holds
    model.train()
    model(X).sum().backward()
    assert model.embed.weight.grad is not None


def test_output_layers_are_found_through_containers_functional_ops_and_several_heads():
    for cls, expected in ((SegmentationNet, ["classifier"]), (TwoHeads, ["logits", "mask"]),
                          (ZOO["head-in-sequential"][0], ["head.3"])):
        model = cls()
        names = {m: n for n, m in model.named_modules()}
        assert [names[m] for m in default_ignored_layers(model, X[:1])] == expected
    # a segmentation cut keeps the classes: the per-pixel classifier is never cut
    model = SegmentationNet()
    prune_model(model, X[:1], RatioRule(ratio=0.5))
    assert model(X).shape == (3, 10, 16, 16)


def test_group_norm_keeps_a_multiple_of_its_groups_each_block_its_own_channels():
    model = GroupNormNet().eval()
    res = prune_model(model, X[:1], RatioRule(ratio=0.3))
    for norm, conv, g in ((model.norm1, "conv1", res.record["groups"][0]),
                          (model.norm2, "conv2", res.record["groups"][1])):
        assert g["root"] == conv and norm.num_groups == 4
        assert len(g["kept"]) % 4 == 0 and norm.num_channels == len(g["kept"])
        block = g["channels"] // 4  # each block loses the same local positions
        local = [[k % block for k in g["kept"] if k // block == b] for b in range(4)]
        assert all(lo == local[0] for lo in local)
    model(X)  # runs


def test_a_model_whose_forward_fails_is_refused_before_any_cut():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 4:  # traced and scored fine, then broken
                raise RuntimeError("broken on purpose")
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    model = Broken()
    with pytest.raises(PruneError, match="before any cut.*broken on purpose"):
        prune_model(model, X[:1], RatioRule(ratio=0.5), ignored_layers=[model.fc])
    assert model.conv.out_channels == 8


def test_mark_fixed_leaves_a_group_whole_for_every_later_cut(caplog):
    model = TokenNet().eval()
    with caplog.at_level(logging.WARNING, logger="fedprune.pruning.apply"):
        record = mark_fixed(model, X[:1])
    assert model.embed.out_channels == 16 and model.features[0].out_channels == 16
    fixed = {g["root"]: g.get("fixed") for g in record["groups"]}
    assert fixed["features.0"] is None and "forward fails" in fixed["embed"]
    assert "left whole" in caplog.text
    assert fixed_groups(model, X[:1], record=record) >= {"embed"}
    # a later cut with the record leaves it whole without trying it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedprune.pruning.apply"):
        res = prune_model(model, X[:1], RatioRule(ratio=0.5), record=record)
    assert not res.refused and not caplog.text
    assert widths_of(res.record) == {"features.0": 8, "embed": 16}
    assert res.record["groups"][1]["fixed"] == fixed["embed"]
    # a model with nothing to fix keeps its initial record as it is
    seg = SegmentationNet()
    assert mark_fixed(seg, X[:1]) == initial_record(seg, X[:1])


def _token_net(num_classes, in_channels=1, image_size=8, widths=(16,)):
    return TokenNet(num_classes, in_channels, image_size)


@pytest.mark.parametrize("method", ["ratio", "auto"])
def test_a_federated_run_leaves_whole_what_a_registered_model_cannot_cut(
        method, tmp_path, caplog):
    from fedprune.config import from_dict
    from fedprune.federated import run_simulation
    from fedprune.models import list_models, register_model

    if "zoo-token-net" not in list_models():
        register_model("zoo-token-net")(_token_net)
    prune = ({"method": "ratio", "ratio": 0.5, "round_to": 1, "start_round": 2,
              "max_prune_round": 2} if method == "ratio" else
             {"method": "auto", "round_to": 4, "max_accuracy_drop": 0.5, "start_round": 2,
              "interval": 1, "max_prune_round": 3})
    cfg = from_dict({"threads": 1, "model": {"name": "zoo-token-net"},
                     "data": {"num_clients": 4, "val_fraction": 0.2},
                     "train": {"local_epochs": 1},
                     "fed": {"rounds": 4, "clients_per_round": 2, "eval_every": 2},
                     "prune": prune})
    with caplog.at_level(logging.WARNING, logger="fedprune.pruning.apply"):
        run_simulation(cfg, tmp_path / "run")
    # refused once, before round 1, naming the layer; never cut
    assert caplog.text.count("group 'embed' (layers embed) left whole") == 1
    rows = [json.loads(x) for x in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert all(r["widths"]["embed"] == 16 for r in rows)
    if method == "ratio":
        assert rows[-1]["widths"]["features.0"] == 8
