"""Penalizing Gradient Norm (PGN; Ge et al., NeurIPS 2023, "Boosting adversarial transferability by
achieving flat local maxima"): the `pgn` component. The paper's attack is `mi+pgn` (MI base).

Defining step (`refine`, replacing the step's gradient): with x the step's point (x + δ, or NI's look-ahead),

    ḡ = 1/N · Σ_k [(1−δ)·g₁ₖ + δ·g₂ₖ],   g₁ₖ = ∇L(x_k),   g₂ₖ = ∇L(x_k − α·g₁ₖ / mean|g₁ₖ|),
    x_k = x + u_k,   u_k ~ U[−ζ·ε, ζ·ε]^d,

a finite-difference form of the gradient of L − δ·‖∇L‖ (a penalty on the gradient norm, so the attack seeks
flat maxima). The normalisation is the *mean* absolute value per image (‖g‖₁/d, d = C·H·W), not ‖g‖₁, and
the look-ahead step is the attack's α, as in the official code (Trustworthy-AI-Group/PGN,
`Incv3_PGN_Attack.py` line 89: ``x_star = x_near + alpha * (-g1) / torch.abs(g1).mean([1, 2, 3])``, with
``alpha = eps / num_iter`` at line 73). Neither x_k nor the look-ahead point is clipped to [0,1] (as there).

Defaults, from the official script's flags (`Incv3_PGN_Attack.py`): N = 20 (``--N``, line 29), δ = 0.5
(``--delta``, line 30), ζ = 3.0 (``--zeta``, line 31); MI base μ = 1.0 (``--momentum``, line 28; compose
`mi`), ε = 16/255 (``--max_epsilon``, line 23), T = 10 (``--num_iter_set``, line 24), α = ε/T. The official
loop sums the N terms (line 98) and then normalises by the mean absolute value (line 99); the mean used
here has the same direction. Ports: TransferAttack (`transferattack/gradient/pgn.py`) names ζ `beta` and δ
`gamma` (same values, line 33), forces α = ε/T for the look-ahead (line 36), and applies its input transform
to x_k and again to the already-transformed x_k for the look-ahead point (lines 51, 63); here other
components' copies and transforms (DI, SI, ...) apply once, inside `Attack.loss_gradient`. torchattack has
no PGN. The official script saves with truncation (``astype('uint8')`` of x·255, lines 58, 121) where this
suite rounds (`transferlab.eval.quantize`); that is outside the component.

Cost: the loop still computes its data-term gradient at x, which PGN does not use, so a step costs
1 + 2N passes (official: 2N); with δ = 0 the look-ahead pass is skipped (1 + N). The neighbours and the
look-ahead points are each differentiated in one batched call (copy-major rows k·B + b), through the other
components' copies and transforms, without regularisers. For L2 the box half-width is ζ·ε·√(3/d) (so
‖u_k‖₂ ≈ ζ·ε, as VT) and the look-ahead step α·g/(mean|g|·√d) (as NI's L2 look-ahead) — an extension:
the paper is L∞ only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import Attack, AttackContext, Component
from transferlab.attacks.momentum import l1_normalise
from transferlab.attacks.registry import register
from transferlab.attacks.variance_tuning import box_offsets
from transferlab.errors import ConfigError


@register("pgn")
@dataclass
class GradientNormPenalty(Component):
    """PGN: the step's gradient is the mean over N points x_k ~ U(ζε-box around x) of
    (1−δ)·∇L(x_k) + δ·∇L(x_k − α·∇L(x_k)/mean|∇L(x_k)|); use as `mi+pgn`.

    neighbours: N (20); zeta: box half-width ζ as a multiple of ε (3.0); delta: balance δ in [0,1] (0.5).
    Official flags --N, --zeta, --delta of Trustworthy-AI-Group/PGN `Incv3_PGN_Attack.py`.
    """

    neighbours: int = 20
    zeta: float = 3.0
    delta: float = 0.5

    order = 20  # refine: the same slot as VT

    def __post_init__(self) -> None:
        if not isinstance(self.neighbours, int) or self.neighbours < 1:
            raise ConfigError(f"{self.name}: neighbours must be an integer >= 1, got {self.neighbours!r}")
        if self.zeta < 0:
            raise ConfigError(f"{self.name}: zeta must be >= 0 (a multiple of ε), got {self.zeta}")
        if not 0 <= self.delta <= 1:
            raise ConfigError(f"{self.name}: delta must be in [0, 1], got {self.delta}")

    def batch_multiplier(self) -> int:
        return self.neighbours

    def passes(self) -> int:
        """Batched gradient passes of the N copies per step: neighbours, and look-aheads unless δ = 0."""
        return 2 if self.delta > 0 else 1

    def cost_multiplier(self) -> float:
        return 1.0 + self.passes() * self.neighbours

    def half_width(self, ctx: AttackContext) -> float:
        """Half-width of the uniform neighbourhood box, in [0,1] pixel units."""
        if ctx.norm == "l2":
            return self.zeta * ctx.eps * (3.0 / ctx.x[0].numel()) ** 0.5
        return self.zeta * ctx.eps

    def lookahead_step(self, ctx: AttackContext) -> float:
        """Scale on the mean-normalised gradient g/mean|g| for the look-ahead point (pixel units)."""
        if ctx.norm == "l2":
            return ctx.alpha / ctx.x[0].numel() ** 0.5
        return ctx.alpha

    def neighbour_offsets(self, ctx: AttackContext) -> torch.Tensor:
        """u_k for every image, copy-major (N·B, C, H, W), each image's from its own stream."""
        return box_offsets(ctx, self.neighbours, self.half_width(ctx))

    def refine(
        self, grad: torch.Tensor, point: torch.Tensor, attack: Attack, ctx: AttackContext
    ) -> torch.Tensor:
        n = self.neighbours
        y = ctx.y.repeat(n)
        near = point.detach().repeat(n, 1, 1, 1) + self.neighbour_offsets(ctx)
        g1 = attack.loss_gradient(near, y, ctx, regularise=False)
        mix = g1
        if self.delta > 0:
            ahead = near - self.lookahead_step(ctx) * l1_normalise(g1)
            g2 = attack.loss_gradient(ahead, y, ctx, regularise=False)
            mix = (1 - self.delta) * g1 + self.delta * g2
        return mix.view(n, *grad.shape).mean(0)
