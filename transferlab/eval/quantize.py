"""8-bit quantisation of adversarial images that never leaves the ε-ball.

Rounding (not truncation) to the nearest 8-bit level, then clipping back into the ε-ball around
the 8-bit clean image and into [0,255]. For L2 the clip shrinks δ and rounds each level toward zero,
so the norm can only decrease. Public suites truncate instead, which can exceed ε by one level.
"""

from __future__ import annotations

import torch


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0,1] -> nearest integer levels in [0,255] (float tensor)."""
    return (x * 255).round().clamp(0, 255)


def quantize(x_clean: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Quantised adversarial images, as pixels k/255 in [0,1].

    x_clean must be 8-bit valued (k/255); eps is in [0,1] pixel units (L∞ radius, or L2 norm of δ).
    """
    clean = to_levels(x_clean)
    delta = to_levels(x_adv) - clean
    budget = eps * 255
    if norm == "linf":
        level = torch.floor(torch.tensor(budget + 1e-6))
        delta = delta.clamp(-level, level)
    elif norm == "l2":
        norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.ndim - 1)))
        scale = (budget / norms.clamp_min(1e-12)).clamp(max=1.0)
        delta = torch.where(norms > budget, torch.trunc(delta * scale), delta)
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return (clean + delta).clamp(0, 255) / 255


def perturbation_norms(x_clean: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (L∞, L2) norms of δ in 1/255 levels."""
    delta = to_levels(x_adv) - to_levels(x_clean)
    flat = delta.flatten(1)
    return flat.abs().amax(1), flat.norm(dim=1)
