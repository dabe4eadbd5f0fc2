"""Spectrum simulation (SSA, the S²I-FGSM of Long et al., ECCV 2022, "Frequency Domain Model Augmentation
for Adversarial Attack", Alg. 1): the gradient averaged over N spectrum transforms

    T(x') = IDCT(DCT(x' + ξ) ⊙ M),   ξ ~ N(0, σ²),  M ~ U(1−ρ, 1+ρ), elementwise (per channel and pixel),

with the 2-D DCT-II over (H, W) of every channel; all N copies in one batch (copy-major) through the
`expand` hook. The DCT here is orthonormal and built from matrix products (batched, differentiable).

Sources (official code github.com/yuyang-long/SSA, commit c955cf0, `attack.py`):

- N = 20: flag ``--N`` (line 30, "The number of Spectrum Transformations").
- ρ = 0.5: flag ``--rho`` (line 31, "Tuning factor").
- σ = 16/255: flag ``--sigma`` 16.0 (line 32), used as ``sigma / 255`` (line 90) on [0,1] pixels — equal to
  the ε of the common setting, so ``sigma: 1eps`` keeps that ratio at another budget (`pixel_params`).
- base I-FGSM: the momentum lines (109–112) are commented out, so `ssa` alone is the official S²I-FGSM and
  `mi+ssa` the ports' (TransferAttack, torchattack) MI base.
- gradient with respect to the transformed image: line 95, ``x_idct = V(x_idct, requires_grad=True)``,
  makes the transformed image a new leaf and ``x_idct.grad`` (line 103) is added to the update of x
  unchanged, i.e. the gradient is *not* propagated back through IDCT·M·DCT. Default
  ``through_transform = False`` follows it (a straight-through copy: its value is T(x'), its Jacobian with
  respect to x' the identity). ``through_transform = True`` differentiates through the transform instead,
  giving IDCT(DCT(∇) ⊙ M) for each copy, as torchattack (`torchattack/ssa.py`, which differentiates
  ``delta`` through ``transform``) and TransferAttack do.
- the official `dct.py` uses ``norm=None`` (unnormalised DCT-II with its exact inverse); the mask is
  elementwise and the normalisation diagonal, so IDCT(DCT(·)⊙M) is the same map for either normalisation.
- the official attacks the ground-truth label (``gt``); so does the loop (`ctx.y`). Neither clips T(x') to
  [0,1].
torchattack differs also in σ (it uses ε, line 128 of `torchattack/ssa.py`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError


@functools.lru_cache(maxsize=16)
def _dct_matrix_cached(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal DCT-II matrix D (n×n): D[k, i] = a_k·cos(π(2i+1)k / 2n), a_0 = √(1/n), a_k = √(2/n);
    D·Dᵀ = I, so the inverse (DCT-III) is Dᵀ."""
    return _dct_matrix_cached(int(n), dtype, str(torch.device(device)))


def dct_2d(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dimensions (…, H, W): D_H·x·D_Wᵀ (differentiable)."""
    dh = dct_matrix(x.shape[-2], x.dtype, x.device)
    dw = dct_matrix(x.shape[-1], x.dtype, x.device)
    return torch.matmul(torch.matmul(dh, x), dw.T)


def idct_2d(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct_2d` (orthonormal 2-D DCT-III) over the last two dimensions: D_Hᵀ·X·D_W."""
    dh = dct_matrix(coeffs.shape[-2], coeffs.dtype, coeffs.device)
    dw = dct_matrix(coeffs.shape[-1], coeffs.dtype, coeffs.device)
    return torch.matmul(torch.matmul(dh.T, coeffs), dw)


def spectrum_transform(x: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """IDCT(DCT(x + noise) ⊙ mask), all of shape (R, C, H, W); noise in [0,1] pixel units."""
    return idct_2d(dct_2d(x + noise) * mask)


@register("ssa")
@dataclass
class SpectrumSimulation(Component):
    """SSA: mean loss over N spectrum transforms IDCT(DCT(x' + ξ) ⊙ M) (pixels in [0,1]).

    copies: N — 20 (official `attack.py` ``--N``). rho: mask half-width ρ, M ~ U(1−ρ, 1+ρ) — 0.5
    (``--rho``). sigma: std of ξ in 1/255 units — 16 (``--sigma``, i.e. 16/255; give ``1eps`` to keep σ = ε
    at another budget). through_transform: False (official: the gradient at the transformed image, passed
    to x' unchanged) or True (differentiated through the transform, as torchattack / TransferAttack).
    """

    copies: int = 20
    rho: float = 0.5
    sigma: float = 16.0
    through_transform: bool = False

    order = 40  # expand after Admix (25) and SI (30)
    pixel_params = ("sigma",)

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ConfigError(f"{self.name}: copies must be >= 1, got {self.copies}")
        if not 0 <= self.rho <= 1:
            raise ConfigError(f"{self.name}: rho must be in [0, 1], got {self.rho}")
        if self.sigma < 0:
            raise ConfigError(f"{self.name}: sigma must be >= 0 (in 1/255 units), got {self.sigma}")

    def batch_multiplier(self) -> int:
        return self.copies

    def draws(self, rows: int, shape: tuple[int, ...], ctx: AttackContext,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(ξ, M) for rows = N·R copy-major rows, from the images' own streams: ξ in [0,1] pixel units."""
        noise = ctx.draw_rows("randn", rows, shape, dtype=dtype) * (self.sigma / 255.0)
        mask = 1.0 - self.rho + 2.0 * self.rho * ctx.draw_rows("rand", rows, shape, dtype=dtype)
        return noise, mask

    def expand(self, points: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, int]:
        n = self.copies
        repeated = points.repeat(n, 1, 1, 1)
        noise, mask = self.draws(repeated.shape[0], tuple(points.shape[1:]), ctx, points.dtype)
        noise, mask = noise.to(points.device), mask.to(points.device)
        if self.through_transform:
            return spectrum_transform(repeated, noise, mask), n
        with torch.no_grad():
            spectra = spectrum_transform(repeated, noise, mask)
        # straight-through: the value is exactly T(x'), the gradient reaches x' unchanged (official line 95)
        return spectra + (repeated - repeated.detach()), n
