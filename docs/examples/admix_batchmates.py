"""Admix done the wrong way, kept as a counter-example: it mixes each image with its *batch-mates*
(x + η·x[perm]), as a reference port does. An image's result then depends on which images share its batch,
so an extended or resumed run changes its bytes; `transferlab check-attack admix_batchmates_example`
fails it on "independent of batch-mates". The right way asks for pool images (`pool_size`), drawn by each
image's own stream from the dataset: see `admix_pool` below."""

from dataclasses import dataclass

import torch

from transferlab.attacks.base import Component
from transferlab.attacks.registry import register


@register("admix_batchmates_example")
@dataclass
class AdmixBatchMates(Component):
    """x + η·(a batch-mate), m₂ mixes (wrong: couples the batch)."""

    eta: float = 0.2
    mixes: int = 3

    def batch_multiplier(self) -> int:
        return self.mixes

    def expand(self, points: torch.Tensor, ctx) -> tuple[torch.Tensor, int]:
        mates = [points.roll(k + 1, dims=0) for k in range(self.mixes)]
        return torch.cat([points + self.eta * m for m in mates]), self.mixes


@register("admix_pool_example")
@dataclass
class AdmixPool(Component):
    """x + η·x_pool for m₂ pool images per image (Wang et al., ICCV 2021, "Admix", eq. 5; m₂ = 3, η = 0.2;
    without the m₁ scale copies, which compose with `si_example`)."""

    eta: float = 0.2
    mixes: int = 3

    def pool_size(self) -> int:
        return self.mixes

    def batch_multiplier(self) -> int:
        return self.mixes

    def expand(self, points: torch.Tensor, ctx) -> tuple[torch.Tensor, int]:
        pool = ctx.pool  # (B, mixes, C, H, W), drawn for each image by its own stream
        return torch.cat([points + self.eta * pool[:, k] for k in range(self.mixes)]), self.mixes
