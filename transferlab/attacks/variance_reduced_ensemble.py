"""Stochastic variance-reduced ensemble attack (SVRE; Xiong et al., CVPR 2022, "Stochastic variance reduced
ensemble adversarial attack for boosting the adversarial transferability"): the `svre` component.

Defining step (a `refine` of the ensemble's gradient, so the outer step is the composed method's): at the
step's point x_t the loop has the ensemble gradient g_ens = ∇J_ens(x_t); an inner loop of M iterations
starts at x̃_0 = x_t, G_0 = 0 and, with one member k_m drawn uniformly per iteration,

    g_m = ∇J_{k_m}(x̃_m) − (∇J_{k_m}(x_t) − g_ens),    G_{m+1} = μ·G_m + g_m / mean|g_m|,
    x̃_{m+1} = Π_{ε-ball around x, [0,1]}(x̃_m + β·sign(G_{m+1})),

and the step continues with G_M in place of the gradient (TI smooths it, MI accumulates it: `mi+svre` is
SVRE-MI-FGSM, the paper's main method; `svre` alone steps along sign(G_M), SVRE-I-FGSM). Gradients pass
through the composed copies and transforms (DI, SI, …) without regularisers.

Defaults, from the official code (JHL-HUST/SVRE, `SVRE_MI_FGSM.py`-style TF scripts): M = 32
(``m_svrg``, "inner iterative number"), β = α (the inner update reuses ``alpha``), μ = 1 (``momentum``,
shared by the inner and outer accumulators), the ensemble gradient from the mean logits of the members
(`models.fusion: logits`, the default), the member drawn uniformly per inner iteration
(``np.random.choice``). TransferAttack (`transferattack/ensemble/svre.py`) sets M = 4·K (the variant
``inner: 4K``) and β = α. The paper's text is not readable here.

Two differences from both codes, neither changing the estimator for a deterministic data term:
- ∇J_k(x_t) is the same at every inner iteration, so it is computed once per member and step (``anchors:
  cached``: K + M member passes per step instead of 2M). When a composed component makes copies or
  transforms inputs (DI, VR, SI, …; all are treated as random), the official code re-draws them at x_t in
  every inner iteration; ``anchors: auto`` (the default) then does the same (``per_inner``: 2M passes), so
  the variance-reduction term pairs a fresh draw with each inner gradient as there.
- The member order is one schedule per (attack seed, step), shared by every image (as a `Collection`'s
  order), so no image's result depends on its batch-mates; the official code draws one member per
  batch from a global stream.
With `ti` composed, the official TI-DIM script also smooths each inner gradient; here TI smooths G_M only.

Cost, in member passes per image per step, with c copies per image: K·c (the ensemble's data term) +
(K + M)·c (cached anchors) or 2M·c (per-inner anchors). The source must be an ensemble (a list entry of
``models.sources``), not a collection.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from transferlab.attacks.base import Attack, AttackContext, Component
from transferlab.attacks.momentum import l1_normalise
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError

ANCHORS = ("auto", "cached", "per_inner")
_PER_MEMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[kK]\s*$")


@register("svre")
@dataclass
class VarianceReducedEnsemble(Component):
    """SVRE: M inner steps on single members, each gradient corrected by (ensemble − member) at the step's
    point; the step uses the inner momentum G_M.

    inner: M (32, official ``m_svrg``; '4K': M = 4·K members, TransferAttack); beta: inner step in 1/255
    units (None: the attack's α, official); mu: inner momentum (1.0); anchors: 'auto' | 'cached' |
    'per_inner' (∇J_k at the step's point once per step, or re-drawn every inner iteration). JHL-HUST/SVRE.
    """

    inner: int | str = 32
    beta: float | None = None
    mu: float = 1.0
    anchors: str = "auto"

    order = 30  # refine: after VT/PGN/GRA (20), before TI (40) and MI (60) process G_M

    pixel_params = ("beta",)
    needs_ensemble = True

    def __post_init__(self) -> None:
        if isinstance(self.inner, str):
            if not _PER_MEMBER.match(self.inner):
                raise ConfigError(f"{self.name}: inner must be an integer >= 1 or 'nK' (n per member), "
                                  f"got {self.inner!r}")
        elif not isinstance(self.inner, int) or isinstance(self.inner, bool) or self.inner < 1:
            raise ConfigError(f"{self.name}: inner must be an integer >= 1 or 'nK', got {self.inner!r}")
        if self.beta is not None and self.beta <= 0:
            raise ConfigError(f"{self.name}: beta must be > 0 (1/255 units) or null, got {self.beta}")
        if self.mu < 0:
            raise ConfigError(f"{self.name}: mu must be >= 0, got {self.mu}")
        if self.anchors not in ANCHORS:
            raise ConfigError(f"{self.name}: anchors must be one of {ANCHORS}, got {self.anchors!r}")
        self._members: int | None = None
        self._copies = 1
        self._cached = True

    # ------------------------------------------------------------------ cost
    def bind_source(self, members: int, attack: Attack) -> None:
        if members < 2:
            raise ConfigError(
                f"{self.name} attacks an ensemble: give the source as a list of models in models.sources "
                f"(this source has {members} member)"
            )
        others = [c for c in attack.components if c is not self]
        self._members = members
        copying = [c for c in others if type(c).expand is not Component.expand]
        self._copies = math.prod(c.batch_multiplier() for c in copying)
        random_data = bool(copying) or any(type(c).transform is not Component.transform for c in others)
        self._cached = self.anchors == "cached" or (self.anchors == "auto" and not random_data)

    def _bound(self) -> int:
        if self._members is None:
            raise ValueError(f"{self.name}: costs depend on the ensemble's size; bind the source first")
        return self._members

    def inner_steps(self, members: int) -> int:
        """M for an ensemble of `members` models."""
        if isinstance(self.inner, str):
            return max(1, round(float(_PER_MEMBER.match(self.inner).group(1)) * members))
        return self.inner

    def member_passes_per_step(self) -> int:
        """Single-member passes per image per step outside the ensemble's data term."""
        k = self._bound()
        m = self.inner_steps(k)
        return ((k + m) if self._cached else 2 * m) * self._copies

    def extra_forwards(self) -> int:
        """Peak inputs per image in one call: the data term's copies (each call runs the micro-batch)."""
        self._bound()
        return self._copies

    def extra_forwards_total(self, steps: int) -> float:
        """In full forwards of the ensemble: one member's pass counts 1/K."""
        return steps * self.member_passes_per_step() / self._bound()

    # ------------------------------------------------------------------ the inner loop
    def setup(self, ctx: AttackContext) -> None:
        from transferlab.ensemble import Collection, Ensemble

        model = ctx.model
        if not isinstance(model, Ensemble) or isinstance(model, Collection):
            raise ConfigError(f"{self.name} needs an ensemble source (a list of models in models.sources); "
                              f"got {type(model).__name__}")

    def schedule(self, ctx: AttackContext, members: int) -> list[int]:
        """The members of the inner iterations at this step: uniform draws from a stream keyed by the
        attack's seed and the step, the same for every image."""
        seed = ctx.attack.seed if ctx.attack is not None else 0
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + 7919 * (ctx.step + 1)) % (2**63))
        m = self.inner_steps(members)
        return [int(k) for k in torch.randint(members, (m,), generator=gen)]

    def _step_size(self, ctx: AttackContext) -> float:
        if self.beta is None:
            return ctx.alpha
        return self.beta * (ctx.x[0].numel() ** 0.5 if ctx.norm == "l2" else 1.0) / 255.0

    def refine(
        self, grad: torch.Tensor, point: torch.Tensor, attack: Attack, ctx: AttackContext
    ) -> torch.Tensor:
        model = ctx.model
        anchor = point.detach()
        order = self.schedule(ctx, len(model.members))

        def member_gradient(k: int, at: torch.Tensor) -> torch.Tensor:
            with model.only(k):
                return attack.loss_gradient(at, ctx.y, ctx, regularise=False)

        cached = {k: member_gradient(k, anchor) for k in sorted(set(order))} if self._cached else {}
        beta = self._step_size(ctx)
        inner, accumulated = anchor, torch.zeros_like(grad)
        for k in order:
            at_anchor = cached[k] if self._cached else member_gradient(k, anchor)
            g = member_gradient(k, inner) - (at_anchor - grad)
            accumulated = self.mu * accumulated + l1_normalise(g)
            if ctx.norm == "linf":
                direction = accumulated.sign()
            else:
                norm = accumulated.flatten(1).norm(dim=1).view(-1, *([1] * (grad.ndim - 1)))
                direction = accumulated / norm.clamp_min(1e-12)
            inner = ctx.x + attack.project(inner - ctx.x + beta * direction, ctx)
        return accumulated
