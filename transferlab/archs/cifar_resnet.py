"""CIFAR-10 ResNets (He et al. 2016, §4.2): 3 stages of n basic blocks at 16/32/64 channels, 6n+2 layers.

Two published variants whose checkpoints live in `../shared/weights/cifar10/`:

- option A (akamaster/pytorch_resnet_cifar10): parameter-free shortcut that subsamples by 2 and zero-pads
  the new channels; keys `conv1, bn1, layer{1,2,3}.{j}.{conv1,bn1,conv2,bn2}, linear`.
- option B (chenyaofo/pytorch-cifar-models): 1x1 conv + BN projection shortcut `downsample.0/1`; final `fc`.

Every block is residual: `out = relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))`. The residual branch
starts at `layerS.J.conv1`; the ReLUs are separate, non-inplace modules so that hooks can attach to them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet"]


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every other pixel and zero-pad the extra channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        lo = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.pad - lo))


def _projection(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    """Option-B shortcut: 1x1 conv + BN (keys `downsample.0`, `downsample.1`)."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; `option` selects 'A' (`shortcut`) or 'B' (`downsample`)."""

    def __init__(self, in_planes: int, planes: int, stride: int, option: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        changes_shape = stride != 1 or in_planes != planes
        if option == "A":
            self.shortcut = ZeroPadShortcut(in_planes, planes, stride) if changes_shape else nn.Identity()
        elif option == "B":
            self.downsample = _projection(in_planes, planes, stride) if changes_shape else nn.Identity()
        else:
            raise ValueError(f"shortcut option must be 'A' or 'B', got {option!r}")
        self.option = option

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = self.shortcut(x) if self.option == "A" else self.downsample(x)
        return self.relu2(out + skip)


class CifarResNet(nn.Module):
    """3x3 stem at 16 channels, three stages (strides 1, 2, 2), global average pool, linear classifier."""

    def __init__(self, depth: int, option: str, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, n, 1, option)
        self.layer2 = self._stage(16, 32, n, 2, option)
        self.layer3 = self._stage(32, 64, n, 2, option)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head = nn.Linear(64, num_classes)
        self.head_name = "linear" if option == "A" else "fc"
        setattr(self, self.head_name, head)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int, option: str) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride, option)]
        blocks += [BasicBlock(planes, planes, 1, option) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.pool(x), 1)
        return getattr(self, self.head_name)(x)


def cifar_resnet(depth: int, option: str = "A", num_classes: int = 10) -> CifarResNet:
    """Build an untrained CIFAR ResNet-`depth` with shortcut option 'A' (akamaster) or 'B' (chenyaofo)."""
    return CifarResNet(depth, option, num_classes)
