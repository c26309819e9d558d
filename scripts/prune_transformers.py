"""Cut the vision models of Hugging Face ``transformers`` with ``prune_model`` and say how it went.

Each model is built from its configuration class with random weights (no download; small
widths and depths so that the whole table takes a minute or two on 2 cores), wrapped so that
``pixel_values`` go in and the ``logits`` tensor comes out, and cut by a fixed ratio of each
group's filters (L1).  A row says whether the cut model runs with outputs of the same shape,
whether the JSON record rebuilds it from a fresh copy (same outputs), whether removing the
channels changes no output once they were zeroed (:func:`~fedprune.pruning.zero_removed`;
not expected where a LayerNorm or GroupNorm normalises over the channels), whether ONNX Runtime
agrees with PyTorch (or why there was no export), which groups were left whole and why, and
how long the cut took (a hang would show as the time limit).

Usage (needs the ``hf`` extra: ``pip install -e '.[hf]'``)::

    python scripts/prune_transformers.py [--ratio 0.3] [MODEL ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

SIZE = 64


class PixelsToLogits(nn.Module):
    """``pixel_values`` in, the model's ``logits`` tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x, return_dict=True)["logits"]


def models() -> dict[str, Callable[[], nn.Module]]:
    import transformers as T

    def resnet(**over):
        return T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 32, 64],
                              depths=[1, 1, 1, 1], num_labels=10, **over)

    small = {"hidden_sizes": [16, 32, 32, 64], "depths": [1, 1, 1, 1], "num_labels": 10}
    return {
        "ResNet": lambda: T.ResNetForImageClassification(resnet()),
        "RegNet-Y": lambda: T.RegNetForImageClassification(T.RegNetConfig(
            embedding_size=16, groups_width=8, layer_type="y", **small)),
        "BiT": lambda: T.BitForImageClassification(T.BitConfig(
            embedding_size=16, hidden_sizes=[32, 64, 64, 128], depths=[1, 1, 1, 1],
            num_groups=4, num_labels=10)),
        "UperNet": lambda: T.UperNetForSemanticSegmentation(T.UperNetConfig(
            backbone_config=resnet(out_features=["stage1", "stage2", "stage3", "stage4"]),
            hidden_size=32, pool_scales=[1, 2], num_labels=10, use_auxiliary_head=False)),
        "LeViT": lambda: T.LevitForImageClassification(T.LevitConfig(
            image_size=SIZE, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4],
            depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=10)),
        "Swin": lambda: T.SwinForImageClassification(T.SwinConfig(
            image_size=SIZE, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
            num_labels=10)),
        "MobileNetV1": lambda: T.MobileNetV1ForImageClassification(T.MobileNetV1Config(
            depth_multiplier=0.25, image_size=SIZE, num_labels=10)),
        "MobileNetV2": lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config(
            depth_multiplier=0.35, num_labels=10)),
        "EfficientNet": lambda: T.EfficientNetForImageClassification(T.EfficientNetConfig(
            image_size=SIZE, width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280,
            num_labels=10)),
        "ConvNeXt": lambda: T.ConvNextForImageClassification(T.ConvNextConfig(**small)),
        "ConvNeXtV2": lambda: T.ConvNextV2ForImageClassification(T.ConvNextV2Config(**small)),
        "PoolFormer": lambda: T.PoolFormerForImageClassification(T.PoolFormerConfig(**small)),
        "MobileViT": lambda: T.MobileViTForImageClassification(T.MobileViTConfig(
            image_size=SIZE, hidden_sizes=[16, 24, 32],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 64], num_labels=10)),
        "HGNetV2": lambda: T.HGNetV2ForImageClassification(T.HGNetV2Config(num_labels=10)),
        "TextNet": lambda: T.TextNetForImageClassification(T.TextNetConfig(num_labels=10)),
    }


def row(name: str, make: Callable[[], nn.Module], ratio: float, tmp: Path) -> str:
    from fedprune.export.onnx import ExportError, export_onnx
    from fedprune.pruning import RatioRule, prune_model, rebuild, zero_removed

    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))

    def build() -> nn.Module:
        torch.manual_seed(0)
        return PixelsToLogits(make()).eval()

    model = build()
    with torch.no_grad():
        before = model(x)
    t0 = time.perf_counter()
    res = prune_model(model, x[:1], RatioRule(ratio=ratio))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        after = model(x)
    fresh = build()
    rebuild(fresh, json.loads(json.dumps(res.record)), x[:1])
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        rebuilt = torch.equal(fresh(x), after)
    zeroed = build()  # the removed channels zeroed first: does removing them change nothing?
    zero_removed(zeroed, res.record, x[:1])
    with torch.no_grad():
        reference = zeroed(x)
    rebuild(zeroed, res.record, x[:1])
    with torch.no_grad():
        gap = float((zeroed(x) - reference).abs().max())
    exact = "yes" if gap <= 1e-4 else f"no ({gap:.1g})"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # (the exporter prints its graph on failure)
            export_onnx(model, x[:1], tmp / f"{name}.onnx", atol=1e-4)
        onnx = "agrees"
    except ExportError as exc:
        onnx = f"differs ({str(exc).split(': ', 1)[-1][:60]})"
    except Exception as exc:  # noqa: BLE001 - the exporter's own limits, reported
        onnx = f"no export ({type(exc).__name__}: {' '.join(str(exc).split())[:60]})"
    channels = sum(g["channels"] for g in res.record["groups"])
    kept = sum(len(g["kept"]) for g in res.record["groups"])
    whole = "; ".join(f"`{r.root}`: {r.reason[:110]}" for r in res.refused) or "-"
    shape = (f"{list(before.shape)} kept" if after.shape == before.shape
             else f"{list(before.shape)} -> {list(after.shape)}")
    return (f"| {name} | {len(res.record['groups'])} | {channels} -> {kept} | {shape} | "
            f"{'same outputs' if rebuilt else 'DIFFERS'} | {exact} | {onnx} | {whole} | "
            f"{seconds:.1f} s |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="MODEL")
    ap.add_argument("--ratio", type=float, default=0.3)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    try:
        table = models()
    except ImportError:
        print("needs transformers: pip install -e '.[hf]'", file=sys.stderr)
        return 2
    unknown = [n for n in args.names if n not in table]
    if unknown:
        print(f"unknown models {unknown}; choose from {sorted(table)}", file=sys.stderr)
        return 2
    print(f"ratio {args.ratio} of every group's filters, input 1 x 3 x {SIZE} x {SIZE}\n")
    print("| model | groups | channels | output | rebuilt from JSON | zeroed channels removed: "
          "outputs unchanged | ONNX Runtime | left whole | cut took |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names or table:
            try:
                print(row(name, table[name], args.ratio, Path(tmp)), flush=True)
            except Exception as exc:  # noqa: BLE001 - one model's failure is its row
                print(f"| {name} | error: {type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:150]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
