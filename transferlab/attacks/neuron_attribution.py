"""Neuron attribution-based attack (NAA; Zhang et al., CVPR 2022, "Improving Adversarial Transferability via
Neuron Attribution-Based Attacks"): weaken the attribution of the true class to the neurons of layer l.

Attribution (an integrated gradient along a path from the image to a black baseline x̄ = 0, N points):

    W = Ŵ / ‖Ŵ‖₂,  Ŵ = 1/N Σ_{k=0}^{N−1} ∂p_y(x_k)/∂f_l,  x_k = (x + σ·n_k)(1 − k/N),  n_k ~ N(0, I)
    A(x′) = (f_l(x′) − f_l(x̄)) ⊙ W                                   (true-class attribution per neuron)

(p_y the true-class softmax probability, per image). The loop maximises, per image,

    Σ max(−A, 0) + γ·Σ min(−A, 0)  =  Σ A⁻ − γ·Σ A⁺      (A⁺, A⁻ ≥ 0: A's positive and negative parts),

i.e. with γ = 1, −Σ A. The official code splits the attribution with the negated weights −W (line 262), so
its "positive + γ·negative" (lines 85–91) is this: the true class's negative attribution minus γ times its
positive one. W and f_l(x̄) come from one `setup` forward of the N path points and the baseline of all images
((N+1)·B inputs, declared as `setup_forwards`); `objective` replaces cross-entropy. Compose ``mi+naa`` for
the official MI base. Untargeted only (a targeted run is refused); Ŵ, W and f_l(x̄) stay in ``ctx.state``.
With σ = 0 and a layer affine in the input, Σ (f_l(x) − f_l(x̄)) ⊙ Ŵ is a Riemann sum (O(1/N)) of the
integrated-gradient completeness p_y(x) − p_y(x̄) (tested in ``tests/attacks/test_baselines_feature.py``).

Sources (official code github.com/jpzhang1810/NAA, commit 372730a, ``NAA.py``; TensorFlow 1; the paper's
text could not be read here):

- N = 30: flag ``ens`` (line 56, "Number of aggregated n"); γ = 1.0: ``get_NAA_loss`` (line 78).
- path: lines 252–259: ``images_tmp2 = pre(x) + N(0, 0.2)``, then ``·(1 − l/N) + (l/N)·pre(0)`` for
  l = 0..N−1 — the noisy image included, the baseline excluded; x̄ = black (line 253). The noise is drawn in
  the preprocessed space: 0.2 on Inception's [−1,1] scale (the default ``model_name`` inception_v3,
  line 19; ``utils.py`` line 16) is 0.1 on [0,1] pixels, ``noise`` = 25.5 in 1/255 units here (on the
  VGG/ResNet preprocessing, [0,255] minus the mean, the same flag is 0.2/255: practically none).
- weights: ``tf.gradients(tf.nn.softmax(logits) * label_ph, layer)`` (line 186) summed over the path
  (line 259; the mean here, the same after normalising), normalised per image by the L2 norm and negated
  (``-normalize(weight_np, 2)``, line 262); true labels (line 233).
- baseline features f_l(x̄): lines 263–268 (a black image, recomputed every iteration; constant, so once
  here). Loss: lines 76–95, ``positive + gamma·negative`` of ``(adv − base)·weights``, summed and divided by
  the layer size (a constant factor, dropped here), ascended (line 216).
- MI base: momentum 1.0 (line 37), ∇/mean|∇| (lines 198–199); 10 iterations, α = 1.6, ε = 16 (lines 29–33).
- layer: flag ``layer_name`` (line 23, Inc-v3 ``Mixed_5b``; the README lists Inc-v4 Mixed_5e, IncRes-v2
  Conv2d_4a, ResNet-v2-152 block2/unit_8). Default here: the middle stage
  (`transferlab.attacks.intermediate_level.default_feature_layer`).

Ports (``variant: ports``): TransferAttack (``advanced_objective/naa.py``, commit 2663e4a, lines 80–93) and
torchattack (``torchattack/naa.py``, commit d406789, lines 99–115) take the path x·k/N, k = 0..N−1 (the
baseline included, the image excluded), without noise, and the mean gradient without normalising; their
loss Σ (f_l(x′) − f_l(x̄))·W (γ = 1, minimised). TransferAttack's docstring says ``num_scale=10`` but its
default is N = 30.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.feature_importance import class_score, unit_l2, untargeted_only
from transferlab.attacks.intermediate_level import close_tap, open_tap, per_row
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError

VARIANTS = {"official": {"noise": 25.5}, "ports": {"noise": 0.0}}


@register("naa")
@dataclass
class NeuronAttribution(Component):
    """NAA: maximise negative − gamma·positive attribution (gamma 1.0) of the true class at f_l, weights the
    mean softmax gradient over `copies` (30) path points (x + noise·n)(1 − k/N) toward black, noise std in
    1/255 units (25.5). layer: None = the middle stage; variant official | ports (path x·k/N, no noise, no
    normalisation). MI base: ``mi+naa``."""

    layer: str | None = None
    copies: int = 30
    gamma: float = 1.0
    noise: float | None = None
    variant: str = "official"

    pixel_params = ("noise",)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"{self.name}: variant must be one of {tuple(VARIANTS)}, got {self.variant!r}")
        self.noise = VARIANTS[self.variant]["noise"] if self.noise is None else float(self.noise)
        if not isinstance(self.copies, int) or self.copies < 1:
            raise ConfigError(f"{self.name}: copies must be a positive integer, got {self.copies!r}")
        if self.noise < 0:
            raise ConfigError(f"{self.name}: noise must be >= 0 (std in 1/255 units), got {self.noise}")
        if self.gamma < 0:
            raise ConfigError(f"{self.name}: gamma must be >= 0, got {self.gamma}")

    def taps(self) -> tuple[str, ...]:
        return () if self.layer is None else (self.layer,)

    def setup_forwards(self) -> int:
        """The N path points and the black baseline, once per batch (one forward)."""
        return self.copies + 1

    def _key(self, what: str) -> str:
        return f"{self.name}:{what}"

    def path(self, ctx: AttackContext) -> torch.Tensor:
        """(N·B, C, H, W) copy-major path points; noise from each image's own stream."""
        n, x = self.copies, ctx.x
        k = torch.arange(n, dtype=x.dtype, device=x.device).repeat_interleave(ctx.batch).view(-1, 1, 1, 1)
        points = x.repeat(n, 1, 1, 1)
        if self.variant == "ports":
            return points * (k / n)
        if self.noise > 0:
            points = points + (self.noise / 255.0) * ctx.draw_rows("randn", n * ctx.batch, tuple(x.shape[1:]),
                                                                   x.dtype)
        return points * (1 - k / n)

    def setup(self, ctx: AttackContext) -> None:
        untargeted_only(self, ctx)
        key = ctx.state[self._key("layer")] = open_tap(self, ctx, self.layer)
        n, b = self.copies, ctx.batch
        inputs = torch.cat([self.path(ctx), torch.zeros_like(ctx.x)]).requires_grad_(True)
        try:
            with torch.enable_grad():
                logits = ctx.forward(inputs)
                feature = ctx.features[key]
                score = class_score(logits[: n * b], ctx.y.repeat(n), "softmax").sum()
                (grad,) = torch.autograd.grad(score, feature)
        except BaseException:
            close_tap(self, ctx)  # the loop tears down only components whose setup completed
            raise
        grads = grad.detach()[: n * b]
        mean = grads.view(n, b, *grads.shape[1:]).mean(0)
        ctx.state[self._key("mean")] = mean
        ctx.state[self._key("weights")] = mean if self.variant == "ports" else unit_l2(mean)
        ctx.state[self._key("base")] = feature.detach()[n * b:]

    def teardown(self, ctx: AttackContext) -> None:
        close_tap(self, ctx)

    def attribution(self, feature: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """A = (f_l − f_l(x̄)) ⊙ W per row (rows = k·B copy-major)."""
        rows = feature.shape[0]
        return (feature - per_row(ctx.state[self._key("base")], rows)) * per_row(
            ctx.state[self._key("weights")], rows)

    def objective(self, logits, y, target, ctx: AttackContext) -> torch.Tensor:
        negated = -self.attribution(ctx.features[ctx.state[self._key("layer")]], ctx).flatten(1)
        return negated.clamp_min(0).sum(1) + self.gamma * negated.clamp_max(0).sum(1)
