"""An objective: the normalised logit loss, −z_y / ‖z‖₂ (untargeted) or z_t / ‖z‖₂ (targeted) — the logit
loss of Zhao et al. (NeurIPS 2021) made scale-free, through the `objective` hook, which replaces
cross-entropy (one component may own it)."""

from dataclasses import dataclass

import torch

from transferlab.attacks.base import Component
from transferlab.attacks.registry import register


@register("normlogit_example")
@dataclass
class NormalisedLogit(Component):
    """Maximise −z_y/‖z‖ (or z_t/‖z‖ toward a target class)."""

    def objective(self, logits: torch.Tensor, y, target, ctx) -> torch.Tensor:
        cls = target if target is not None else y
        picked = logits.gather(1, cls[:, None]).squeeze(1) / logits.norm(dim=1).clamp_min(1e-12)
        return picked if target is not None else -picked
