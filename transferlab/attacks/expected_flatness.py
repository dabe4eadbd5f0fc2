"""Maximin Expected Flatness (MEF; Qiu et al. 2024, "Boosting adversarial transferability with low-cost
optimization via maximin expected flatness", arXiv 2405.16181): the `mef` component; MEF is `mi+mef` with
`mi: {mu: 0.5}`.

Defining step (an `expand`, so every composed transform and objective applies to the samples): at the
step's point x', N samples, each with its own "previous gradient inversion approximation" (PGIA) p_k,

    x_k = x' + u_k + κ·ε·p_k,   u_k ~ U[−γε, γε]^d per pixel,
    ∇ = (1/N) Σ_k ∇L(x_k)   (the loop's mean over copies),
    p_k ← ∇L(x_k) / mean|∇L(x_k)| − μ_in·p_k   (per sample and image, after the backward),

then MI with μ = 0.5 accumulates the normalised mean gradient and the step is a sign step. The samples are
not clipped to the ε-ball or to [0,1] (as the official code).

Defaults, from the official code (SignedQiu/MEFAttack, `main.py`, `mef_attack` and its argparse flags):
N = 20 (``--sample_num``), γ = 2 (``--gamma``, times ε), κ = 0.2 (``--kesai``, times ε), μ_in = 0.9
(``--inner_mu``), outer μ = 0.5 (``--outer_mu``; give `mi: {mu: 0.5}`), 20 iterations of 1.6/255 at
ε = 16/255 (``--iteration_num``, ``--step_size``: the configs' steps and α), CE averaged over the batch
(a per-image scale the normalisations remove), no random start. TransferAttack
(`transferattack/gradient/mef.py`) uses κ = 0.15 (the variant ``kappa: 0.15``) and the same others. The
paper's text is not readable here.

The per-sample gradients come from a hook on the samples (no extra pass): N passes per image per step, as
VR. Only the data term's call updates the PGIA; other components' calls through the copies (VT's
neighbours, SVRE's inner loop) sample with the current p_k when their rows match the data term's and
without it otherwise. For L2 (an extension: the official attack is L∞) ε per pixel is ε/√d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.momentum import l1_normalise
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError


@register("mef")
@dataclass
class ExpectedFlatness(Component):
    """MEF: the mean gradient at N samples x' + U(±γε) + κε·p_k, each p_k its sample's normalised gradient
    minus μ_in times its previous value. samples: N (20); gamma: γ (2, × ε); kappa: κ (0.2, × ε; 0.15
    TransferAttack); inner_mu: μ_in (0.9). MEF = mi+mef with mi mu 0.5. SignedQiu/MEFAttack main.py.
    """

    samples: int = 20
    gamma: float = 2.0
    kappa: float = 0.2
    inner_mu: float = 0.9

    order = 50

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"{self.name}: samples must be an integer >= 1, got {self.samples!r}")
        for key in ("gamma", "kappa", "inner_mu"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{self.name}: {key} must be >= 0, got {getattr(self, key)}")

    def batch_multiplier(self) -> int:
        return self.samples

    def _key(self) -> str:
        return f"{self.name}:pgia"

    def setup(self, ctx: AttackContext) -> None:
        ctx.state.pop(self._key(), None)

    def _pixel_eps(self, ctx: AttackContext) -> float:
        return ctx.eps / (ctx.x[0].numel() ** 0.5) if ctx.norm == "l2" else ctx.eps

    def expand(self, points: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, int]:
        n, rows = self.samples, points.shape[0]
        eps = self._pixel_eps(ctx)
        u = ctx.draw_rows("rand", n * rows, tuple(points.shape[1:]), dtype=points.dtype).to(points.device)
        samples = points.repeat(n, 1, 1, 1) + (u * 2 - 1) * (self.gamma * eps)
        pgia = ctx.state.get(self._key())
        if pgia is not None and pgia.shape == samples.shape:
            samples = samples + (self.kappa * eps) * pgia
        if ctx.caller is None and samples.requires_grad:  # the data term: refresh every p_k after backward
            previous = pgia if pgia is not None and pgia.shape == samples.shape else torch.zeros_like(samples)

            def refresh(grad: torch.Tensor) -> None:
                ctx.state[self._key()] = (l1_normalise(grad) - self.inner_mu * previous).detach()

            samples.register_hook(refresh)
        return samples, n
