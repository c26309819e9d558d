"""Small hand-built nets for pruning tests: residual, concat, depthwise, grouped."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualNet(nn.Module):
    """stem conv+BN -> block (conv+BN+ReLU, conv+BN) + identity -> ReLU -> GAP -> fc."""

    def __init__(self, c: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = F.relu(x + y)
        return self.fc(x.mean(dim=(2, 3)))

    def get_classifier(self) -> nn.Module:
        return self.fc


class ConcatNet(nn.Module):
    """stem -> [1x1 | 3x3] concat -> conv -> GAP -> fc."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.b1 = nn.Conv2d(6, 5, 1)
        self.b3 = nn.Conv2d(6, 7, 3, padding=1)
        self.post = nn.Conv2d(12, 9, 3, padding=1)
        self.fc = nn.Linear(9, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.b1(x)), F.relu(self.b3(x))], dim=1)
        x = F.relu(self.post(x))
        return self.fc(x.mean(dim=(2, 3)))


class DepthwiseNet(nn.Module):
    """conv -> depthwise conv -> pointwise conv -> grouped conv (2 groups) -> GAP -> fc."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.gconv = nn.Conv2d(12, 12, 3, padding=1, groups=2)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        x = F.relu(self.dw(x))
        x = F.relu(self.pw(x))
        x = F.relu(self.gconv(x))
        return self.fc(x.mean(dim=(2, 3)))
