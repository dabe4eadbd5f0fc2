"""Momentum components: MI-FGSM (Dong et al. 2018) and NI-FGSM (Lin et al. 2020).

MI accumulates g ← μ·g + ∇/‖∇‖₁ per image in ``process`` (after TI's smoothing) and the base loop
steps along g. The L1 normalisation uses the *mean* absolute value (‖∇‖₁/d, d = C·H·W), as the
reference code does: the sign of g is the same as with the plain L1 norm, and NI's look-ahead α·μ·g
then has the reference scale (about α per pixel per accumulated step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError

MOMENTUM_KEY = "momentum"


def l1_normalise(grad: torch.Tensor) -> torch.Tensor:
    """∇ / mean|∇| per image; an all-zero gradient stays zero."""
    scale = grad.abs().flatten(1).mean(1).view(-1, *([1] * (grad.ndim - 1)))
    return torch.where(
        scale > 0, grad / scale.clamp_min(torch.finfo(grad.dtype).tiny), torch.zeros_like(grad)
    )


@register("mi")
@dataclass
class Momentum(Component):
    """MI-FGSM: g ← μ·g + ∇/‖∇‖₁ per image; the step follows g. mu: decay factor (1.0)."""

    mu: float = 1.0

    order = 60  # process: after TI (40), so the smoothed gradient is accumulated
    prefix_stable = True  # deterministic, and no step depends on the step count

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ConfigError(f"{self.name}: mu must be >= 0, got {self.mu}")

    def setup(self, ctx: AttackContext) -> None:
        if MOMENTUM_KEY in ctx.state:
            raise ConfigError(
                f"two momentum components in one attack ({ctx.state[MOMENTUM_KEY + '_owner']} and "
                f"{self.name}); 'ni' already includes MI's momentum"
            )
        ctx.state[MOMENTUM_KEY] = torch.zeros_like(ctx.x)
        ctx.state[MOMENTUM_KEY + "_owner"] = self.name

    def teardown(self, ctx: AttackContext) -> None:
        ctx.state.pop(MOMENTUM_KEY, None)
        ctx.state.pop(MOMENTUM_KEY + "_owner", None)

    def process(self, grad: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        g = self.mu * ctx.state[MOMENTUM_KEY] + l1_normalise(grad)
        ctx.state[MOMENTUM_KEY] = g
        return g


@register("ni")
@dataclass
class Nesterov(Momentum):
    """NI-FGSM: MI's momentum, with the gradient taken at the look-ahead point x' + α·μ·g.

    For L2 the look-ahead is α·μ·g/√d (d = C·H·W): one mean-normalised gradient has an L2 norm of about
    √d, so this keeps the look-ahead about one step of L2 size α per accumulated gradient.
    """

    def lookahead(self, point: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        scale = ctx.alpha * self.mu
        if ctx.norm == "l2":
            scale /= point[0].numel() ** 0.5
        return point + scale * ctx.state[MOMENTUM_KEY]
