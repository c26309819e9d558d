"""Naive-Inception network of the paper (``inception``) and ``tiny_inception`` for tests.

Re-expressed from the authors' Keras ``define_inception_model`` in
``fl_inception_femnist.ipynb`` (NguyenThaiVu/prune_fl_project), whose printed summary gives
246,236 parameters for 28x28x1 and 62 classes. Every conv there has ``activation='relu'``,
so every conv here is followed by ReLU::

    stem:    conv3x3/2 valid (widths[0]) + ReLU
    module1: [conv1x1 (widths[1]) | conv3x3 (widths[2]) | conv5x5 (widths[3])], each 'same'
             + ReLU on the module input, concatenated along channels
    module2: the same with widths[4..6] on module1's output
    reduce:  conv3x3/2 valid (widths[7]) + ReLU, conv3x3/2 valid (widths[8]) + ReLU
    head:    global average pool -> Linear(50) + ReLU -> Linear(num_classes)

Counts (bias included). FEMNIST 1x28x28, 62 classes (28 -> 13 -> 13 -> 6 -> 2):
320 | 528 + 4,624 + 12,816 | 1,568 + 13,856 + 38,432 | 83,040 + 83,040 | 4,850 + 3,162
= 246,236. CelebA 3x84x84, 2 classes: the stem has 896 and the last Linear 102, so
246,236 + 576 - 3,060 = 243,752. There is no BatchNorm, so Keras and PyTorch agree.
The model returns logits (Keras ends in softmax); kernels use Glorot-uniform init.
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

HIDDEN_UNITS = 50  # width of the dense layer before the classifier (not pruned as a conv)


class NaiveInception(nn.Module):
    """Parallel 1x1 / 3x3 / 5x5 same-padded convs (each + ReLU), concatenated."""

    def __init__(self, in_channels: int, w1: int, w3: int, w5: int) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(nn.Conv2d(in_channels, w1, 1), nn.ReLU())
        self.branch3 = nn.Sequential(nn.Conv2d(in_channels, w3, 3, padding=1), nn.ReLU())
        self.branch5 = nn.Sequential(nn.Conv2d(in_channels, w5, 5, padding=2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenation of the three branches along channels (w1 + w3 + w5)."""
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x)], dim=1)


def inception_spatial_sizes(image_size: int) -> list[int]:
    """Side lengths after the stem and the two valid stride-2 reduction convs."""
    stem = conv_out(image_size, 3, 2)
    reduce1 = conv_out(stem, 3, 2)
    return [stem, reduce1, conv_out(reduce1, 3, 2)]


class InceptionNet(nn.Module):
    """Stem, two naive inception modules, two reduction convs, GAP, dense(50), dense."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 28,
        widths: Sequence[int] = (32, 16, 16, 16, 32, 32, 32, 96, 96),
        name: str = "inception",
    ) -> None:
        super().__init__()
        self.widths = as_int_list(widths)
        if len(self.widths) != 9:
            raise ValueError(
                f"{name!r} needs 9 widths (stem, 3 + 3 branches, 2 convs), got {self.widths}"
            )
        self.input_shape: tuple[int, int, int] = (in_channels, image_size, image_size)
        check_image_size(name, image_size, lambda n: inception_spatial_sizes(n)[-1] >= 1)
        w = self.widths
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w[0], 3, stride=2), nn.ReLU())
        self.inception1 = NaiveInception(w[0], w[1], w[2], w[3])
        self.inception2 = NaiveInception(w[1] + w[2] + w[3], w[4], w[5], w[6])
        self.reduce = nn.Sequential(
            nn.Conv2d(w[4] + w[5] + w[6], w[7], 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(w[7], w[8], 3, stride=2),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(nn.Linear(w[8], HIDDEN_UNITS), nn.ReLU())
        self.classifier = nn.Linear(HIDDEN_UNITS, num_classes)
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        x = self.inception2(self.inception1(self.stem(x)))
        x = self.flatten(self.pool(self.reduce(x)))
        return self.classifier(self.hidden(x))

    def get_classifier(self) -> nn.Module:
        """The final Linear; its outputs must never be pruned."""
        return self.classifier


@register_model("inception")
def inception(
    num_classes: int,
    in_channels: int = 1,
    image_size: int = 28,
    widths: Sequence[int] = (32, 16, 16, 16, 32, 32, 32, 96, 96),
) -> InceptionNet:
    """Paper Inception (FEMNIST 246,236 params; CelebA 3x84x84, 2 classes: 243,752)."""
    return InceptionNet(num_classes, in_channels, image_size, widths, name="inception")


@register_model("tiny_inception")
def tiny_inception(
    num_classes: int,
    in_channels: int = 1,
    image_size: int = 16,
    widths: Sequence[int] = (4, 2, 2, 2, 4, 4, 4, 8, 8),
) -> InceptionNet:
    """Inception code with tiny widths and a 1x16x16 input (16 -> 7 -> 3 -> 1), for tests."""
    return InceptionNet(num_classes, in_channels, image_size, widths, name="tiny_inception")
