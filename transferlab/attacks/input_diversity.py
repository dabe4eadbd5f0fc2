"""Diverse inputs (DI; Xie et al., "Improving Transferability of Adversarial Examples with Input Diversity",
CVPR 2019): every model input randomly resized and padded, with probability p.

Defining step: with probability p per input, resize the H×W image to a random size h×w and pad it with a
constant at a random offset to a fixed size; otherwise leave it. Four uniforms per row from its image's
stream decide (apply, size, top, left) in every variant, so the variants see the same draws; all rows are
produced in one batched, differentiable gather (per-row sizes included). Variants (``variant``):

* ``'resample'`` (this project's procedure and default until 2026-12; tables made before say so): H' = ⌊H·r⌋
  (r = ``resize_rate`` 1.1); with probability p, nearest resize (PyTorch's convention src = ⌊i·H/h⌋, as TF's
  NEAREST_NEIGHBOR) to h uniform in [H, H'), zero pad at top uniform in [0, H'−h); otherwise the unchanged
  image nearest-resized to H'×W'. Every output is H'×W' (the model wrapper resizes to its own input size).
* ``'original'`` (default: the paper's procedure) — github:cihangxie/DI-2-FGSM ``attack.py`` (commit 10ffd9b),
  ``input_diversity`` lines 153–164: ``image_resize`` 330 for 299-px images (line 39; H' = ⌊1.1·H⌋ here),
  ``prob`` 0.5 (line 48); with probability p a NEAREST_NEIGHBOR resize to rnd uniform in [299, 330)
  (``tf.random_uniform`` excludes maxval), pad top in [0, 330−rnd), and the 330-px canvas goes to the network;
  otherwise ``input_tensor`` itself, at 299 px (the unchanged branch is H, not H'). The network sees both
  sizes directly there (by the layer arithmetic of slim's Inception-v3, 330 px and 299 px both reach its 8×8
  final grid). The pad is 0 in the source's [−1, 1] pixels (line 90), i.e. 0.5 here (``fill``). Here the
  canvas rows are brought to H×W with the model's own interpolation (what the model wrapper does to any H'-px
  input), so unchanged rows reach the network exactly unchanged and every row fits one batch; when the attack
  resolution is the model's input size, a transformed row reaches the network as it would at H' through the
  wrapper.
* ``'transferattack'`` — github:Trustworthy-AI-Group/TransferAttack
  ``transferattack/input_transformation/dim.py`` (commit 2663e4a): ``resize_rate`` 1.1, ``diversity_prob``
  0.5 (line 34); with probability p (line 47) a *bilinear* resize (align_corners=False) to rnd in [H, H')
  (lines 51–55), zero pad (lines 57–65) and a bilinear resize back to H×W (line 68); otherwise the input.
* ``'torchattacks'`` — torchattacks 3.5.1 ``attacks/difgsm.py`` (pip-installed here): ``resize_rate`` 0.9,
  ``diversity_prob`` 0.5 (lines 43–44); ``input_diversity`` (lines 57–82) *shrinks*: bilinear resize to rnd
  in [⌊0.9·H⌋, H), zero pad to H×H, with probability p, else the input. Output H×W.

Why 'original' is the default: it is the official procedure (the rule for every default here); the CPU
numbers do not single out a better one. CIFAR cross-architecture (results/cifar10_cross_arch: ResNet-20,
ε=8/255, α=2/255, 10 steps, n=500), gain over PGD in points to RN56-B / ShuffleNetV2 / VGG / MobileNetV2 /
DenseNet / ConvMixer: original +1.0 (interval contains 0) / +7.4 / +5.8 / +11.2 / +9.8 / +3.4;
torchattacks +2.0 / +11.4 / +7.6 / +14.6 / +13.2 / +3.4 (best or level everywhere); resample −5.2 / +2.4
(contains 0) / +5.2 / +14.2 / +13.4 / +3.6 (it loses between ResNets, where the other two gain). In parity
(results/parity) 'resample' differs from both ports on 5–6 of 7 targets (−4.8 to −10.6 points), and
'torchattacks' matches torchattacks 3.5.1 on 7 of 7. ``p`` = 0.5 as the official ``prob`` (line 48).

The DI copies in the VT and BSR repositories (``image_resize`` 331, then a NEAREST resize of either branch
back to 299 px) are none of these variants.

``resize_rate`` None takes the variant's (0.9 for torchattacks, else 1.1); ``fill`` None takes the
variant's pad value ([0,1] pixels: 0.5 for original, else 0). The sources draw one coin, size and offset per
batch; here each input has its own. Rectangular images use the same fraction of the size range on both
axes (the sources are square-only: TA and torchattacks size both axes from the width). If ⌊H·r⌋ = H (tiny
images), H' = H + 1 (and for the shrink, the lower size is at most H − 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError

VARIANTS = ("original", "resample", "transferattack", "torchattacks")
SMOOTH_MODES = ("bilinear", "bicubic")
RESIZE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def padded_size(size: int, rate: float) -> int:
    return max(int(size * rate), size + 1)


def shrunk_size(size: int, rate: float) -> int:
    """torchattacks' lower bound ⌊size·rate⌋ for rate < 1, at most size − 1."""
    return min(int(size * rate), size - 1)


