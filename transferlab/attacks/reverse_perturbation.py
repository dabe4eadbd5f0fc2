"""Reverse Adversarial Perturbation (RAP; Qin et al., NeurIPS 2022, "Boosting the transferability of
adversarial attacks with reverse adversarial perturbation"): the `rap` component.

Defining step (min–max, through the `outer` hook): from step `late_start` on (0-based, as the official
``if t < arg.transpoint``), before each outer step an inner loop of K sign steps finds the reverse
perturbation n in the ε_n-ball around x' = x + δ that *minimises* the attack loss,

    n₀ ~ U[−ε_n, ε_n]^d,   n ← Π_{‖n‖∞≤ε_n, x'+n∈[0,1]} (n − α_n·sign ∇_n L(x' + n)),   α_n = ε_n / K,

and the outer step takes its gradient at x' + n (a `lookahead`), updating δ as usual. Before the late
start nothing is drawn, added or sent, so `rap` with late_start ≥ steps is the attack without it, bitwise.

Official code (SCLBD/Transfer_attack_RAP, `rap_attack.py`): outer iterations 400 (``--max_iterations``,
line 24; give `steps: 400`), outer step 2/255 (``lr``, line 290; give `alpha: 2`), ε = 16/255 (line 291),
ε_n = 16/255 (``--adv_epsilon``, line 38), K = 8 (``--adv_steps``, line 39), α_n = ε_n/K (line 64); the
inner PGD starts uniformly in the ε_n-ball (``random_start=True`` default of `pgd`, lines 192, 204–207),
projects onto the ball and [0,1] (lines 194–197, 237), uses cross-entropy by default
(``--adv_loss_function CE``, line 36; 'MaxLogit' is the variant ``inner_loss: logit``) on the plain model
(no DI/SI in the inner loop, line 211), and descends the attack loss: untargeted it runs a targeted attack
toward the true label, targeted an untargeted one away from the target (lines 105–110, 212–236).
Late start: the flag's default is 0 (``--transpoint``, line 41: RAP); the README's RAP-LS runs use 100
("--transpoint 100: baseline+RAP-LS") and TransferAttack takes 100 as its default (`rap.py` line 41) — this
component's default is 100 (RAP-LS); `late_start: 0` is plain RAP (the paper's text is not readable
here). MI is optional there (``--MI``); compose `mi` for MI+RAP.
TransferAttack (`transferattack/gradient/rap.py`) fixes α_n = 2/255 whatever ε_n (line 41; the variant
``alpha_n: 2``), always uses MI, and its L2 inner projection uses ε rather than ε_n.

Reproduction: the official script only activates RAP with ``--adv_perturbation`` (lines 34, 338), which
the README's commands omit (they then run the baseline), and repeats the inner loop for every one of its
``m2`` copies; issue #2 of the official repository ("About Runing", 2022) reports that the code does not
run as released and that the modified code's numbers differ from the paper's (notably untargeted at 10
iterations). Unused top-k forwards (lines 366, 387) are not reproduced here.

Forwards: K inputs per image per step from `late_start` on (`extra_forwards_total`): T + (T − late_start)·K
per image in all — 2,800 at the ImageNet defaults; `extra_forwards` (K) sizes the micro-batches.
For L2 (an extension: the paper is L∞), ε_n and α_n are RMS per pixel like the configs' ε: the inner ball
has L2 radius ε_n·√d and the inner steps are normalised steps of α_n·√d (d = C·H·W).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError

INNER_LOSSES = ("ce", "logit")


def _per_image(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm, shaped (B,1,1,1)."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


@register("rap")
@dataclass
class ReversePerturbation(Component):
    """RAP: from step `late_start` on, the outer gradient is taken at x' + n, n the reverse perturbation
    minimising the attack loss in the ε_n-ball (K inner sign steps of ε_n/K from a uniform start).

    late_start: first step with RAP (100, RAP-LS; 0 is plain RAP); eps_n: ε_n in 1/255 units (16);
    inner_steps: K (8); alpha_n: inner step in 1/255 units (None: ε_n/K, official; 2: TransferAttack);
    inner_loss: 'ce' (official default) or 'logit'; inner_random_start (True). SCLBD/Transfer_attack_RAP.
    """

    late_start: int = 100
    eps_n: float = 16.0
    inner_steps: int = 8
    alpha_n: float | None = None
    inner_loss: str = "ce"
    inner_random_start: bool = True

    pixel_params = ("eps_n", "alpha_n")

    def __post_init__(self) -> None:
        if not isinstance(self.late_start, int) or self.late_start < 0:
            raise ConfigError(f"{self.name}: late_start must be an integer >= 0, got {self.late_start!r}")
        if not isinstance(self.inner_steps, int) or self.inner_steps < 1:
            raise ConfigError(f"{self.name}: inner_steps must be an integer >= 1, got {self.inner_steps!r}")
        if self.eps_n < 0:
            raise ConfigError(f"{self.name}: eps_n must be >= 0 (in 1/255 units), got {self.eps_n}")
        if self.alpha_n is not None and self.alpha_n <= 0:
            raise ConfigError(f"{self.name}: alpha_n must be > 0 (1/255 units) or null, got {self.alpha_n}")
        if self.inner_loss not in INNER_LOSSES:
            raise ConfigError(f"{self.name}: inner_loss must be one of {INNER_LOSSES}, "
                              f"got {self.inner_loss!r}")

    def extra_forwards(self) -> int:
        return self.inner_steps

    def extra_forwards_total(self, steps: int) -> float:
        """The inner steps run from `late_start` on only."""
        return max(0, steps - self.late_start) * self.extra_forwards()

    def _key(self) -> str:
        return f"{self.name}:n"

    def _scale(self, ctx: AttackContext) -> float:
        """[0,1] units per 1/255 unit: 1/255 per pixel (L∞), √d/255 as an L2 norm."""
        return (ctx.x[0].numel() ** 0.5 if ctx.norm == "l2" else 1.0) / 255.0

    def radius(self, ctx: AttackContext) -> float:
        """ε_n in [0,1] pixel units (L2: the norm of n)."""
        return self.eps_n * self._scale(ctx)

    def inner_alpha(self, ctx: AttackContext) -> float:
        """α_n in [0,1] pixel units: ε_n/K (official) unless given."""
        if self.alpha_n is None:
            return self.radius(ctx) / self.inner_steps
        return self.alpha_n * self._scale(ctx)

    def inner_objective(self, logits: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """Per-image attack loss (B,) that the inner loop minimises: CE to the true label (−CE to the target
        when targeted), or −z_y (z_t) for 'logit'."""
        if self.inner_loss == "ce":
            if ctx.target is not None:
                return -F.cross_entropy(logits, ctx.target, reduction="none")
            return F.cross_entropy(logits, ctx.y, reduction="none")
        cls = ctx.y if ctx.target is None else ctx.target
        z = logits.gather(1, cls[:, None]).squeeze(1)
        return z if ctx.target is not None else -z

    def _gradient(self, point: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """∇ of the inner objective at `point` (B,C,H,W), one model call on the plain model."""
        point = point.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = ctx.forward(point)
            members = getattr(ctx.model, "member_logits", None)
            if members and getattr(ctx.model, "fusion", None) == "loss":  # an ensemble fusing losses
                value = torch.stack([self.inner_objective(z, ctx) for z in members]).mean(0)
            else:
                value = self.inner_objective(logits, ctx)
            (grad,) = torch.autograd.grad(value.sum(), point)
        return grad.detach()

    def _project(self, centre: torch.Tensor, n: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        radius = self.radius(ctx)
        if ctx.norm == "linf":
            n = n.clamp(-radius, radius)
        else:
            n = n * (radius / _per_image(n).clamp_min(1e-12)).clamp(max=1.0)
        return (centre + n).clamp(0, 1) - centre

    def _start(self, centre: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        radius = self.radius(ctx)
        if not self.inner_random_start or radius == 0:
            return torch.zeros_like(centre)
        shape, dtype = tuple(centre.shape[1:]), centre.dtype
        if ctx.norm == "linf":
            n = (ctx.streams.rand(*shape, dtype=dtype).to(centre.device) * 2 - 1) * radius
        else:
            direction = ctx.streams.randn(*shape, dtype=dtype).to(centre.device)
            r = ctx.streams.rand(1, dtype=dtype).to(centre.device).view(-1, 1, 1, 1) * radius
            n = direction / _per_image(direction).clamp_min(1e-12) * r
        return self._project(centre, n, ctx)

    def reverse_perturbation(self, centre: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """n after K inner steps minimising the attack loss around `centre` = x + δ."""
        centre = centre.detach()
        caller, ctx.caller = ctx.caller, self.name
        try:
            n = self._start(centre, ctx)
            step = self.inner_alpha(ctx)
            for _ in range(self.inner_steps):
                g = self._gradient(centre + n, ctx)
                if ctx.norm == "linf":
                    direction = g.sign()
                else:
                    direction = g / _per_image(g).clamp_min(1e-12)
                n = self._project(centre, n - step * direction, ctx)
        finally:
            ctx.caller = caller
        return n

    def outer(self, delta: torch.Tensor, ctx: AttackContext, step: Callable[[torch.Tensor], torch.Tensor]
              ) -> torch.Tensor:
        if ctx.step < self.late_start:
            return step(delta)
        ctx.state[self._key()] = self.reverse_perturbation(ctx.x + delta, ctx)
        try:
            return step(delta)
        finally:
            ctx.state.pop(self._key(), None)

    def lookahead(self, point: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        n = ctx.state.get(self._key())
        return point if n is None else point + n
