"""Gradient Relevance Attack (GRA; Zhu et al., ICCV 2023, "Boosting adversarial transferability via
gradient relevance attack"): the `gra` component. The paper's attack is `mi+gra` (MI base).

Defining step, two parts:

1. `refine` — relevance-weighted gradient. With g = ∇L(x) the step's gradient and
   ḡ = 1/N · Σ_k ∇L(x + u_k), u_k ~ U[−β·ε, β·ε]^d, the gradient used is s·g + (1−s)·ḡ with the relevance
   s = ⟨g, ḡ⟩ / (‖g‖₂·‖ḡ‖₂), the cosine similarity per image (official `GRA_v3.py` lines 153, 180–189).
2. `update` — the decay indicator (GRA owns the step rule). With G_t the gradient reaching the step (MI's
   accumulator G_t = μ·G_{t−1} + ·/mean|·| in `mi+gra`, as the official code compares its momentum
   ``noise``), M ← M ⊙ (1 where sign G_t = sign G_{t−1}, else η) element-wise, M₀ = 1/η, G_{−1} = 0, and
   δ ← δ + α·M ⊙ sign(G_t) (official lines 191–196). Sign flips shrink that pixel's step for good (M never
   grows back); since sign 0 ≠ ±1, the first step has M = 1 almost everywhere. This cannot be a `process`:
   a positive per-element factor does not survive the sign step, so the factor multiplies the step itself.
   The loop projects onto the ε-ball and [0,1] afterwards, as the official clip (line 197).

Defaults and sources (RYC-98/GRA, `GRA_v3.py`, TensorFlow): N = 20 (``number`` flag, line 39), β = 3.5
(``beta`` flag, line 41), η = 0.94 (a literal in the indicator, line 195; README: "Setting η around 0.94
can maintain a good balance"), M₀ = 10/9.4 (line 263, = 1/η at η = 0.94; here 1/η for any η, as both
ports); MI μ = 1.0 (``momentum``, line 35), ε = 16/255, T = 10, α = ε/T (lines 31, 33, 164–166). The
official graph attacks the model's prediction at the first step (lines 172–175), not the ground truth;
this component uses the labels the loop is given. Its DI flags (lines 51–53) are unused in `graph`.

Ports: TransferAttack (`transferattack/gradient/gra.py`) matches (η hard-coded, line 114; M₀ = 1/η, line
117) but passes neighbours through its input transform (line 50, "This is inconsistent for transform!");
here the neighbours go through the other components' copies and transforms like the step's gradient
(`Attack.loss_gradient`, without regularisers). torchattack (`torchattack/gra.py` line 91) compares the
momentum *values*, not their signs, so M shrinks by η almost everywhere at every step: the named variant
``indicator: value``. Neighbours are centred on the step's point (x + δ, or NI's look-ahead) and drawn
from each image's own stream, all N in one batched call (copy-major rows k·B + b). Cost: 1 + N passes.
For L2 the box half-width is β·ε·√(3/d) (as VT) and the step α·M ⊙ G/‖G‖₂ — an extension (L∞ paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import Attack, AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.attacks.variance_tuning import box_offsets
from transferlab.errors import ConfigError

INDICATORS = ("sign", "value")


def relevance(grad: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per image, shaped (B,1,1,1); 0 where either gradient is zero (undefined)."""
    g, a = grad.flatten(1), average.flatten(1)
    dot = (g * a).sum(1)
    den = g.pow(2).sum(1).sqrt() * a.pow(2).sum(1).sqrt()
    s = torch.where(den > 0, dot / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(dot))
    return s.view(-1, *([1] * (grad.ndim - 1)))


@register("gra")
@dataclass
class GradientRelevance(Component):
    """GRA: gradient s·∇ + (1−s)·(mean neighbour ∇ in a β·ε box), s their cosine similarity; steps scaled
    per pixel by a decay indicator M (× η on each sign flip of the gradient between steps); use as `mi+gra`.

    neighbours: N (20); beta: box half-width as a multiple of ε (3.5); eta: decay η (0.94); indicator:
    'sign' (official: compare signs) or 'value' (torchattack: compare values). RYC-98/GRA `GRA_v3.py`.
    """

    neighbours: int = 20
    beta: float = 3.5
    eta: float = 0.94
    indicator: str = "sign"

    order = 20  # refine: the same slot as VT

    def __post_init__(self) -> None:
        if not isinstance(self.neighbours, int) or self.neighbours < 1:
            raise ConfigError(f"{self.name}: neighbours must be an integer >= 1, got {self.neighbours!r}")
        if self.beta < 0:
            raise ConfigError(f"{self.name}: beta must be >= 0 (a multiple of ε), got {self.beta}")
        if not 0 < self.eta <= 1:
            raise ConfigError(f"{self.name}: eta must be in (0, 1], got {self.eta}")
        if self.indicator not in INDICATORS:
            raise ConfigError(f"{self.name}: indicator must be one of {INDICATORS}, got {self.indicator!r}")

    def batch_multiplier(self) -> int:
        return self.neighbours

    def cost_multiplier(self) -> float:
        return 1.0 + self.neighbours

    def _key(self, what: str) -> str:
        return f"{self.name}:{what}"

    def setup(self, ctx: AttackContext) -> None:
        ctx.state[self._key("decay")] = torch.full_like(ctx.x, 1.0 / self.eta)
        ctx.state[self._key("previous")] = torch.zeros_like(ctx.x)

    def teardown(self, ctx: AttackContext) -> None:
        ctx.state.pop(self._key("decay"), None)
        ctx.state.pop(self._key("previous"), None)

    def half_width(self, ctx: AttackContext) -> float:
        """Half-width of the uniform neighbourhood box, in [0,1] pixel units."""
        if ctx.norm == "l2":
            return self.beta * ctx.eps * (3.0 / ctx.x[0].numel()) ** 0.5
        return self.beta * ctx.eps

    def neighbour_offsets(self, ctx: AttackContext) -> torch.Tensor:
        """u_k for every image, copy-major (N·B, C, H, W), each image's from its own stream."""
        return box_offsets(ctx, self.neighbours, self.half_width(ctx))

    def refine(
        self, grad: torch.Tensor, point: torch.Tensor, attack: Attack, ctx: AttackContext
    ) -> torch.Tensor:
        n = self.neighbours
        points = point.detach().repeat(n, 1, 1, 1) + self.neighbour_offsets(ctx)
        g = attack.loss_gradient(points, ctx.y.repeat(n), ctx, regularise=False)
        average = g.view(n, *grad.shape).mean(0)
        s = relevance(grad, average)
        return s * grad + (1 - s) * average

    def decay(self, grad: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """The decay indicator M after this step's gradient (updates the state)."""
        previous = ctx.state[self._key("previous")]
        same = grad.sign() == previous.sign() if self.indicator == "sign" else grad == previous
        m = ctx.state[self._key("decay")]
        m = torch.where(same, m, m * self.eta)
        ctx.state[self._key("decay")] = m
        ctx.state[self._key("previous")] = grad
        return m

    def update(self, delta: torch.Tensor, grad: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        m = self.decay(grad, ctx)
        if ctx.norm == "linf":
            step = grad.sign()
        else:
            norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.ndim - 1)))
            step = grad / norm.clamp_min(1e-12)
        return delta + ctx.alpha * m * step
