"""ConvMixer (Trockman & Kolter 2022, "Patches Are All You Need?") for 32-px CIFAR inputs.

Patch embedding (conv with kernel = stride = `patch`, GELU, BN), then `depth` blocks of
`residual(depthwise k x k conv, GELU, BN)` followed by `pointwise 1x1 conv, GELU, BN`; global average pool,
linear. The paper's CIFAR-10 models are ConvMixer-256/8 with patch 1 or 2 and kernel 5 to 9.
Keys: `embed.{0,2}`, `blocks.{i}.{depthwise,bn1,pointwise,bn2}`, `classifier`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MixerBlock", "ConvMixer", "cifar_convmixer"]


class MixerBlock(nn.Module):
    """Spatial mixing (depthwise conv, residual) then channel mixing (pointwise conv), each GELU + BN."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, kernel, groups=dim, padding=kernel // 2)
        self.bn1 = nn.BatchNorm2d(dim)
        self.pointwise = nn.Conv2d(dim, dim, 1)
        self.bn2 = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.bn1(self.act(self.depthwise(x)))
        return self.bn2(self.act(self.pointwise(x)))


class ConvMixer(nn.Module):
    """ConvMixer-`dim`/`depth` with `patch` x `patch` patches and `kernel` x `kernel` depthwise convs."""

    def __init__(
        self, dim: int = 256, depth: int = 8, kernel: int = 5, patch: int = 2, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Conv2d(3, dim, patch, stride=patch), nn.GELU(), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[MixerBlock(dim, kernel) for _ in range(depth)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


def cifar_convmixer(
    dim: int = 128, depth: int = 8, kernel: int = 5, patch: int = 4, num_classes: int = 10
) -> ConvMixer:
    """Untrained ConvMixer-`dim`/`depth` (default 128/8, kernel 5, patch 4: 8x8 tokens)."""
    return ConvMixer(dim, depth, kernel, patch, num_classes)
