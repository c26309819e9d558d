"""Vision models of Hugging Face ``transformers``, built from their configuration classes
with random weights (no download), through ``prune_model``: those that once hung (ResNet,
RegNet, BiT, UperNet) or came back broken (UperNet's classes, BiT's GroupNorm) are cut
correctly; those whose patch embedding feeds a fixed-size reshape or slicing (LeViT, Swin) are
refused for that group, named, with the rest cut.  ``transformers`` is the optional ``hf``
extra (``pip install -e '.[hf]'``; ``make test`` installs it)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

T = pytest.importorskip("transformers")

from fedprune.export.onnx import export_onnx
from fedprune.pruning import RatioRule, prune_model, rebuild, zero_removed

SIZE = 64
X = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


class PixelsToLogits(nn.Module):
    """``pixel_values`` in, the model's ``logits`` tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x, return_dict=True)["logits"]


def _resnet_config(**over):
    return T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                          num_labels=10, **over)


# name -> (builder, roots a cut must leave whole (by the layer's name's end), exact)
MODELS = {
    "resnet": (lambda: T.ResNetForImageClassification(_resnet_config()), set(), True),
    "regnet": (lambda: T.RegNetForImageClassification(T.RegNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1], groups_width=8,
        num_labels=10)), set(), True),
    "bit": (lambda: T.BitForImageClassification(T.BitConfig(
        embedding_size=16, hidden_sizes=[32, 64, 64, 128], depths=[1, 1, 1, 1], num_groups=4,
        num_labels=10)), set(), False),  # GroupNorm
    "upernet": (lambda: T.UperNetForSemanticSegmentation(T.UperNetConfig(
        backbone_config=_resnet_config(out_features=["stage1", "stage2", "stage3", "stage4"]),
        hidden_size=32, pool_scales=[1, 2], num_labels=10, use_auxiliary_head=False)),
        set(), True),
    "levit": (lambda: T.LevitForImageClassification(T.LevitConfig(
        image_size=SIZE, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4],
        depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=10)),
        {"patch_embeddings.embedding_layer_4.convolution"}, False),
    "swin": (lambda: T.SwinForImageClassification(T.SwinConfig(
        image_size=SIZE, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
        num_labels=10)), {"patch_embeddings.projection"}, False),
    "convnext": (lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
        hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_labels=10)), set(), False),
}


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return PixelsToLogits(MODELS[name][0]()).eval()


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_transformers_model_is_cut_correctly_or_its_group_refused(name, tmp_path, caplog):
    _, whole, exact = MODELS[name]
    model = _build(name)
    before = _out(model)
    with caplog.at_level(logging.WARNING, logger="fedprune.pruning.apply"):
        res = prune_model(model, X[:1], RatioRule(ratio=0.3))
    refused = {r.root for r in res.refused}
    assert {next(w for w in whole if r.endswith(w)) for r in refused} == whole
    assert all("left whole" in caplog.text and r.root in caplog.text for r in res.refused)
    # the rest is cut, and the output keeps its shape (classes, pixels)
    groups = res.record["groups"]
    assert all(len(g["kept"]) == g["channels"] for g in groups if g["root"] in refused)
    rest = [g for g in groups if g["root"] not in refused]
    assert not rest or sum(len(g["kept"]) for g in rest) < 0.8 * sum(g["channels"] for g in rest)
    after = _out(model)
    assert after.shape == before.shape
    # rebuilt from the JSON record; ONNX Runtime agrees
    fresh = _build(name)
    rebuild(fresh, json.loads(json.dumps(res.record)), X[:1])
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(_out(fresh), after, rtol=0, atol=0)
    export_onnx(model, X[:1], tmp_path / "model.onnx", atol=1e-4)
    if exact:  # zeroed channels removed: no output changes
        zeroed = _build(name)
        zero_removed(zeroed, res.record, X[:1])
        reference = _out(zeroed)
        rebuild(zeroed, res.record, X[:1])
        torch.testing.assert_close(_out(zeroed), reference, rtol=1e-5, atol=1e-5)
