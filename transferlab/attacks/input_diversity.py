"""Diverse inputs (DI; Xie et al. 2019): a random resize-and-pad of every model input.

With probability p per input, the H×W image is resized (nearest neighbour, PyTorch's convention
src = ⌊i·H/h⌋, as the reference's NEAREST_NEIGHBOR) to h×w with h uniform in [H, H'), H' = ⌊H·r⌋, and
zero-padded at a random offset (top uniform in [0, H'−h)) to H'×W'. Otherwise the unchanged image is
resized to H'×W' (nearest). The output is always H'×W' (the model wrapper resizes to its own input size).
All inputs are produced in one batched gather (differentiable); each row's draws come from its image's
stream. If ⌊H·r⌋ = H (tiny images), H' = H + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError


def padded_size(size: int, rate: float) -> int:
    return max(int(size * rate), size + 1)


def _axis_index(size: int, out: int, new: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Source index along one axis for every output position: (R, out); `size` (a zero pad) outside."""
    pos = torch.arange(out, device=new.device)[None, :] - offset[:, None]  # position inside the resized image
    inside = (pos >= 0) & (pos < new[:, None])
    src = torch.div(pos.clamp_min(0) * size, new[:, None], rounding_mode="floor")
    return torch.where(inside, src.clamp_max(size - 1), torch.full_like(src, size))


def resize_pad(x: torch.Tensor, heights, widths, tops, lefts, out_h: int, out_w: int) -> torch.Tensor:
    """Per-row nearest resize of x (R,C,H,W) to heights×widths, pasted at (tops, lefts) into
    zeros of size (R,C,out_h,out_w)."""
    r, c, h, w = x.shape
    rows = _axis_index(h, out_h, heights, tops)  # (R, out_h) in [0, h]
    cols = _axis_index(w, out_w, widths, lefts)  # (R, out_w) in [0, w]
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1))  # index h / w reads the zero row / column
    flat_index = rows[:, :, None] * (w + 1) + cols[:, None, :]  # (R, out_h, out_w)
    out = padded.flatten(2).gather(2, flat_index.flatten(1)[:, None, :].expand(r, c, -1))
    return out.view(r, c, out_h, out_w)


@register("di")
@dataclass
class InputDiversity(Component):
    """DI: random resize-and-pad with probability p (0.5); output ⌊H·resize_rate⌋ px (resize_rate 1.1)."""

    p: float = 0.5
    resize_rate: float = 1.1

    order = 50

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise ConfigError(f"{self.name}: p must be in [0, 1], got {self.p}")
        if self.resize_rate <= 1:
            raise ConfigError(f"{self.name}: resize_rate must be > 1, got {self.resize_rate}")

    def draws(self, rows: int, h: int, w: int, ctx: AttackContext) -> tuple[torch.Tensor, ...]:
        """(apply, height, width, top, left) per row; four uniforms per row from its image's stream."""
        u = ctx.draw_rows("rand", rows, (4,), dtype=torch.float64).to(ctx.x.device)
        out_h, out_w = padded_size(h, self.resize_rate), padded_size(w, self.resize_rate)
        apply = u[:, 0] < self.p
        height = h + (u[:, 1] * (out_h - h)).long()
        width = w + (u[:, 1] * (out_w - w)).long()
        top = (u[:, 2] * (out_h - height)).long()
        left = (u[:, 3] * (out_w - width)).long()
        height = torch.where(apply, height, torch.full_like(height, out_h))
        width = torch.where(apply, width, torch.full_like(width, out_w))
        top, left = top * apply, left * apply
        return apply, height, width, top, left

    def transform(self, inputs: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        r, _, h, w = inputs.shape
        _, height, width, top, left = self.draws(r, h, w, ctx)
        out_h, out_w = padded_size(h, self.resize_rate), padded_size(w, self.resize_rate)
        return resize_pad(inputs, height, width, top, left, out_h, out_w)
