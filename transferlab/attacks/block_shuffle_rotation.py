"""Block shuffle and rotation (BSR; Wang, He, Wang & Wang, "Boosting Adversarial Transferability by Block
Shuffle and Rotation", CVPR 2024): the gradient averaged over N copies of the image, each split into n×n
blocks that are shuffled and rotated by small random angles.

Defining step (per image, per step, per copy): split the rows into n strips and the columns into n strips of
random lengths, permute the row strips and the column strips, rotate every block about its own centre by a
random angle (bilinear; what a rotation brings in from outside the block is a constant fill), and average the
objective over the N copies (one batched model call). Everything is one differentiable gather (exact w.r.t.
the input; a zero angle gives a pure block permutation).

Variants (``variant``), read from the code of each source:

* ``'official'`` (default) — github:Trustworthy-AI-Group/BSR, ``mi_bsr.py`` (commit 6ec37d9):
  n = 2 (flag ``num_block``, line 59), N = 20 (``num_copies``, line 60), angle ~ truncated normal with
  σ = 0.2 rad (``max_angles``, line 62, used as the ``stddev`` of ``tf.truncated_normal`` on line 178, which
  redraws beyond 2σ: |angle| < 0.4 rad ≈ 23°), one angle per image per block, ``tfa.image.rotate`` bilinear.
  Strip lengths (``get_length``, lines 150–156): w ~ U[0,1)ⁿ, round(w·L/Σw), the rounding remainder added to
  the longest; one row permutation and one column permutation per copy (lines 169–179), so the blocks keep
  a grid. The images are in [−1, 1] there (line 111) and ``tfa.image.rotate`` fills with 0, so the fill is
  0.5 in our [0,1] pixels (``fill``). tfa's bilinear sampler reads the fill for every neighbour outside the
  block, reproduced exactly.
* ``'transferattack'`` — github:Trustworthy-AI-Group/TransferAttack,
  ``transferattack/input_transformation/bsr.py`` (commit 2663e4a): n = 3 (``num_block``, line 35), N = 20
  (``num_scale``, line 35; its docstring's "num_scale=10", line 28, is not the default), angle ~ U(−24°, 24°)
  (``T.RandomRotation``, line 54, bilinear, fill 0 through torchvision's fill mask: value·mask there, not
  value + fill·(1−mask)), strip weights w ~ U(1, 2]ⁿ (``np.random.uniform(2, size=n)``, line 42, i.e. low=2,
  high=1). Its shuffle (lines 57–61) differs in structure: a random axis first, those strips permuted, each
  *strip* rotated whole, then each strip split along the other axis with its own lengths and permutation
  (the pieces do not form a grid). Reproduced as written; the angle is ``angle`` = 24° in radians.

Differences from both sources, by design: every draw is per image, per copy and per step from the image's
own stream (the sources draw one angle per image per block, but share lengths and permutations across the
batch, and the official TF1 code draws lengths and permutations with numpy while building the graph, so
they are fixed for the whole run and only the angles change per step); gradients are autograd's exact
adjoint of the bilinear sampler (tfa registers the inverse rotation of the gradient as its gradient). The
paper itself could not be read here; every default above is from the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError

VARIANTS = ("official", "transferattack")
#: per variant: (blocks, angle in rad, fill in [0,1] pixels)
DEFAULTS = {"official": (2, 0.2, 0.5), "transferattack": (3, math.radians(24.0), 0.0)}
#: tf.truncated_normal redraws values beyond two standard deviations
TRUNCATION = 2.0


# ------------------------------------------------------------------------------------------- layout helpers
def split_lengths(weights: torch.Tensor, size: int) -> torch.Tensor:
    """(R, n) integer lengths summing to `size`: round(w/Σw·size) (half to even, as np.round), the remainder
    added to the first longest (``rand_norm[rand_norm.argmax()] += length - rand_norm.sum()`` there)."""
    total = weights.sum(1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    lengths = torch.round(weights / total * size).long()
    rows = torch.arange(lengths.shape[0], device=lengths.device)
    lengths[rows, lengths.argmax(1)] += size - lengths.sum(1)
    return lengths


def permutation(u: torch.Tensor) -> torch.Tensor:
    """Uniformly random permutations (along the last dim) from uniforms: their argsort."""
    return torch.argsort(u, dim=-1)


@dataclass
class StripLayout:
    """Per output position along one axis (R, L): its output strip, position inside the strip, and the source
    strip's start and length."""

    strip: torch.Tensor
    local: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor


