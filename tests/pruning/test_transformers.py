"""Vision models of Hugging Face ``transformers``, built from their configuration classes
with random weights (no download), through ``prune_model``: those that once hung (ResNet,
RegNet, BiT, UperNet) or came back broken (UperNet's classes, BiT's GroupNorm) are cut
correctly; those whose patch embedding feeds a fixed-size reshape or slicing (LeViT, Swin) are
refused for that group, named, with the rest cut.  ``transformers`` is the optional ``hf``
extra (``pip install -e '.[hf]'``; ``make test`` installs it)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from fedprune.export.onnx import export_onnx
from fedprune.pruning import RatioRule, prune_model, rebuild, zero_removed


def _script():  # the models and their wrapper are scripts/prune_transformers.py's
    path = Path(__file__).resolve().parents[2] / "scripts" / "prune_transformers.py"
    spec = importlib.util.spec_from_file_location("prune_transformers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _script()
BUILDERS = SCRIPT.models()
X = torch.randn(2, 3, SCRIPT.SIZE, SCRIPT.SIZE, generator=torch.Generator().manual_seed(0))

# name -> (roots a cut must leave whole (by the layer's name's end), exact)
MODELS = {
    "ResNet": (set(), True),
    "RegNet-Y": (set(), True),
    "BiT": (set(), False),  # GroupNorm
    "UperNet": (set(), True),
    "LeViT": ({"patch_embeddings.embedding_layer_4.convolution"}, False),
    "Swin": ({"patch_embeddings.projection"}, False),
    "ConvNeXt": (set(), False),  # LayerNorm over the channels
}


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return SCRIPT.PixelsToLogits(BUILDERS[name]()).eval()


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_transformers_model_is_cut_correctly_or_its_group_refused(name, tmp_path, caplog):
    whole, exact = MODELS[name]
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
