"""MobileNetV2 (Sandler et al. 2018) for 32-px CIFAR inputs: inverted residual blocks with linear bottlenecks.

Adapted to 32-px inputs: the stem conv has stride 1 and the last stride-2 stage runs at stride 1
(`CIFAR_STRIDES`), so 32 -> 16 -> 8 -> 4 px. `width` multiplies every channel count (rounded to multiples
of 8); `repeats` overrides the blocks per stage (paper: 1, 2, 3, 4, 3, 3, 1). Each block is
`1x1 expand (t x) -> 3x3 depthwise -> 1x1 project`, with the identity skip when stride 1 and in == out.
Keys: `stem.{0,1}`, `blocks.{i}.conv.{...}`, `head.{0,1}`, `classifier`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InvertedResidual", "CifarMobileNetV2", "cifar_mobilenetv2"]

#: (expansion t, channels c at width 1.0, repeats n) per stage, as in the paper's Table 2.
_STAGES = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
#: stride of each stage's first block: the paper's (1, 2, 2, 2, 1, 2, 1) without its last downsampling,
#: after a stride-1 stem: 32 -> 16 -> 8 -> 4 px, the three downsamplings of the CIFAR ResNets.
CIFAR_STRIDES = (1, 2, 2, 2, 1, 1, 1)


def _round8(channels: float) -> int:
    return max(8, int(channels + 4) // 8 * 8)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    pad = kernel // 2
    return [nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU6()]


class InvertedResidual(nn.Module):
    """Expand (1x1, ReLU6), depthwise 3x3 (ReLU6), project (1x1, linear); skip when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = _conv_bn_relu(cin, hidden, 1) if expand != 1 else []
        layers += _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_skip else out


class CifarMobileNetV2(nn.Module):
    """3x3 stem (stride 1), inverted-residual stages, 1x1 head conv, global average pool, linear."""

    def __init__(
        self,
        width: float = 1.0,
        repeats: tuple[int, ...] | None = None,
        head: int = 1280,
        num_classes: int = 10,
        strides: tuple[int, ...] = CIFAR_STRIDES,
    ) -> None:
        super().__init__()
        stem = _round8(32 * width)
        self.stem = nn.Sequential(*_conv_bn_relu(3, stem, 3))
        blocks: list[nn.Module] = []
        cin = stem
        for k, (t, c, n) in enumerate(_STAGES):
            cout = _round8(c * width)
            for j in range(repeats[k] if repeats is not None else n):
                blocks.append(InvertedResidual(cin, cout, strides[k] if j == 0 else 1, t))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn_relu(cin, head, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def cifar_mobilenetv2(
    width: float = 0.5, repeats: tuple[int, ...] | None = (1, 2, 2, 2, 2, 2, 1), head: int = 640,
    num_classes: int = 10,
) -> CifarMobileNetV2:
    """Untrained CIFAR MobileNetV2 at `width`, `repeats` blocks per stage, a `head`-channel 1x1 conv."""
    return CifarMobileNetV2(width, repeats, head, num_classes)
