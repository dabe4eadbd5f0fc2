"""DenseNet-BC (Huang et al. 2017, §3 "DenseNet-BC") for 32-px CIFAR inputs.

3x3 stem of 2k channels, three dense blocks of `n` bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3
conv to k, concatenated to the input), transitions with compression 0.5 (BN-ReLU-1x1 conv, 2x2 avg-pool),
final BN-ReLU, global average pool, linear. The paper's DenseNet-BC (L=100, k=12) has n=16; depth L=6n+4.
Keys: `stem`, `block{1,2,3}.{j}.{bn1,conv1,bn2,conv2}`, `trans{1,2}.{bn,conv}`, `bn`, `classifier`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Bottleneck", "CifarDenseNet", "cifar_densenet_bc"]


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k); output = cat(input, new k channels)."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression) then 2x2 average pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class CifarDenseNet(nn.Module):
    """DenseNet-BC with three dense blocks of `n` layers each, growth rate `growth`, compression 0.5."""

    def __init__(self, n: int = 16, growth: int = 12, num_classes: int = 10, stem_stride: int = 1) -> None:
        super().__init__()
        c = 2 * growth
        self.stem = nn.Conv2d(3, c, 3, stride=stem_stride, padding=1, bias=False)
        for b in (1, 2, 3):
            layers = []
            for _ in range(n):
                layers.append(Bottleneck(c, growth))
                c += growth
            setattr(self, f"block{b}", nn.Sequential(*layers))
            if b < 3:
                setattr(self, f"trans{b}", Transition(c, c // 2))
                c //= 2
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.block1(self.stem(x)))
        x = self.trans2(self.block2(x))
        x = self.relu(self.bn(self.block3(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def cifar_densenet_bc(
    n: int = 6, growth: int = 12, num_classes: int = 10, stem_stride: int = 2
) -> CifarDenseNet:
    """Untrained DenseNet-BC of depth 6n+4 (default n=6: DenseNet-BC-40, k=12); the default `stem_stride` 2
    runs the dense blocks at 16/8/4 px instead of the paper's 32/16/8 (about 5x cheaper to train on a CPU)."""
    return CifarDenseNet(n, growth, num_classes, stem_stride)