def strip_layout(lengths: torch.Tensor, perm: torch.Tensor, size: int) -> StripLayout:
    """Output strip k holds source strip perm[k] (lengths in source order); strips may be empty."""
    r, n = lengths.shape
    out_len = lengths.gather(1, perm)
    out_end = out_len.cumsum(1).contiguous()
    pos = torch.arange(size, device=lengths.device).expand(r, size).contiguous()
    strip = torch.searchsorted(out_end, pos, right=True).clamp_max(n - 1)
    local = pos - (out_end - out_len).gather(1, strip)
    src = perm.gather(1, strip)
    start = (lengths.cumsum(1) - lengths).gather(1, src)
    return StripLayout(strip, local, start, lengths.gather(1, src))


def sample_bilinear(
    x: torch.Tensor, sy: torch.Tensor, sx: torch.Tensor, bounds: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear samples of x (R,C,H,W) at float pixel coordinates sy, sx (R,Ho,Wo), reading only neighbours
    inside per-pixel bounds (y_lo, y_hi, x_lo, x_hi; hi exclusive). Returns (Σ w·x over valid neighbours,
    Σ w over valid neighbours), so a constant fill f for invalid neighbours is value + (1 − mask)·f."""
    r, c, h, w = x.shape
    y_lo, y_hi, x_lo, x_hi = bounds
    y0, x0 = torch.floor(sy), torch.floor(sx)
    wy1, wx1 = (sy - y0).to(x.dtype), (sx - x0).to(x.dtype)
    y0, x0 = y0.long(), x0.long()
    flat = x.flatten(2)
    value = x.new_zeros((r, c) + tuple(sy.shape[1:]))
    mask = x.new_zeros(sy.shape)
    for dy, wy in ((0, 1 - wy1), (1, wy1)):
        yy = y0 + dy
        valid_y = (yy >= y_lo) & (yy < y_hi)
        for dx, wx in ((0, 1 - wx1), (1, wx1)):
            xx = x0 + dx
            weight = wy * wx * (valid_y & (xx >= x_lo) & (xx < x_hi)).to(x.dtype)
            index = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).flatten(1)
            picked = flat.gather(2, index[:, None, :].expand(r, c, -1)).view_as(value)
            value = value + weight[:, None] * picked
            mask = mask + weight
    return value, mask


def rotate_coords(
    yc: torch.Tensor, xc: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source offsets (dy, dx) from a block centre for output offsets (yc, xc): tfa's
    ``angles_to_projective_transforms`` (x' = cos·x − sin·y, y' = sin·x + cos·y, output to input), which
    torchvision's ``rotate`` also uses (y down, pixel-centre origin)."""
    return sin * xc + cos * yc, cos * xc - sin * yc


def truncated_normal(u: torch.Tensor, sigma: float, bound: float = TRUNCATION) -> torch.Tensor:
    """σ·z with z standard normal conditioned on |z| < bound, by the inverse CDF of uniforms u."""
    lo = torch.special.ndtr(torch.tensor(-bound, dtype=u.dtype))
    return sigma * torch.special.ndtri(lo + u * (1 - 2 * lo))


# ---------------------------------------------------------------------------------------------- the component
@dataclass
class BsrPlan:
    """Draws for R rows (copies × inputs) of one step; lengths in source order (pixels), angles in rad."""

    variant: str
    rows_y: torch.Tensor  # official: (R, n) row-strip lengths; transferattack: (R, n) strip weights
    cols_x: torch.Tensor  # official: (R, n) column-strip lengths; transferattack: (R, n, n) piece weights
    perm_y: torch.Tensor  # (R, n) strip permutation
    perm_x: torch.Tensor  # official: (R, n); transferattack: (R, n, n) piece permutations per strip
    angles: torch.Tensor  # official: (R, n, n) per block; transferattack: (R, n) per strip
    rows_first: torch.Tensor | None = None  # transferattack: (R,) bool, strips along H first


@register("bsr")
@dataclass
class BlockShuffleRotation(Component):
    """BSR: mean loss over `copies` (20) shuffled-and-rotated copies. variant: 'official' (BSR repo: 2×2
    blocks, angle ~ truncated normal of σ = `angle` = 0.2 rad, fill 0.5) | 'transferattack' (3×3, angle ~
    U(±`angle`), `angle` = 24° = 0.419 rad, fill 0); blocks / angle (rad) / fill ([0,1] pixels): None takes
    the variant's."""

    variant: str = "official"
    blocks: int | None = None
    copies: int = 20
    angle: float | None = None
    fill: float | None = None

    order = 50

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"{self.name}: variant must be one of {VARIANTS}, got {self.variant!r}")
        blocks, angle, fill = DEFAULTS[self.variant]
        self.blocks = blocks if self.blocks is None else self.blocks
        self.angle = angle if self.angle is None else self.angle
        self.fill = fill if self.fill is None else self.fill
        if int(self.blocks) != self.blocks or self.blocks < 1:
            raise ConfigError(f"{self.name}: blocks must be a positive integer, got {self.blocks}")
        if self.copies < 1:
            raise ConfigError(f"{self.name}: copies must be >= 1, got {self.copies}")
        if not 0 <= self.angle <= math.pi:
            raise ConfigError(f"{self.name}: angle is in radians, in [0, π]; got {self.angle}")
        if not 0 <= self.fill <= 1:
            raise ConfigError(f"{self.name}: fill is a [0,1] pixel value, got {self.fill}")

    def batch_multiplier(self) -> int:
        return self.copies

    # ------------------------------------------------------------------ draws
    def plan(self, rows: int, h: int, w: int, ctx: AttackContext) -> BsrPlan:
        """Draws for `rows` copy-major rows from the images' own streams (float64 uniforms)."""
        n = int(self.blocks)
        if min(h, w) < n:
            raise ValueError(f"{self.name}: {h}×{w} images cannot be split into {n}×{n} blocks")
        if self.variant == "official":
            u = ctx.draw_rows("rand", rows, (4 * n + n * n,), dtype=torch.float64).to(ctx.x.device)
            parts = u.split([n, n, n, n, n * n], dim=1)
            return BsrPlan(
                "official",
                rows_y=split_lengths(parts[0], h),
                cols_x=split_lengths(parts[1], w),
                perm_y=permutation(parts[2]),
                perm_x=permutation(parts[3]),
                angles=truncated_normal(parts[4], float(self.angle)).view(rows, n, n),
            )
        u = ctx.draw_rows("rand", rows, (1 + 3 * n + 2 * n * n,), dtype=torch.float64).to(ctx.x.device)
        parts = u.split([1, n, n, n, n * n, n * n], dim=1)
        return BsrPlan(
            "transferattack",
            rows_y=2 - parts[1],  # weights in (1, 2]; lengths depend on which axis is split first
            cols_x=(2 - parts[4]).view(rows, n, n),
            perm_y=permutation(parts[2]),
            perm_x=permutation(parts[5].view(rows, n, n)),
            angles=(2 * parts[3] - 1) * float(self.angle),
            rows_first=parts[0][:, 0] < 0.5,
        )

    # ------------------------------------------------------------------ the transformation
    def render(self, x: torch.Tensor, plan: BsrPlan) -> torch.Tensor:
        """The shuffled and rotated rows (R,C,H,W) for plan's draws (differentiable w.r.t. x)."""
        if plan.variant == "official":
            return self._render_official(x, plan)
        return self._render_transferattack(x, plan)

    def _render_official(self, x: torch.Tensor, plan: BsrPlan) -> torch.Tensor:
        _, _, h, w = x.shape
        n = plan.perm_y.shape[1]
        ly = strip_layout(plan.rows_y, plan.perm_y, h)
        lx = strip_layout(plan.cols_x, plan.perm_x, w)
        block = ly.strip[:, :, None] * n + lx.strip[:, None, :]  # (R,H,W)
        theta = plan.angles.flatten(1).gather(1, block.flatten(1)).view(block.shape)
        hb, wb = ly.length[:, :, None].double(), lx.length[:, None, :].double()
        yc = ly.local[:, :, None].double() - (hb - 1) / 2
        xc = lx.local[:, None, :].double() - (wb - 1) / 2
        dy, dx = rotate_coords(yc, xc, torch.cos(theta), torch.sin(theta))
        y0, x0 = ly.start[:, :, None], lx.start[:, None, :]
        sy, sx = y0 + (hb - 1) / 2 + dy, x0 + (wb - 1) / 2 + dx
        bounds = (y0, y0 + ly.length[:, :, None], x0, x0 + lx.length[:, None, :])
        value, mask = sample_bilinear(x, sy, sx, bounds)
        return value + (1 - mask)[:, None] * float(self.fill)

    def _render_transferattack(self, x: torch.Tensor, plan: BsrPlan) -> torch.Tensor:
        _, _, h, w = x.shape
        ya, xb, y_lo, y_hi = self._ta_coords(plan, h, w, a_is_y=True)  # strips along H: (R, H, W)
        xa, yb, x_lo, x_hi = (t.transpose(1, 2) for t in self._ta_coords(plan, w, h, a_is_y=False))
        first = plan.rows_first[:, None, None]
        sy, sx = torch.where(first, ya, yb), torch.where(first, xb, xa)
        zero = torch.zeros_like(y_lo)
        bounds = (
            torch.where(first, y_lo, zero),
            torch.where(first, y_hi, zero + h),
            torch.where(first, zero, x_lo),
            torch.where(first, zero + w, x_hi),
        )
        value, mask = sample_bilinear(x, sy, sx, bounds)
        mask = mask[:, None]
        return value * mask + (1 - mask) * float(self.fill)  # torchvision's fill: img·mask + (1−mask)·fill

    @staticmethod
    def _ta_coords(plan: BsrPlan, size_a: int, size_b: int, a_is_y: bool) -> tuple[torch.Tensor, ...]:
        """TransferAttack's layout with strips along axis a (y when `a_is_y`): source coordinates along a and
        b and the strip's bounds along a, each (R, size_a, size_b); b is bounded by the image."""
        r, n = plan.perm_y.shape
        la = strip_layout(split_lengths(plan.rows_y, size_a), plan.perm_y, size_a)
        pieces = strip_layout(split_lengths(plan.cols_x.reshape(r * n, n), size_b),
                              plan.perm_x.reshape(r * n, n), size_b)
        inside = (pieces.start + pieces.local).view(r, n, size_b)  # position inside each output strip
        qb = inside.gather(1, la.strip[:, :, None].expand(r, size_a, size_b)).double()
        theta = plan.angles.gather(1, la.strip)[:, :, None]
        cos, sin = torch.cos(theta), torch.sin(theta)
        ha = la.length[:, :, None].double()
        ac, bc = la.local[:, :, None].double() - (ha - 1) / 2, qb - (size_b - 1) / 2
        if a_is_y:
            da, db = rotate_coords(ac, bc, cos, sin)
        else:
            db, da = rotate_coords(bc, ac, cos, sin)
        start = la.start[:, :, None]
        sa = start + (ha - 1) / 2 + da
        sb = (size_b - 1) / 2 + db
        lo = start.expand(r, size_a, size_b)
        return sa, sb, lo, lo + la.length[:, :, None]

    def expand(self, points: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, int]:
        k, rows = self.copies, points.shape[0]
        _, _, h, w = points.shape
        plan = self.plan(k * rows, h, w, ctx)
        return self.render(points.repeat(k, 1, 1, 1), plan), k
