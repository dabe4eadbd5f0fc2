"""ShuffleNetV2 with a CIFAR stem (chenyaofo/pytorch-cifar-models `cifar10_shufflenetv2_x0_5`).

Torchvision's layout with two changes for 32-px inputs: the stem conv has stride 1 and there is no max-pool.
Stages 2/3/4 repeat 4/8/4 units; each stage's first unit has stride 2, so 32 -> 16 -> 8 -> 4 px.
Key layout (Sequential indices count the ReLUs, so they matter for strict loading):
`conv1.{0,1}`, `stageS.J.branch1.{0,1,2,3}` (only J=0), `stageS.J.branch2.{0,1,3,4,5,6}`, `conv5.{0,1}`, `fc`.

Stride-1 units are split-residual: half of the channels pass through unchanged (the skip), the other half
goes through `branch2` (its first module `branch2.0`), then the halves are concatenated and shuffled.
Stride-2 units (J=0) have no identity path: `branch1` and `branch2` both transform the input.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ShuffleUnit", "CifarShuffleNetV2", "cifar_shufflenetv2"]

_WIDTHS = {"x0_5": (24, 48, 96, 192, 1024), "x1_0": (24, 116, 232, 464, 1024)}
_REPEATS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave channels across `groups` (B, g*c, H, W) -> (B, c*g, H, W)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit; `stride == 1` splits the channels (split-residual), `stride == 2` downsamples."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 1 and cin != cout:
            raise ValueError("a stride-1 ShuffleNetV2 unit needs cin == cout")
        if stride > 1:
            depthwise = _conv_bn(cin, cin, 3, stride, groups=cin)
            self.branch1 = nn.Sequential(*depthwise, *_conv_bn(cin, half, 1), nn.ReLU())
        else:
            self.branch1 = nn.Sequential()
        branch2_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            *_conv_bn(branch2_in, half, 1),
            nn.ReLU(),
            *_conv_bn(half, half, 3, stride, groups=half),
            *_conv_bn(half, half, 1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            skip, rest = x.chunk(2, dim=1)
            out = torch.cat((skip, self.branch2(rest)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class CifarShuffleNetV2(nn.Module):
    """Stem (3x3, stride 1) -> stage2/3/4 -> conv5 (1x1) -> global mean -> fc."""

    def __init__(self, widths: tuple[int, ...], repeats: tuple[int, ...] = _REPEATS, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(3, widths[0], 3), nn.ReLU())
        cin = widths[0]
        for index, (n, cout) in enumerate(zip(repeats, widths[1:4], strict=True), start=2):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"stage{index}", nn.Sequential(*units))
            cin = cout
        self.conv5 = nn.Sequential(*_conv_bn(cin, widths[4], 1), nn.ReLU())
        self.fc = nn.Linear(widths[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean(dim=(2, 3))
        return self.fc(x)


def cifar_shufflenetv2(width: str = "x0_5", num_classes: int = 10) -> CifarShuffleNetV2:
    """Build an untrained CIFAR ShuffleNetV2 of width multiplier `width` ('x0_5' or 'x1_0')."""
    if width not in _WIDTHS:
        raise ValueError(f"unknown ShuffleNetV2 width {width!r}; choose from {sorted(_WIDTHS)}")
    return CifarShuffleNetV2(_WIDTHS[width], num_classes=num_classes)
