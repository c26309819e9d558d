"""ResNet-7 of the paper (``resnet7``) and its tiny test variant (``tiny_resnet``).

Structure, re-expressed from the authors' Keras ``Define_ResNet_Model`` / ``residual_block``
(NguyenThaiVu/prune_fl_project, ``utils/model_utils.py``, used by ``fl_resnet_celeb.ipynb``
with ``LIST_NUMBER_FILTERS = [16, 32, 64]``; the notebook prints ``Number of params: 30626``
and ``Number of Conv2D layer: 7``)::

    stem:   conv3x3/2 'same' (widths[0]) + BN + ReLU + maxpool2 'same'
    block:  conv3x3/2 'same' (inner = widths[i]) + BN + ReLU
            conv3x3   'same' (C) + BN
            shortcut conv1x1/2 'same' (C) + BN;  add;  ReLU       for i = 1 .. len(widths)-1
    head:   flatten -> dense(num_classes)

The one point ``method.md`` leaves open is C: in the Keras code the block overwrites its
``num_filters_2`` argument with the block's *input* channel count, so C = widths[0] (16) in
every block; only the first conv of each block is 32 or 64 wide. At 84x84x3 the spatial
sizes are 84 -> 42 -> 21 -> 11 -> 6, the flatten has 16*6*6 = 576 features, and the Keras
count is 30,626 (448 + 64 | 4,640 + 128, 4,624 + 64, 272 + 64 | 9,280 + 256, 9,232 + 64,
272 + 64 | 1,154; "+ x" = BN gamma, beta, moving mean and variance). PyTorch counts only
gamma and beta as parameters (the running statistics are buffers), so
``sum(p.numel() for p in model.parameters())`` is 30,626 - 2*176 = 30,274.

Padding: Keras 'same' gives ceil(n / stride). For a stride-2 3x3 conv on an even input
Keras pads 0 before and 1 after (asymmetric); PyTorch ``padding=1`` pads 1 on both sides.
Both give ceil(n/2) outputs, so shapes, parameter and FLOP counts are identical; the
sampling grid is shifted by one pixel, which matters only when porting Keras weights.
The 1x1/2 shortcut needs no padding (ceil(n/2) either way), and the 'same' max-pool is
``MaxPool2d(2, ceil_mode=True)``. BatchNorm uses Keras's defaults (eps 1e-3, momentum
0.99, i.e. PyTorch ``momentum=0.01``). The model returns logits (Keras ends in softmax) and
flattens in C,H,W order (Keras: H,W,C).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedprune.models.registry import (
    as_int_list,
    check_image_size,
    conv_out,
    keras_init_,
    register_model,
)

BN_EPS = 1e-3  # Keras BatchNormalization default epsilon
BN_MOMENTUM = 0.01  # PyTorch convention for Keras's momentum=0.99


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def resnet_spatial_sizes(image_size: int, n_blocks: int) -> list[int]:
    """Side lengths after the stem conv, the stem pool and each residual block."""
    sizes = [conv_out(image_size, 3, 2, 1)]
    sizes.append(conv_out(sizes[-1], 2, 2, 0, ceil=True))
    for _ in range(n_blocks):
        sizes.append(conv_out(sizes[-1], 3, 2, 1))
    return sizes


class ResidualBlock(nn.Module):
    """conv3x3/2(inner)+BN+ReLU, conv3x3(C)+BN, plus conv1x1/2(C)+BN shortcut, add, ReLU."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, inner, 3, stride=2, padding=1)
        self.bn1 = _bn(inner)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, channels, 3, padding=1)
        self.bn2 = _bn(channels)
        self.shortcut = nn.Sequential(nn.Conv2d(channels, channels, 1, stride=2), _bn(channels))
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output with the same channels as ``x`` and half (ceil) the side."""
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu_out(y + self.shortcut(x))


class ResNet7(nn.Module):
    """Stem + ``len(widths) - 1`` residual blocks + flatten + Linear."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 84,
        widths: Sequence[int] = (16, 32, 64),
        name: str = "resnet7",
    ) -> None:
        super().__init__()
        self.widths = as_int_list(widths)
        self.input_shape: tuple[int, int, int] = (in_channels, image_size, image_size)
        n_blocks = len(self.widths) - 1
        # Every BN must see > 1 value per channel at batch size 1: last map at least 2x2.
        check_image_size(name, image_size, lambda n: resnet_spatial_sizes(n, n_blocks)[-1] >= 2)
        c = self.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, stride=2, padding=1),
            _bn(c),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.blocks = nn.Sequential(*[ResidualBlock(c, inner) for inner in self.widths[1:]])
        side = resnet_spatial_sizes(image_size, n_blocks)[-1]
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c * side * side, num_classes)
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.flatten(self.blocks(self.stem(x))))

    def get_classifier(self) -> nn.Module:
        """The final Linear; its outputs must never be pruned."""
        return self.classifier


@register_model("resnet7")
def resnet7(
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 84,
    widths: Sequence[int] = (16, 32, 64),
) -> ResNet7:
    """Paper ResNet-7 (CelebA: 30,626 Keras params, 30,274 PyTorch params)."""
    return ResNet7(num_classes, in_channels, image_size, widths, name="resnet7")


@register_model("tiny_resnet")
def tiny_resnet(
    num_classes: int, in_channels: int = 1, image_size: int = 24, widths: Sequence[int] = (4, 8, 8)
) -> ResNet7:
    """ResNet-7 code with tiny widths and input, for fast tests (24 -> 12 -> 6 -> 3 -> 2)."""
    return ResNet7(num_classes, in_channels, image_size, widths, name="tiny_resnet")
