"""Admix (Wang, He, Wang & He, ICCV 2021, "Admix: Enhancing the Transferability of Adversarial Attacks",
eq. 5 with SI's scales): the loss averaged over m₁·m₂ inputs (x' + η·x″_j)/2^i, for m₂ other images x″_j
per image and the m₁ scales i = 0..m₁−1, differentiated with respect to x' only (the other images are
constants), all inputs in one batch (copy-major) through the `expand` hook.

Sources (official code github.com/JHL-HUST/Admix, commit db15db9, `mi_admix.py`; `mi_admix_ti_di.py` is the
same step followed by DI and TI):

- η = 0.2: flag ``portion`` (line 35, "protion for the mixed image").
- m₂ = 3: flag ``size`` (line 38, "Number of randomly sampled images").
- m₁ = 5: hard-coded in `graph()`, line 156: ``x_admix, x_admix/2., …, x_admix/16.`` (no flag); the mix
  is taken first, then scaled (the file's comment "admix before scale").
The paper's §4.1 gives the same values (m₁ = 5, m₂ = 3, η = 0.2).

Other images come from an image pool, never from batch-mates: `pool_size()` = m₂ and the loop fills
`ctx.pool` (B, m₂, C, H, W), drawn for each image by its own stream from the dataset. The official code
mixes with batch-mates (``admix()``, lines 144–146: ``tf.gather(x, tf.random.shuffle(indices))``, as does
torchattack); we differ because an image's result must not depend on which images share its batch —
otherwise a resumed, re-sharded or extended run changes its bytes.

Where the official code differs from this port, besides the pool:

- its other images are the batch-mates' *current adversarial* images, re-shuffled at every iteration and
  for each of the m₂ mixes (and may be the image itself); here they are m₂ clean images per image, fixed for
  the attack. Neither filters by class, although the paper samples x″ "from other categories".
- it sums over the m₂ mixes and averages over the m₁ scales (lines 163–164); the loop here averages over
  all m₁·m₂, identical after MI's L1 normalisation and the sign step.
- it works in Inception's [−1, 1] input range: mixing and scaling there are, in [0,1] pixels,
  x' + η·(x″ − 0.5) and 0.5 + (· − 0.5)/2^i. Default ``center = 0.5``, the official arithmetic;
  ``center = 0`` is the formula on [0,1] pixels as torchattack and TransferAttack apply it (a variant).
- it attacks the model's prediction (line 237, ``pred``); here the label is the run's (`ctx.y`).

Composition: `scales = 1` gives the bare mix, to compose with `si` (order 30, after this one's 25) or any
other copy-maker; DI (`transform`), TI and MI (`process`) apply to all m₁·m₂ inputs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component, rows_per_image
from transferlab.attacks.registry import register
from transferlab.attacks.scale_invariance import scale_copies
from transferlab.errors import ConfigError


def admix_inputs(points: torch.Tensor, pool: torch.Tensor, eta: float, scales: int,
                 center: float = 0.0) -> torch.Tensor:
    """Mixed and scaled inputs for points (k·B, C, H, W) (copy-major) and pool (B, m₂, C, H, W).

    Returns (m₁·m₂·k·B, C, H, W), copy-major: block i·m₂ + j (each k·B rows) is
    center + (points + η·(pool[:, j] − center) − center)/2^i, pixels in [0,1]."""
    k = points.shape[0] // pool.shape[0]
    others = pool.to(points) if center == 0 else pool.to(points) - center
    mixed = torch.cat([points + eta * others[:, j].repeat(k, 1, 1, 1) for j in range(pool.shape[1])])
    return scale_copies(mixed, scales, center)


@register("admix")
@dataclass
class Admix(Component):
    """Admix: mean loss over (x' + η·x″_j)/2^i for m₂ pool images x″_j and m₁ scales (pixels in [0,1]).

    eta: η, weight of the other image — 0.2 (official `mi_admix.py` flag ``portion``). mixes: m₂, other
    images per image — 3 (flag ``size``). scales: m₁, scale copies of each mix — 5 (hard-coded in the
    official `graph()`; 1 for the bare mix). center: pixel value the scaling contracts toward and the mix
    is taken relative to — 0 ([0,1]-pixel formula, as the ports) or 0.5 (the official [−1,1] arithmetic).
    """

    eta: float = 0.2
    mixes: int = 3
    scales: int = 5
    center: float = 0.5

    order = 25  # expand before SI (30) and the other copy-makers: the mix is scaled, not the other way

    def __post_init__(self) -> None:
        if self.mixes < 1:
            raise ConfigError(f"{self.name}: mixes must be >= 1, got {self.mixes}")
        if self.scales < 1:
            raise ConfigError(f"{self.name}: scales must be >= 1, got {self.scales}")
        if self.eta < 0:
            raise ConfigError(f"{self.name}: eta must be >= 0, got {self.eta}")
        if not 0 <= self.center <= 1:
            raise ConfigError(f"{self.name}: center must be a pixel value in [0, 1], got {self.center}")

    def pool_size(self) -> int:
        return self.mixes

    def batch_multiplier(self) -> int:
        return self.mixes * self.scales

    def expand(self, points: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, int]:
        pool = ctx.pool
        if pool is None or pool.shape[0] != ctx.batch or pool.shape[1] < self.mixes:
            got = None if pool is None else tuple(pool.shape)
            raise ValueError(f"{self.name} needs ctx.pool of {self.mixes} images per image "
                             f"(B, {self.mixes}, C, H, W); got {got}")
        rows_per_image(points.shape[0], ctx)  # refuses rows that are not copies of the batch
        inputs = admix_inputs(points, pool[:, : self.mixes], self.eta, self.scales, self.center)
        return inputs, self.mixes * self.scales
