"""Tests for fedprune.models: exact paper counts, shapes, errors and torch-pruning tracing.

Keras vs PyTorch counts: Keras ``count_params()`` includes BatchNorm's moving mean and
moving variance (non-trainable weights), PyTorch keeps them as buffers, not parameters.
So for resnet7 (the only model with BN) Keras = PyTorch parameters + running_mean.numel()
+ running_var.numel(). The CNNs and Inception have no BN, so both counts agree.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from fedprune.models import create_model, list_models, model_defaults, register_model
from fedprune.models.resnet import ResidualBlock

PAPER_MODELS = ["cnn_femnist", "cnn_celeba", "resnet7", "inception"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def keras_params(model: nn.Module) -> int:
    stats = sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))
    )
    return n_params(model) + stats


def tf_profiler_flops(model: nn.Module, num_classes: int) -> int:
    """FLOPs as TF's profiler counts the frozen Keras graph (BN folded, ReLU free)."""
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):  # Conv2D (2 per MAC) + BiasAdd
            total += (
                2 * m.kernel_size[0] * m.kernel_size[1] * m.in_channels * out.numel() + out.numel()
            )
        elif isinstance(m, nn.Linear):  # MatMul + BiasAdd
            total += 2 * m.in_features * m.out_features + m.out_features
        elif isinstance(m, nn.MaxPool2d):
            total += 4 * out.numel()
        elif isinstance(m, nn.AdaptiveAvgPool2d):  # Mean
            total += inp[0].numel()
        elif isinstance(m, ResidualBlock):  # Add
            total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, *model.input_shape))
    for h in handles:
        h.remove()
    return total + 5 * num_classes  # Softmax


def test_cnn_femnist_params() -> None:
    # conv1 1*5*5*32 + 32 = 832;  conv2 32*5*5*64 + 64 = 51,264;  (GAP -> 64)
    # dense 64*62 + 62 = 4,030;  total 832 + 51,264 + 4,030 = 56,126
    m = create_model("cnn_femnist", num_classes=62, in_channels=1, image_size=28)
    assert n_params(m) == 832 + 51_264 + 4_030 == 56_126
    assert tf_profiler_flops(m, 62) == 7_529_588  # method.md


def test_cnn_celeba_params() -> None:
    # conv1 3*25*32 + 32 = 2,432;  conv2..4 32*25*32 + 32 = 25,632 each;  84 -> 42 -> 21 -> 10 -> 5
    # dense (32*5*5 = 800)*2 + 2 = 1,602;  total 2,432 + 3*25,632 + 1,602 = 80,930
    m = create_model("cnn_celeba", num_classes=2, in_channels=3, image_size=84)
    assert m.get_classifier().in_features == 800
    assert n_params(m) == 2_432 + 3 * 25_632 + 1_602 == 80_930
    assert tf_profiler_flops(m, 2) == 152_485_804  # method.md


def test_resnet7_params_pytorch_and_keras() -> None:
    # 84 -> stem 42 -> pool 21 -> block1 11 -> block2 6; every block's output has 16 channels
    # stem conv 3*9*16 + 16 = 448;  BN(16) 2*16 = 32
    # block1: conv 16*9*32 + 32 = 4,640, BN 64; conv 32*9*16 + 16 = 4,624, BN 32;
    #         shortcut 16*16 + 16 = 272, BN 32                    -> 9,664
    # block2: conv 16*9*64 + 64 = 9,280, BN 128; conv 64*9*16 + 16 = 9,232, BN 32;
    #         shortcut 272, BN 32                                 -> 18,976
    # dense (16*6*6 = 576)*2 + 2 = 1,154
    # PyTorch: 448 + 32 + 9,664 + 18,976 + 1,154 = 30,274
    # Keras adds moving mean + var = 2 * (16 + 32+16+16 + 64+16+16) = 2 * 176 = 352 -> 30,626
    m = create_model("resnet7", num_classes=2, in_channels=3, image_size=84)
    assert m.get_classifier().in_features == 576
    assert n_params(m) == 448 + 32 + 9_664 + 18_976 + 1_154 == 30_274
    assert keras_params(m) == 30_274 + 352 == 30_626
    assert tf_profiler_flops(m, 2) == 5_234_332  # method.md: confirms 42/21/11/6 sizes


