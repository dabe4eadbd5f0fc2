"""Translation invariance (TI; Dong et al. 2019): the gradient smoothed by a normalised Gaussian kernel.

The kernel is the reference's gkern: k samples of the standard normal density on linspace(−nsig, nsig, k),
outer product, divided by its sum; applied per channel (depthwise, zero padding k//2) to the gradient.

The kernel must scale with the image: 15 px is sized for 224-px ImageNet and wrecks 32-px CIFAR attacks,
where 5 px behaves (DESIGN §5). The default size is the odd integer nearest 15·√(H/224), at least 3:
15 at 224 px, 17 at 299 px, 5 at 32 px, 5 at 16 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError


def default_kernel_size(height: int) -> int:
    """Nearest odd integer to 15·√(H/224), at least 3."""
    raw = 15.0 * math.sqrt(height / 224.0)
    return max(3, 2 * round((raw - 1) / 2) + 1)


def gaussian_kernel(size: int, nsig: float = 3.0, dtype=torch.float32) -> torch.Tensor:
    """(size, size) normalised Gaussian kernel, the reference's gkern(size, nsig)."""
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * t**2)
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).to(dtype)


def smooth(grad: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D convolution of (B,C,H,W) with a (k,k) kernel, zero padding k//2."""
    c, k = grad.shape[1], kernel.shape[-1]
    weight = kernel.to(grad)[None, None].expand(c, 1, k, k)
    return F.conv2d(grad, weight, padding=k // 2, groups=c)


@register("ti")
@dataclass
class TranslationInvariance(Component):
    """TI: Gaussian-smoothed gradient. kernel_size: px (None: odd ≈ 15·√(H/224), ≥ 3); nsig: range (3)."""

    kernel_size: int | None = None
    nsig: float = 3.0

    order = 40  # process: before MI/NI (60)

    def __post_init__(self) -> None:
        if self.kernel_size is not None and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise ConfigError(
                f"{self.name}: kernel_size must be a positive odd integer, got {self.kernel_size}"
            )
        if self.nsig <= 0:
            raise ConfigError(f"{self.name}: nsig must be > 0, got {self.nsig}")

    def size_for(self, height: int) -> int:
        return self.kernel_size if self.kernel_size is not None else default_kernel_size(height)

    def setup(self, ctx: AttackContext) -> None:
        ctx.state[f"{self.name}:kernel"] = gaussian_kernel(
            self.size_for(ctx.x.shape[-2]), self.nsig, ctx.x.dtype
        )

    def teardown(self, ctx: AttackContext) -> None:
        ctx.state.pop(f"{self.name}:kernel", None)

    def process(self, grad: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return smooth(grad, ctx.state[f"{self.name}:kernel"])
