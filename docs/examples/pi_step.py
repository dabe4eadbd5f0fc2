"""A step rule: PI-FGSM's amplification (Gao et al., ECCV 2020, "Patch-wise Attack for Fooling Deep
Neural Network", Alg. 1): steps of β·α, the part of the accumulated perturbation beyond ε projected back
onto its neighbourhood by a uniform kernel. Through the `update` hook (one component may own it); the loop
projects onto the ε-ball afterwards. Paper defaults: β = 10, γ = 16/255 (we give γ relative to ε: 1.0),
kernel 3×3 at 224 px. L∞ only."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transferlab.attacks.base import Component
from transferlab.attacks.registry import register


@register("pi_example")
@dataclass
class PatchwiseStep(Component):
    """δ += β·α·sign(g) + γ·sign(W ∗ C), C the amplified excess over ε (per image, kept across steps)."""

    beta: float = 10.0
    gamma: float = 1.0  # times ε
    kernel: int = 3

    def setup(self, ctx) -> None:
        if ctx.norm != "linf":
            raise ValueError(f"{self.name}: the patch-wise step is defined for L∞")
        ctx.state[f"{self.name}:a"] = torch.zeros_like(ctx.x)

    def update(self, delta: torch.Tensor, grad: torch.Tensor, ctx) -> torch.Tensor:
        amplified = ctx.state[f"{self.name}:a"] + self.beta * ctx.alpha * grad.sign()
        excess = (amplified.abs() - ctx.eps).clamp_min(0) * amplified.sign()
        w = torch.ones(3, 1, self.kernel, self.kernel, dtype=grad.dtype, device=grad.device) / self.kernel**2
        spread = F.conv2d(excess, w, padding=self.kernel // 2, groups=3)
        projection = self.gamma * ctx.eps * spread.sign()
        ctx.state[f"{self.name}:a"] = amplified + projection
        return delta + self.beta * ctx.alpha * grad.sign() + projection
