"""Variance-reduced attack (VR; Wu et al. 2018, as used in the IR paper): the gradient of the mean loss over
m Gaussian copies x' + σ·n, n ~ N(0, I), all copies differentiated in one batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError


@register("vr")
@dataclass
class VarianceReduction(Component):
    """VR: mean loss over m Gaussian copies. copies: m (20); sigma: noise std in 1/255 units (15, the IR
    paper's ImageNet value at ε=16/255: give `sigma: 0.9375eps` to keep its ratio to another budget)."""

    copies: int = 20
    sigma: float = 15.0

    order = 50
    pixel_params = ("sigma",)

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ConfigError(f"{self.name}: copies must be >= 1, got {self.copies}")
        if self.sigma < 0:
            raise ConfigError(f"{self.name}: sigma must be >= 0 (in 1/255 units), got {self.sigma}")

    def batch_multiplier(self) -> int:
        return self.copies

    def expand(self, points: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, int]:
        m, rows = self.copies, points.shape[0]
        noise = ctx.draw_rows("randn", m * rows, tuple(points.shape[1:]), dtype=points.dtype)
        return points.repeat(m, 1, 1, 1) + (self.sigma / 255.0) * noise, m
