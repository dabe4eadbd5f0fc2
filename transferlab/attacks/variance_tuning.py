"""Variance tuning (Wang & He, CVPR 2021): the `vt` component; presets `vmi` = mi+vt, `vni` = ni+vt.

At step t the gradient used is ∇_t + v_t, where v_t comes from the previous step (v_0 = 0), then

    v_{t+1} = 1/N · Σ_k ∇L(x_t + u_k) − ∇_t,   u_k ~ U[−β·ε, β·ε]^d per image,

with x_t the current adversarial image and ∇_t the step's gradient (at x_t for VMI, at NI's look-ahead
point for VNI — as in the reference code, JHL-HUST/VT). The N neighbours are differentiated in one
batched call (copy-major) through the other components' copies and transforms, without regularisers.
For L2 the box half-width is β·ε·√(3/d) (d = C·H·W), so that ‖u_k‖₂ ≈ β·ε.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import Attack, AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError


def box_offsets(ctx: AttackContext, copies: int, half_width: float) -> torch.Tensor:
    """Uniform offsets in a ±half_width box (pixels in [0,1]), copy-major (copies·B, C, H, W), each
    image's rows from its own stream (PGN's ζε ball and GRA's βε box draw their neighbours this way)."""
    x = ctx.x
    u = ctx.draw_rows("rand", copies * ctx.batch, tuple(x.shape[1:]), dtype=x.dtype)
    return (u.to(x.device) * 2 - 1) * half_width


@register("vt")
@dataclass
class VarianceTuning(Component):
    """Variance tuning: ∇ + v with v = mean neighbour gradient − gradient, from the previous step.

    neighbours: N samples (20); beta: neighbourhood half-width as a multiple of ε (1.5).
    """

    neighbours: int = 20
    beta: float = 1.5

    order = 20

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise ConfigError(f"{self.name}: neighbours must be >= 1, got {self.neighbours}")
        if self.beta < 0:
            raise ConfigError(f"{self.name}: beta must be >= 0, got {self.beta}")

    def batch_multiplier(self) -> int:
        return self.neighbours

    def cost_multiplier(self) -> float:
        return 1.0 + self.neighbours

    def _key(self, what: str) -> str:
        return f"{self.name}:{what}"

    def setup(self, ctx: AttackContext) -> None:
        ctx.state[self._key("variance")] = torch.zeros_like(ctx.x)

    def teardown(self, ctx: AttackContext) -> None:
        ctx.state.pop(self._key("variance"), None)

    def half_width(self, ctx: AttackContext) -> float:
        """Half-width of the uniform neighbourhood box, in [0,1] pixel units."""
        if ctx.norm == "l2":
            return self.beta * ctx.eps * (3.0 / ctx.x[0].numel()) ** 0.5
        return self.beta * ctx.eps

    def neighbour_offsets(self, ctx: AttackContext) -> torch.Tensor:
        """u_k for every image, copy-major (N·B, C, H, W): row k·B + b belongs to image b."""
        x = ctx.x
        u = ctx.streams.rand(self.neighbours, *x.shape[1:], dtype=x.dtype)  # (B, N, C, H, W)
        u = (u * 2 - 1) * self.half_width(ctx)
        return u.transpose(0, 1).reshape(-1, *x.shape[1:])

    def refine(
        self, grad: torch.Tensor, point: torch.Tensor, attack: Attack, ctx: AttackContext
    ) -> torch.Tensor:
        out = grad + ctx.state[self._key("variance")]
        centre = point if ctx.x_adv is None else ctx.x_adv.detach()
        n = self.neighbours
        points = centre.repeat(n, 1, 1, 1) + self.neighbour_offsets(ctx)
        g = attack.loss_gradient(points, ctx.y.repeat(n), ctx, regularise=False)
        ctx.state[self._key("variance")] = g.view(n, *grad.shape).mean(0) - grad
        return out
