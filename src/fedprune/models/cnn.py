"""Plain CNNs of the paper: ``cnn_femnist`` and ``cnn_celeba``.

Re-expressed from the authors' Keras code (``Define_Simple_CNN_Model`` and the CelebA
notebooks of NguyenThaiVu/prune_fl_project):

* ``cnn_femnist`` (1x28x28, widths [32, 64]): per width, conv5x5 *valid* + ReLU +
  MaxPool2d(2) (Keras default pooling is 'valid', i.e. floor); then global average pool and
  one Linear. 62 classes: 832 + 51,264 + 4,030 = 56,126 parameters.
* ``cnn_celeba`` (3x84x84, widths [32, 32, 32, 32]): per width, conv5x5 *same* (padding 2)
  + ReLU + MaxPool2d(2); flatten (32*5*5 = 800 at 84x84) and one Linear.
  2 classes: 2,432 + 3 * 25,632 + 1,602 = 80,930 parameters.

Differences from Keras, none of which changes a count: the models return logits (Keras ends
in softmax; use ``nn.CrossEntropyLoss``), tensors are channels-first, so the flatten order
is C,H,W rather than Keras's H,W,C (matters only when porting Keras weights), and kernels
use Keras's Glorot-uniform init with zero biases.
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


def _conv_relu_pool(c_in: int, c_out: int, padding: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2)]


def _cnn_feature_size(image_size: int, n_blocks: int, padding: int) -> int:
    """Spatial size after ``n_blocks`` x [conv5x5(padding), maxpool2]."""
    size = image_size
    for _ in range(n_blocks):
        size = conv_out(conv_out(size, 5, 1, padding), 2, 2)
    return size


class CNNFemnist(nn.Module):
    """conv5x5 valid blocks -> global average pool -> Linear (``cnn_femnist``)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 28,
        widths: Sequence[int] = (32, 64),
    ) -> None:
        super().__init__()
        self.widths = as_int_list(widths)
        self.input_shape: tuple[int, int, int] = (in_channels, image_size, image_size)
        check_image_size(
            "cnn_femnist", image_size, lambda n: _cnn_feature_size(n, len(self.widths), 0) >= 1
        )
        layers: list[nn.Module] = []
        c_in = in_channels
        for w in self.widths:
            layers += _conv_relu_pool(c_in, w, padding=0)
            c_in = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    def as_sequence(self) -> list[nn.Module]:
        """The modules ``forward`` applies, in order (used by batched client training)."""
        return [*self.features, self.pool, nn.Flatten(), self.classifier]

    def get_classifier(self) -> nn.Module:
        """The final Linear; its outputs must never be pruned."""
        return self.classifier


class CNNCeleba(nn.Module):
    """conv5x5 same blocks -> flatten -> Linear (``cnn_celeba``)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 84,
        widths: Sequence[int] = (32, 32, 32, 32),
    ) -> None:
        super().__init__()
        self.widths = as_int_list(widths)
        self.input_shape: tuple[int, int, int] = (in_channels, image_size, image_size)
        n = len(self.widths)
        check_image_size("cnn_celeba", image_size, lambda s: _cnn_feature_size(s, n, 2) >= 1)
        layers: list[nn.Module] = []
        c_in = in_channels
        for w in self.widths:
            layers += _conv_relu_pool(c_in, w, padding=2)
            c_in = w
        self.features = nn.Sequential(*layers)
        side = _cnn_feature_size(image_size, n, 2)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c_in * side * side, num_classes)
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.flatten(self.features(x)))

    def as_sequence(self) -> list[nn.Module]:
        """The modules ``forward`` applies, in order (used by batched client training)."""
        return [*self.features, self.flatten, self.classifier]

    def get_classifier(self) -> nn.Module:
        """The final Linear; its outputs must never be pruned."""
        return self.classifier


@register_model("cnn_femnist")
def cnn_femnist(
    num_classes: int, in_channels: int = 1, image_size: int = 28, widths: Sequence[int] = (32, 64)
) -> CNNFemnist:
    """Paper CNN for FEMNIST (56,126 params at 62 classes)."""
    return CNNFemnist(num_classes, in_channels, image_size, widths)


@register_model("cnn_celeba")
def cnn_celeba(
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 84,
    widths: Sequence[int] = (32, 32, 32, 32),
) -> CNNCeleba:
    """Paper CNN for CelebA (80,930 params at 2 classes)."""
    return CNNCeleba(num_classes, in_channels, image_size, widths)
