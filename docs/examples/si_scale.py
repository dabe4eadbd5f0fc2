"""SI (scale invariance; Lin et al., ICLR 2020, "Nesterov Accelerated Gradient and Scale Invariance for
Adversarial Attacks", eq. 7): the gradient averaged over m copies scaled by 1/2^i — an input transformation
through the `expand` hook. Official default m = 5 (the paper's §4.1)."""

from dataclasses import dataclass

import torch

from transferlab.attacks.base import Component
from transferlab.attacks.registry import register


@register("si_example")
@dataclass
class ScaleInvariance(Component):
    """Mean gradient over copies x / 2^i, i = 0..m-1 (batched, copy-major)."""

    copies: int = 5
    order = 30

    def batch_multiplier(self) -> int:
        return self.copies  # the data term sends `copies` inputs per image: micro-batches are sized on it

    def expand(self, points: torch.Tensor, ctx) -> tuple[torch.Tensor, int]:
        scales = [0.5**i for i in range(self.copies)]
        return torch.cat([points * s for s in scales]), self.copies