def test_inception_params_femnist_and_celeba() -> None:
    # FEMNIST 28 -> stem 13 -> reduce 6 -> 2
    # stem 1*9*32 + 32 = 320
    # module1 (in 32): 32*16 + 16 = 528; 32*9*16 + 16 = 4,624; 32*25*16 + 16 = 12,816
    # module2 (in 48): 48*32 + 32 = 1,568; 48*9*32 + 32 = 13,856; 48*25*32 + 32 = 38,432
    # reduce (in 96): 96*9*96 + 96 = 83,040 twice;  dense 96*50 + 50 = 4,850;  50*62 + 62 = 3,162
    femnist = 320 + 528 + 4_624 + 12_816 + 1_568 + 13_856 + 38_432 + 2 * 83_040 + 4_850 + 3_162
    m = create_model("inception", num_classes=62, in_channels=1, image_size=28)
    assert n_params(m) == femnist == 246_236
    assert tf_profiler_flops(m, 62) == 31_010_894  # fl_inception_femnist.ipynb printout
    # CelebA: stem 3*9*32 + 32 = 896 (+576), last dense 50*2 + 2 = 102 (-3,060)
    m = create_model("inception", num_classes=2, in_channels=3, image_size=84)
    assert n_params(m) == femnist + 576 - 3_060 == 243_752


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_shape(name: str, batch: int) -> None:
    d = model_defaults(name)
    m = create_model(name, num_classes=5, in_channels=d["in_channels"], image_size=d["image_size"])
    assert m.input_shape == (d["in_channels"], d["image_size"], d["image_size"])
    assert m.widths == d["widths"]
    assert m(torch.randn(batch, *m.input_shape)).shape == (batch, 5)  # train mode (BN batch stats)
    m.eval()
    assert m(torch.randn(batch, *m.input_shape)).shape == (batch, 5)
    clf = m.get_classifier()
    assert isinstance(clf, nn.Linear) and clf.out_features == 5
    assert clf is [x for x in m.modules() if isinstance(x, nn.Linear)][-1]


def test_widths_change_shapes() -> None:
    m = create_model("cnn_femnist", num_classes=3, in_channels=1, image_size=28, widths=[8, 12])
    assert m.features[0].out_channels == 8 and m.get_classifier().in_features == 12
    m = create_model("cnn_celeba", num_classes=2, in_channels=3, image_size=84, widths=[4, 5, 6, 7])
    assert m.get_classifier().in_features == 7 * 5 * 5
    m = create_model("resnet7", num_classes=2, in_channels=3, image_size=84, widths=[8, 10, 12])
    assert m.blocks[1].conv1.out_channels == 12 and m.blocks[1].conv2.out_channels == 8
    assert m.get_classifier().in_features == 8 * 6 * 6
    m = create_model(
        "inception", num_classes=4, in_channels=1, image_size=28, widths=[8, 1, 2, 3, 4, 5, 6, 7, 9]
    )
    assert m.inception2.branch1[0].in_channels == 6 and m.reduce[0].in_channels == 15
    assert m.get_classifier().in_features == 50 and m.hidden[0].in_features == 9
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_model_defaults_is_a_copy() -> None:
    model_defaults("resnet7")["widths"].append(99)
    assert model_defaults("resnet7") == {"in_channels": 3, "image_size": 84, "widths": [16, 32, 64]}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "resnet8"}, "unknown model 'resnet8'; choose one of: .*cnn_femnist"),
        ({"widths": [16, 32]}, "needs 3 widths"),
        ({"widths": [16, 0, 64]}, "int >= 1"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
        ({"image_size": 12}, r"too small for 'resnet7'.*image_size >= 17"),
        ({"name": "cnn_femnist", "widths": [8, 8], "image_size": 10}, "image_size >= 16"),
        ({"name": "inception", "widths": None, "image_size": 14}, "image_size >= 15"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "name": "resnet7",
        "num_classes": 2,
        "in_channels": 3,
        "image_size": 84,
    }
    args.update(kwargs)
    name = args.pop("name")
    with pytest.raises(ValueError, match=match):
        create_model(name, **args)  # type: ignore[arg-type]


def test_register_duplicate_name_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet7")(
            lambda num_classes, in_channels=1, image_size=8, widths=(1,): nn.Identity()
        )


def _prune_first_filter(model: nn.Module, conv: nn.Conv2d) -> None:
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.randn(1, *model.input_shape)
    )
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
    assert dg.check_pruning_group(group)
    group.prune()


@pytest.mark.parametrize("name", list_models())
def test_trace_and_prune_first_conv(name: str) -> None:
    d = model_defaults(name)
    model = create_model(
        name, num_classes=4, in_channels=d["in_channels"], image_size=d["image_size"]
    )
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    kept = first.weight.detach()[1:].clone()
    _prune_first_filter(model, first)
    assert first.out_channels == d["widths"][0] - 1
    assert torch.equal(first.weight.detach(), kept)  # surviving filters are the original slices
    assert model.get_classifier().out_features == 4
    assert model(torch.randn(2, *model.input_shape)).shape == (2, 4)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_every_conv_can_be_pruned(name: str) -> None:
    d = model_defaults(name)
    base = create_model(
        name, num_classes=3, in_channels=d["in_channels"], image_size=d["image_size"]
    )
    conv_names = [n for n, m in base.named_modules() if isinstance(m, nn.Conv2d)]
    assert (
        len(conv_names) == {"cnn_femnist": 2, "cnn_celeba": 4, "resnet7": 7, "inception": 9}[name]
    )
    for conv_name in conv_names:
        model = copy.deepcopy(base)
        conv = model.get_submodule(conv_name)
        before = n_params(model)
        _prune_first_filter(model, conv)
        assert n_params(model) < before
        assert model(torch.randn(1, *model.input_shape)).shape == (1, 3)
