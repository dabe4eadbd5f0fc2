"""A feature-level objective in the style of FIA (Wang et al., ICCV 2021, "Feature Importance-aware
Transferable Adversarial Attacks", eq. 4–6): the aggregate gradient Δ of the true-class logit with respect
to a middle layer's activations, averaged over N copies of the clean image with pixels kept with
probability p, then the attack minimises Σ Δ ⊙ f(x'). It taps a layer (`taps` hook), computes Δ once per
batch (`setup`, declared as setup forwards) and replaces cross-entropy (`objective`). Paper defaults:
N = 30, keep probability 0.9 (the official code's `drop` 0.1 ... its flags differ by version, which
`transferlab attacks` would list as variants); the layer depends on the model."""

from dataclasses import dataclass

import torch

from transferlab.attacks.base import Component
from transferlab.attacks.registry import register


@register("fia_example")
@dataclass
class FeatureImportance(Component):
    """Minimise Σ Δ ⊙ f_layer(x'), Δ the true-class logit's gradient at f over randomly masked copies."""

    layer: str = "block"
    copies: int = 30
    keep: float = 0.9

    def taps(self) -> tuple[str, ...]:
        return (self.layer,)

    def setup_forwards(self) -> int:
        return self.copies

    def setup(self, ctx) -> None:
        masks = (ctx.draw_rows("rand", self.copies * ctx.batch, tuple(ctx.x.shape[1:]), ctx.x.dtype)
                 < self.keep).to(ctx.x.dtype)
        masked = (ctx.x.repeat(self.copies, 1, 1, 1) * masks).requires_grad_(True)  # builds the graph to f
        with torch.enable_grad():
            logits = ctx.forward(masked)
            feature = ctx.features[self.layer]
            picked = logits.gather(1, ctx.y.repeat(self.copies)[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, feature)
        grad = grad.view(self.copies, ctx.batch, *grad.shape[1:]).mean(0)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
        ctx.state[f"{self.name}:delta"] = grad / norm

    def objective(self, logits, y, target, ctx) -> torch.Tensor:
        weight = ctx.state[f"{self.name}:delta"]
        feature = ctx.features[self.layer]
        copies = feature.shape[0] // weight.shape[0]
        return -(feature * weight.repeat(copies, 1, 1, 1)).flatten(1).sum(1)
