"""Structure invariant attack (SIA; Wang, Zhang & Zhang, "Structure Invariant Transformation for better
Adversarial Transferability", ICCV 2023): the gradient averaged over N copies of the image, each cut into
n×n blocks at random positions, every block transformed independently by an operation drawn uniformly from
a fixed set.

Defining step (per image, per step, per copy): n−1 distinct random cut positions per axis (in 1..L−1, so no
block is empty), per block one operation from the set, applied to that block alone; the objective averaged
over the N copies (one batched model call). All operations are batched gathers, elementwise maps or
block-diagonal matrix products (differentiable w.r.t. the input).

The operations and their parameters, read from the code (L×L′ is the block, u a uniform draw per block):

====================  ==================================================================================
``resize``            bilinear (align_corners=False) to (⌊0.8·L′⌋+1) × (⌊0.8·L⌋+1) — the source swaps the
                      axes' sizes (``_, _, w, h = x.shape`` then ``size=(new_h, new_w)``) — and back, clamp
``vshift``/``hshift`` circular roll by ⌊u·L⌋ / ⌊u·L′⌋ rows / columns (``x.roll``)
``vflip``/``hflip``   flip rows / columns
``rotate180``         ``rot90(k=2)``
``scale``             u·block, u ~ U[0,1) (``torch.rand(1)``)
``noise``             clip(block + U(−16/255, 16/255), 0, 1) per pixel (``noise``, 1/255 units)
``dct``               2-D DCT, zero the highest ⌊0.4·L⌋ row and ⌊0.4·L′⌋ column frequencies, inverse DCT
                      (a low-pass projection; when ⌊0.4·L⌋ = 0 the source's ``[-0:]`` slice zeroes every
                      coefficient, so blocks under 3 px along an axis become 0 — reproduced)
``dropout``           ``F.dropout2d(p=0.1, training=True)``: each channel of the block zeroed with
                      probability 0.1, the others scaled by 1/0.9 (may exceed 1)
====================  ==================================================================================

Variants (``variant``):

* ``'official'`` (default) — github:xiaosen-wang/SIT (the paper's repository; its README points to
  TransferAttack for a second copy), ``attack.py`` (commit 6d5432d): the set of 10 operations on line 190
  (resize, vshift, hshift, vflip, hflip, rotate180, scale, noise, dct, dropout), ``num_copies=20``,
  ``num_block=3`` (line 184; also ``main.py`` flags ``--num_copies 20``, ``--num_block 3``, lines 15–16),
  the operations on lines 192–256 and ``blocktransform`` on lines 258–271. Note that ``main.py`` defaults
  to ``--momentum 0`` (line 17): momentum is not part of this component — compose ``mi`` for MI-based runs.
* ``'transferattack'`` — github:Trustworthy-AI-Group/TransferAttack,
  ``transferattack/input_transformation/sia.py`` (commit 2663e4a): the 7 operations on line 42 (no resize,
  dct or dropout; ``blur`` is defined there but not in the set), ``num_scale=20``, ``num_block=3`` (line 36;
  its docstring's "num_scale=10", line 29, is not the default); the same operations otherwise.

By design every draw (cuts, operation, shift, scale, noise, dropout) is per image, per copy and per step from
the image's own stream; both sources share the cuts, operations, shifts and scale factors across the batch.
The paper itself could not be read here; every default above is from the code.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError

OPS = {
    "official": ("resize", "vshift", "hshift", "vflip", "hflip", "rotate180", "scale", "noise", "dct",
                 "dropout"),
    "transferattack": ("vshift", "hshift", "vflip", "hflip", "rotate180", "scale", "noise"),
}
VARIANTS = tuple(OPS)
RESIZE = 0.8  # SIT attack.py line 219: scale_factor
DCT_CUT = 0.4  # line 232: low_ratio (the zeroed fraction of the highest frequencies)
DROPOUT = 0.1  # line 256: F.dropout2d p


# ------------------------------------------------------------------------------------------- per-block maps
@functools.lru_cache(maxsize=4096)
def bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of a 1-D ``F.interpolate(mode='bilinear', align_corners=False)``."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
    out = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)
    return out.view(n_in, n_out).T.contiguous()


@functools.lru_cache(maxsize=4096)
def down_up(n: int, mid: int) -> torch.Tensor:
    """(n, n): bilinear resize n → mid → n along one axis."""
    return bilinear_matrix(mid, n) @ bilinear_matrix(n, mid)


@functools.lru_cache(maxsize=4096)
def dct_projection(n: int) -> torch.Tensor:
    """(n, n): orthonormal DCT-II, keep the lowest n − ⌊0.4·n⌋ coefficients (none if ⌊0.4·n⌋ = 0, the
    source's ``[-0:]`` slice), inverse DCT. Equal to torch_dct's dct_2d → mask → idct_2d along one axis for
    any normalisation, since zeroing a coefficient does not depend on its scale."""
    cut = int(n * DCT_CUT)
    keep = n - cut if cut > 0 else 0
    k = torch.arange(n, dtype=torch.float64)[:, None]
    m = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * k * (2 * m + 1) / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    kept = basis[:keep]
    return kept.T @ kept


def cut_edges(u: torch.Tensor, size: int, n: int) -> torch.Tensor:
    """(R, n+1) sorted block edges 0 < c₁ < … < c_{n−1} < size: n−1 distinct cuts drawn uniformly from
    1..size−1 (``np.random.choice(range(1, size), n−1, replace=False)``), from the ranks of uniforms u
    (R, size−1)."""
    r = u.shape[0]
    cuts = torch.argsort(u, dim=1)[:, : n - 1] + 1
    cuts = torch.sort(cuts, dim=1).values
    zero = torch.zeros(r, 1, dtype=torch.long, device=u.device)
    return torch.cat([zero, cuts, zero + size], dim=1)


def block_index(edges: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per position (R, size): block index, block start, block length."""
    r = edges.shape[0]
    pos = torch.arange(size, device=edges.device).expand(r, size).contiguous()
    ends = edges[:, 1:].contiguous()
    idx = torch.searchsorted(ends, pos, right=True).clamp_max(ends.shape[1] - 1)
    start = edges.gather(1, idx)
    return idx, start, ends.gather(1, idx) - start


@dataclass
class SiaPlan:
    """Draws for R rows (copies × inputs) of one step."""

    edges_y: torch.Tensor  # (R, n+1) row-block edges (pixels)
    edges_x: torch.Tensor  # (R, n+1) column-block edges
    op: torch.Tensor  # (R, n, n) index into the variant's operations
    shift: torch.Tensor  # (R, n, n) uniforms: shift ⌊u·L⌋
    scale: torch.Tensor  # (R, n, n) scale factors in [0,1)
    keep: torch.Tensor  # (R, n, n, C) dropout: channel kept
    noise: torch.Tensor  # (R, C, H, W) uniforms for the additive noise


@register("sia")
@dataclass
class StructureInvariance(Component):
    """SIA: mean loss over `copies` (20) copies, each of `blocks`×`blocks` (3) random blocks transformed by
    a random operation. variant: 'official' (SIT repo, 10 operations) | 'transferattack' (7); noise: the
    additive-noise range in 1/255 units (16)."""

    variant: str = "official"
    blocks: int = 3
    copies: int = 20
    noise: float = 16.0

    order = 50
    pixel_params = ("noise",)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"{self.name}: variant must be one of {VARIANTS}, got {self.variant!r}")
        if int(self.blocks) != self.blocks or self.blocks < 1:
            raise ConfigError(f"{self.name}: blocks must be a positive integer, got {self.blocks}")
        if self.copies < 1:
            raise ConfigError(f"{self.name}: copies must be >= 1, got {self.copies}")
        if self.noise < 0:
            raise ConfigError(f"{self.name}: noise must be >= 0 (1/255 units), got {self.noise}")

    @property
    def ops(self) -> tuple[str, ...]:
        return OPS[self.variant]

    def batch_multiplier(self) -> int:
        return self.copies

    # ------------------------------------------------------------------ draws
    def plan(self, rows: int, c: int, h: int, w: int, ctx: AttackContext,
             dtype: torch.dtype = torch.float32) -> SiaPlan:
        """Draws for `rows` copy-major rows from the images' own streams."""
        n = int(self.blocks)
        if min(h, w) < n:
            raise ValueError(f"{self.name}: {h}×{w} images cannot be cut into {n}×{n} non-empty blocks")
        sizes = [h - 1, w - 1, n * n, n * n, n * n, n * n * c]
        u = ctx.draw_rows("rand", rows, (sum(sizes),), dtype=torch.float64).to(ctx.x.device)
        uy, ux, uop, ushift, uscale, ukeep = u.split(sizes, dim=1)
        noise = ctx.draw_rows("rand", rows, (c, h, w), dtype=dtype).to(ctx.x.device)
        return SiaPlan(
            edges_y=cut_edges(uy, h, n),
            edges_x=cut_edges(ux, w, n),
            op=(uop * len(self.ops)).long().clamp_max(len(self.ops) - 1).view(rows, n, n),
            shift=ushift.view(rows, n, n),
            scale=uscale.view(rows, n, n),
            keep=(ukeep >= DROPOUT).view(rows, n, n, c),
            noise=noise,
        )

    # ------------------------------------------------------------------ the transformation
    def render(self, x: torch.Tensor, plan: SiaPlan) -> torch.Tensor:
        """Every block of every row transformed by its operation (differentiable w.r.t. x)."""
        r, c, h, w = x.shape
        n = plan.op.shape[1]
        iy, y0, hb = block_index(plan.edges_y, h)
        jx, x0, wb = block_index(plan.edges_x, w)
        block = (iy[:, :, None] * n + jx[:, None, :]).flatten(1)  # (R, H·W)

        def per_pixel(t: torch.Tensor) -> torch.Tensor:  # (R, n, n) -> (R, H, W)
            return t.flatten(1).gather(1, block).view(r, h, w)

        op = per_pixel(plan.op)
        code = {name: k for k, name in enumerate(self.ops)}

        def chose(name: str) -> torch.Tensor:
            return op == code[name] if name in code else torch.zeros_like(op, dtype=torch.bool)

        # index operations: shifts, flips, rotation by 180° (every other operation reads its own pixel)
        ly = (torch.arange(h, device=x.device)[None] - y0)[:, :, None]
        lx = (torch.arange(w, device=x.device)[None] - x0)[:, None, :]
        hh, ww = hb[:, :, None], wb[:, None, :]
        shift = per_pixel(plan.shift)
        src_y = ly.expand(r, h, w)
        src_y = torch.where(chose("vshift"), torch.remainder(ly - (shift * hh).long(), hh), src_y)
        src_y = torch.where(chose("vflip") | chose("rotate180"), hh - 1 - ly, src_y)
        src_x = lx.expand(r, h, w)
        src_x = torch.where(chose("hshift"), torch.remainder(lx - (shift * ww).long(), ww), src_x)
        src_x = torch.where(chose("hflip") | chose("rotate180"), ww - 1 - lx, src_x)
        index = ((y0[:, :, None] + src_y) * w + (x0[:, None, :] + src_x)).flatten(1)
        out = x.flatten(2).gather(2, index[:, None, :].expand(r, c, -1)).view(r, c, h, w)

        pick = lambda name: chose(name)[:, None]  # noqa: E731  (R,1,H,W)
        if "scale" in code:
            out = torch.where(pick("scale"), x * per_pixel(plan.scale).to(x.dtype)[:, None], out)
        if "noise" in code:
            rho = self.noise / 255.0
            noisy = (x + rho * (2 * plan.noise.to(x.dtype) - 1)).clamp(0, 1)
            out = torch.where(pick("noise"), noisy, out)
        if "dropout" in code:
            keep = plan.keep.flatten(1, 2).transpose(1, 2).to(x.dtype)  # (R, C, n·n)
            keep = keep.gather(2, block[:, None, :].expand(r, c, -1)).view(r, c, h, w)
            out = torch.where(pick("dropout"), x * keep / (1 - DROPOUT), out)
        if "resize" in code and bool(chose("resize").any()):
            out = torch.where(pick("resize"), self._resize(x, plan, code["resize"], iy, jx), out)
        if "dct" in code and bool(chose("dct").any()):
            out = torch.where(pick("dct"), self._dct(x, plan, code["dct"]), out)
        return out

    @staticmethod
    def _resize(x: torch.Tensor, plan: SiaPlan, k: int, iy: torch.Tensor, jx: torch.Tensor) -> torch.Tensor:
        """Every block of the rows holding a ``resize`` block resized down and up (SIT's ``resize``, the axes'
        sizes swapped as there), clamped; other rows 0. Block (i, j) is A_ij · X_ij · B_ijᵀ, computed as n
        left and n right block-diagonal products."""
        r, c, h, w = x.shape
        n = plan.op.shape[1]
        rows = (plan.op == k).flatten(1).any(1).nonzero().flatten()
        m = rows.numel()
        left = torch.zeros(n, m, h, h, dtype=x.dtype)  # left[j]: diag over i of A_ij
        right = torch.zeros(n, m, w, w, dtype=x.dtype)  # right[i]: diag over j of B_ij
        ey, ex = plan.edges_y[rows].tolist(), plan.edges_x[rows].tolist()
        for b in range(m):
            for i in range(n):
                y_a, y_b = ey[b][i], ey[b][i + 1]
                for j in range(n):
                    x_a, x_b = ex[b][j], ex[b][j + 1]
                    left[j, b, y_a:y_b, y_a:y_b] = down_up(y_b - y_a, int((x_b - x_a) * RESIZE) + 1)
                    right[i, b, x_a:x_b, x_a:x_b] = down_up(x_b - x_a, int((y_b - y_a) * RESIZE) + 1)
        left, right = left.to(x.device), right.to(x.device)
        sub, iy, jx = x[rows], iy[rows], jx[rows]
        mixed = sum((left[j][:, None] @ sub) * (jx == j)[:, None, None, :] for j in range(n))
        out = sum((mixed @ right[i][:, None].transpose(-1, -2)) * (iy == i)[:, None, :, None]
                  for i in range(n))
        return x.new_zeros(r, c, h, w).index_copy(0, rows, out.clamp(0, 1))

    @staticmethod
    def _dct(x: torch.Tensor, plan: SiaPlan, k: int) -> torch.Tensor:
        """Every block of the rows holding a ``dct`` block low-pass projected in the DCT domain (SIT's
        ``dct``): P_L · X · P_L′ per block; other rows 0."""
        r, c, h, w = x.shape
        n = plan.op.shape[1]
        rows = (plan.op == k).flatten(1).any(1).nonzero().flatten()
        m = rows.numel()
        left = torch.zeros(m, h, h, dtype=x.dtype)
        right = torch.zeros(m, w, w, dtype=x.dtype)
        ey, ex = plan.edges_y[rows].tolist(), plan.edges_x[rows].tolist()
        for b in range(m):
            for i in range(n):
                y_a, y_b = ey[b][i], ey[b][i + 1]
                left[b, y_a:y_b, y_a:y_b] = dct_projection(y_b - y_a)
                x_a, x_b = ex[b][i], ex[b][i + 1]
                right[b, x_a:x_b, x_a:x_b] = dct_projection(x_b - x_a)
        left, right = left.to(x.device), right.to(x.device)
        out = left[:, None] @ x[rows] @ right[:, None].transpose(-1, -2)
        return x.new_zeros(r, c, h, w).index_copy(0, rows, out)

    def expand(self, points: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, int]:
        k, rows = self.copies, points.shape[0]
        _, c, h, w = points.shape
        plan = self.plan(k * rows, c, h, w, ctx, dtype=points.dtype)
        return self.render(points.repeat(k, 1, 1, 1), plan), k