def _axis_index(size: int, out: int, new: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Source index along one axis for every output position: (R, out); `size` (a zero pad) outside."""
    pos = torch.arange(out, device=new.device)[None, :] - offset[:, None]  # position inside the resized image
    inside = (pos >= 0) & (pos < new[:, None])
    src = torch.div(pos.clamp_min(0) * size, new[:, None], rounding_mode="floor")
    return torch.where(inside, src.clamp_max(size - 1), torch.full_like(src, size))


def resize_pad(x: torch.Tensor, heights, widths, tops, lefts, out_h: int, out_w: int,
               fill: float = 0.0) -> torch.Tensor:
    """Per-row nearest resize of x (R,C,H,W) to heights×widths, pasted at (tops, lefts) into
    a canvas of `fill` of size (R,C,out_h,out_w)."""
    r, c, h, w = x.shape
    rows = _axis_index(h, out_h, heights, tops)  # (R, out_h) in [0, h]
    cols = _axis_index(w, out_w, widths, lefts)  # (R, out_w) in [0, w]
    padded = F.pad(x, (0, 1, 0, 1), value=fill)  # index h / w reads the pad row / column
    flat_index = rows[:, :, None] * (w + 1) + cols[:, None, :]  # (R, out_h, out_w)
    out = padded.flatten(2).gather(2, flat_index.flatten(1)[:, None, :].expand(r, c, -1))
    return out.view(r, c, out_h, out_w)


def _axis_bilinear(size: int, out: int, new: torch.Tensor, offset: torch.Tensor):
    """Along one axis, for a resize of `size` px to `new` px (per row, F.interpolate's bilinear with
    align_corners=False: src = max((i + ½)·size/new − ½, 0)) pasted at `offset` into `out` px: the two
    source indices and weights per output position, (R, out) each; outside, index `size` (the pad) with
    weights (1, 0)."""
    pos = torch.arange(out, device=new.device)[None, :] - offset[:, None]
    inside = (pos >= 0) & (pos < new[:, None])
    scale = size / new[:, None].double()
    src = ((pos.double() + 0.5) * scale - 0.5).clamp_min(0)
    i0 = torch.floor(src).long().clamp_max(size - 1)
    i1 = (i0 + 1).clamp_max(size - 1)
    l1 = src - i0
    pad = torch.full_like(i0, size)
    return (torch.where(inside, i0, pad), torch.where(inside, i1, pad),
            torch.where(inside, 1 - l1, torch.ones_like(l1)), torch.where(inside, l1, torch.zeros_like(l1)))


def bilinear_resize_pad(x: torch.Tensor, heights, widths, tops, lefts, out_h: int, out_w: int,
                        fill: float = 0.0) -> torch.Tensor:
    """Per-row bilinear resize (align_corners=False, no antialias) of x (R,C,H,W) to heights×widths,
    pasted at (tops, lefts) into a canvas of `fill` of size (R,C,out_h,out_w)."""
    r, c, h, w = x.shape
    ry0, ry1, wy0, wy1 = _axis_bilinear(h, out_h, heights, tops)
    rx0, rx1, wx0, wx1 = _axis_bilinear(w, out_w, widths, lefts)
    flat = F.pad(x, (0, 1, 0, 1), value=fill).flatten(2)
    out = x.new_zeros(r, c, out_h, out_w)
    for ry, wy in ((ry0, wy0), (ry1, wy1)):
        for rx, wx in ((rx0, wx0), (rx1, wx1)):
            index = (ry[:, :, None] * (w + 1) + rx[:, None, :]).flatten(1)
            picked = flat.gather(2, index[:, None, :].expand(r, c, -1)).view(r, c, out_h, out_w)
            out = out + (wy[:, :, None] * wx[:, None, :]).to(x.dtype)[:, None] * picked
    return out


def model_interpolation(model: nn.Module | None) -> str:
    """The resize mode the model wrapper uses (`Classifier.interpolation`; an ensemble's if its members
    agree); bilinear otherwise."""
    mode = getattr(model, "interpolation", None)
    if mode is None and model is not None and hasattr(model, "members"):
        modes = {getattr(m, "interpolation", None) for m in model.members}
        mode = modes.pop() if len(modes) == 1 else None
    return mode if mode in RESIZE_MODES else "bilinear"


def resize_like_model(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """F.interpolate as `Classifier.resize` calls it (no antialias, align_corners=False for smooth modes)."""
    kwargs = {"align_corners": False, "antialias": False} if mode in SMOOTH_MODES else {}
    return F.interpolate(x, size=size, mode=mode, **kwargs)


@dataclass
class Geometry:
    """Per row (R,): apply, resized height and width, top and left offsets (px); canvas size (px)."""

    apply: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    out_h: int
    out_w: int


@register("di")
@dataclass
class InputDiversity(Component):
    """DI: random resize-and-pad with probability p (0.5). variant: 'original' (default, DI-2-FGSM: nearest,
    pad 0.5, else unchanged) | 'resample' (the earlier default: always ⌊H·r⌋ px) | 'transferattack'
    (bilinear, back to H) | 'torchattacks' (shrink r = 0.9). resize_rate r (None: 1.1, torchattacks 0.9);
    fill: pad in [0,1]."""

    p: float = 0.5
    resize_rate: float | None = None
    variant: str = "original"
    fill: float | None = None

    order = 50
    former_defaults = {"variant": "resample"}  # the default until 2026-12 (see the module docstring)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"{self.name}: variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.resize_rate is None:
            self.resize_rate = 0.9 if self.variant == "torchattacks" else 1.1
        if self.fill is None:
            self.fill = 0.5 if self.variant == "original" else 0.0
        if not 0 <= self.p <= 1:
            raise ConfigError(f"{self.name}: p must be in [0, 1], got {self.p}")
        if self.variant == "torchattacks":
            if not 0 < self.resize_rate < 1:
                raise ConfigError(f"{self.name}: the torchattacks variant shrinks: resize_rate must be in "
                                  f"(0, 1), got {self.resize_rate} (for enlarging use 'original')")
        elif self.resize_rate <= 1:
            raise ConfigError(f"{self.name}: resize_rate must be > 1, got {self.resize_rate}")
        if not 0 <= self.fill <= 1:
            raise ConfigError(f"{self.name}: fill is a [0,1] pixel value, got {self.fill}")

    def draws(self, rows: int, h: int, w: int, ctx: AttackContext) -> tuple[torch.Tensor, ...]:
        """'resample': (apply, height, width, top, left) per row; four uniforms per row from its image's
        stream (unapplied rows: the whole H'×W' canvas at offset 0)."""
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

    def geometry(self, rows: int, h: int, w: int, ctx: AttackContext) -> Geometry:
        """The variant's per-row geometry from the same four uniforms per row."""
        if self.variant == "resample":
            out_h, out_w = padded_size(h, self.resize_rate), padded_size(w, self.resize_rate)
            return Geometry(*self.draws(rows, h, w, ctx), out_h, out_w)
        u = ctx.draw_rows("rand", rows, (4,), dtype=torch.float64).to(ctx.x.device)
        if self.variant == "torchattacks":  # sizes in [⌊r·H⌋, H), canvas H
            lo_h, lo_w = shrunk_size(h, self.resize_rate), shrunk_size(w, self.resize_rate)
            out_h, out_w = h, w
        else:  # sizes in [H, H'), canvas H'
            lo_h, lo_w = h, w
            out_h, out_w = padded_size(h, self.resize_rate), padded_size(w, self.resize_rate)
        height = lo_h + (u[:, 1] * (out_h - lo_h)).long()
        width = lo_w + (u[:, 1] * (out_w - lo_w)).long()
        top = (u[:, 2] * (out_h - height)).long()
        left = (u[:, 3] * (out_w - width)).long()
        return Geometry(u[:, 0] < self.p, height, width, top, left, out_h, out_w)

    def canvas(self, inputs: torch.Tensor, g: Geometry) -> torch.Tensor:
        """Every row resized and pasted into the out_h×out_w canvas (nearest for resample/original,
        bilinear otherwise), whether or not it is applied."""
        args = (inputs, g.height, g.width, g.top, g.left, g.out_h, g.out_w)
        if self.variant in ("resample", "original"):
            return resize_pad(*args, fill=float(self.fill))
        return bilinear_resize_pad(*args, fill=float(self.fill))

    def render(self, inputs: torch.Tensor, g: Geometry, model: nn.Module | None = None) -> torch.Tensor:
        """Model inputs for geometry g: H'×W' for 'resample', H×W (unapplied rows unchanged) otherwise."""
        canvas = self.canvas(inputs, g)
        h, w = inputs.shape[-2:]
        if self.variant == "resample":
            return canvas
        if self.variant == "original":
            canvas = resize_like_model(canvas, (h, w), model_interpolation(model))
        elif self.variant == "transferattack":
            canvas = F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)
        return torch.where(g.apply[:, None, None, None], canvas, inputs)

    def transform(self, inputs: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        r, _, h, w = inputs.shape
        return self.render(inputs, self.geometry(r, h, w, ctx), ctx.model)
