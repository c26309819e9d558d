"""Small models in the shapes users bring, for the pruning engine's tests.

Each class is a structure that once hung, broke or was cut wrongly in real vision models: a
head inside a ``Sequential``, a segmentation head behind ``F.interpolate``, GroupNorm, a
conv feeding a token reshape, patch merging by slicing, squeeze-excitation and several
outputs.  ``ZOO`` lists them with what a cut must leave whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class HeadInSequential(nn.Module):
    """A residual trunk whose classifier is a Linear inside a Sequential (with dropout)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _block(3, 16)
        self.blocks = nn.ModuleList([_block(16, 16) for _ in range(4)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1),
                                  nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


class SegmentationNet(nn.Module):
    """An encoder, a 1x1 conv classifier per pixel, then ``F.interpolate`` to the input size."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.encoder = nn.Sequential(_block(3, 16), nn.MaxPool2d(2), _block(16, 32))
        self.classifier = nn.Conv2d(32, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(self.encoder(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class GroupNormNet(nn.Module):
    """Convs followed by GroupNorm with 4 groups (a cut must keep a multiple of 4)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.norm1 = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.norm2 = nn.GroupNorm(4, 32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class TokenNet(nn.Module):
    """A conv patch embedding whose output is reshaped into tokens of a fixed size for a
    Linear (the channels and positions mixed by the reshape: no cut of it can be right)."""

    def __init__(self, classes: int = 10, in_channels: int = 3, image_size: int = 16) -> None:
        super().__init__()
        self.features = _block(in_channels, 16)
        self.embed = nn.Conv2d(16, 16, 4, stride=4)  # 16 channels of (image_size / 4)^2
        self.token = 2 * (image_size // 4) ** 2  # tokens of 2 channels' worth of positions
        self.proj = nn.Linear(self.token, 24)
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.features(x))
        tokens = x.reshape(x.shape[0], 8, self.token)
        return self.fc(self.proj(tokens).mean(dim=1))


class PatchMerging(nn.Module):
    """Swin-style: channels-last tokens, 2 x 2 neighbours sliced and concatenated along the
    channels, LayerNorm(4C) and a Linear down to 2C."""

    def __init__(self, classes: int = 10, dim: int = 16) -> None:
        super().__init__()
        self.features = _block(3, 16)
        self.embed = nn.Conv2d(16, dim, 2, stride=2)
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, 2 * dim)
        self.fc = nn.Linear(2 * dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.features(x)).permute(0, 2, 3, 1)  # B, H, W, C
        x0, x1 = x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :]
        x2, x3 = x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], dim=-1)
        x = self.reduce(self.norm(x))
        return self.fc(x.mean(dim=(1, 2)))


class SqueezeExcitation(nn.Module):
    """Convs with a squeeze-excitation gate (pool, reduce, expand, sigmoid, multiply)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _block(3, 16)
        self.conv2 = _block(16, 32)
        self.reduce = nn.Conv2d(32, 8, 1)
        self.expand = nn.Conv2d(8, 32, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean(dim=(2, 3), keepdim=True)))))
        return self.fc((x * gate).mean(dim=(2, 3)))


class TwoHeads(nn.Module):
    """Two outputs in a dict: class logits (a Linear) and a per-pixel map (a conv)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_block(3, 16), _block(16, 32))
        self.logits = nn.Linear(32, classes)
        self.mask = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {"logits": self.logits(h.mean(dim=(2, 3))), "mask": self.mask(h)}


# name -> (class, groups a cut must leave whole, whether removing zeroed channels is exact)
ZOO: dict[str, tuple[type[nn.Module], set[str], bool]] = {
    "head-in-sequential": (HeadInSequential, set(), True),
    "segmentation": (SegmentationNet, set(), True),
    "groupnorm": (GroupNormNet, set(), False),  # GroupNorm re-normalises over fewer channels
    "token-reshape": (TokenNet, {"embed"}, True),
    "patch-merging": (PatchMerging, {"embed"}, True),
    "squeeze-excitation": (SqueezeExcitation, set(), True),
    "two-heads": (TwoHeads, set(), True),
}
