"""Feature importance-aware attack (FIA; Wang et al., ICCV 2021, "Feature Importance-aware Transferable
Adversarial Attacks"): minimise the importance-weighted features of a middle layer l,

    maximise  −Σ Δ ⊙ f_l(x′),   Δ = Δ̄ / ‖Δ̄‖₂,   Δ̄ = 1/N Σ_n ∂z_y(x ⊙ M_n) / ∂f_l,   M_n ~ Bernoulli(p)

(per image; z_y the true-class logit; M_n an elementwise mask keeping each pixel value, per channel, with
probability p). Δ is computed once per batch in `setup`: the N masked copies of all images in one forward
(declared as `setup_forwards`); `objective` then replaces cross-entropy. Compose ``mi+fia`` for the official
MI base. Untargeted only (a targeted run is refused). Δ̄ and Δ stay in ``ctx.state`` (``fia:mean``,
``fia:delta``).

Sources (official code github.com/hcguoO0/FIA, commit 4e116ae, ``attack.py``; TensorFlow 1, the paper's
text could not be read here):

- N = 30: flag ``ens`` (line 59, "Number of random mask input"); p = 0.9: flag ``probb`` (line 61, "keep
  probability = 1 - drop probability"). The README's example command passes ``--probb 0.7`` for VGG-16.
- masks: ``np.random.binomial(1, probb, size=(B, H, W, 3))`` (line 310) on the [0,255] images before
  preprocessing (lines 311–312): elementwise, every channel of every pixel on its own; a dropped value is 0
  (black), as here on [0,1] images. Drawn here from each image's own stream (`AttackContext.draw_rows`).
- Δ̄: ``tf.gradients(logits * label_ph, layer)`` (line 228): the true-class *logit*'s gradient, summed over
  the N copies (line 314; the mean here, the same after normalising); the clean image is not among them
  (only for ``ens = 0``, lines 301–305). Normalised per image by its L2 norm over (H, W, C) and negated
  (``-normalize(weight_np, 2)``, lines 115–124 and 317); true labels (line 281, the predicted-label line is
  commented out).
- loss: ``reduce_sum(adv_tensor * weights) / size(layer)`` (line 110), ascended (line 264): the constant
  1/size is dropped here (a positive factor; the sign step and MI's ∇/mean|∇| ignore it).
- MI base: momentum 1.0 (line 37) with ∇/mean|∇| (lines 244–245); 10 iterations, α = 1.6, ε = 16 (lines
  29–33): the loop's settings.
- layer: flag ``layer_name`` (line 23, VGG-16 ``conv3_3``); the code has no per-model table (torchattack's
  ``_builtin_cfgs``, fia.py lines 34–40: Inc-v3 Mixed_5b, ResNet-152 layer2.7, VGG-16 features.15). Default
  here: the middle stage (`transferlab.attacks.intermediate_level.default_feature_layer`).

Ports (``variant: ports``): TransferAttack (``advanced_objective/fia.py``, commit 2663e4a, lines 39, 68,
91–95) and torchattack (``torchattack/fia.py``, commit d406789, lines 53, 106–108, 163) drop with rate 0.3
(keep 0.7) and take the gradient of the true class's *softmax probability*, not its logit; both normalise
per image by the L2 norm like the official code. (TA-Bench, whose ``p_drop=0.9`` is said to be a keep
probability, was not read here.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.intermediate_level import close_tap, open_tap, per_row
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError

VARIANTS = {"official": {"keep": 0.9, "score": "logit"}, "ports": {"keep": 0.7, "score": "softmax"}}
SCORES = ("logit", "softmax")


def class_score(logits: torch.Tensor, y: torch.Tensor, score: str) -> torch.Tensor:
    """Per-row score of class y: its logit, or its softmax probability."""
    if score == "softmax":
        logits = torch.softmax(logits, dim=1)
    return logits.gather(1, y[:, None]).squeeze(1)


def unit_l2(t: torch.Tensor) -> torch.Tensor:
    """t / ‖t‖₂ per image (row); an all-zero row stays zero."""
    norm = t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))
    return torch.where(norm > 0, t / norm.clamp_min(torch.finfo(t.dtype).tiny), torch.zeros_like(t))


def untargeted_only(component: Component, ctx: AttackContext) -> None:
    if ctx.target is not None:
        raise ConfigError(f"{component.name}: defined for untargeted attacks only (the official code "
                          "weighs the true class's features)")


@register("fia")
@dataclass
class FeatureImportance(Component):
    """FIA: maximise −Σ Δ⊙f_l(x′), Δ the L2-normalised mean true-class logit gradient at f_l over `copies`
    (30) copies with pixel values kept with probability `keep` (0.9). layer: None = the middle stage;
    variant official | ports (keep 0.7, softmax score); `keep`/`score` override. MI base: ``mi+fia``."""

    layer: str | None = None
    copies: int = 30
    keep: float | None = None
    score: str | None = None
    variant: str = "official"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"{self.name}: variant must be one of {tuple(VARIANTS)}, got {self.variant!r}")
        defaults = VARIANTS[self.variant]
        self.keep = defaults["keep"] if self.keep is None else float(self.keep)
        self.score = defaults["score"] if self.score is None else self.score
        if not isinstance(self.copies, int) or self.copies < 1:
            raise ConfigError(f"{self.name}: copies must be a positive integer, got {self.copies!r}")
        if not 0 < self.keep <= 1:
            raise ConfigError(f"{self.name}: keep must be in (0, 1], got {self.keep}")
        if self.score not in SCORES:
            raise ConfigError(f"{self.name}: score must be one of {SCORES}, got {self.score!r}")

    def taps(self) -> tuple[str, ...]:
        return () if self.layer is None else (self.layer,)

    def setup_forwards(self) -> int:
        """The N masked copies, once per batch (one forward)."""
        return self.copies

    def _key(self, what: str) -> str:
        return f"{self.name}:{what}"

    def masks(self, ctx: AttackContext) -> torch.Tensor:
        """(N·B, C, H, W) copy-major 0/1 masks, row n·B + b from image b's stream."""
        rows, shape = self.copies * ctx.batch, tuple(ctx.x.shape[1:])
        return (ctx.draw_rows("rand", rows, shape, ctx.x.dtype) < self.keep).to(ctx.x.dtype)

    def setup(self, ctx: AttackContext) -> None:
        untargeted_only(self, ctx)
        key = ctx.state[self._key("layer")] = open_tap(self, ctx, self.layer)
        n, b = self.copies, ctx.batch
        masked = (ctx.x.repeat(n, 1, 1, 1) * self.masks(ctx)).requires_grad_(True)  # a graph up to f_l
        try:
            with torch.enable_grad():
                logits = ctx.forward(masked)
                feature = ctx.features[key]
                (grad,) = torch.autograd.grad(class_score(logits, ctx.y.repeat(n), self.score).sum(), feature)
        except BaseException:
            close_tap(self, ctx)  # the loop tears down only components whose setup completed
            raise
        mean = grad.detach().view(n, b, *grad.shape[1:]).mean(0)
        ctx.state[self._key("mean")] = mean
        ctx.state[self._key("delta")] = unit_l2(mean)

    def teardown(self, ctx: AttackContext) -> None:
        close_tap(self, ctx)

    def objective(self, logits, y, target, ctx: AttackContext) -> torch.Tensor:
        feature = ctx.features[ctx.state[self._key("layer")]]
        weight = per_row(ctx.state[self._key("delta")], feature.shape[0])
        return -(feature * weight).flatten(1).sum(1)
