"""Scale invariance (SI; Lin et al., ICLR 2020, "Nesterov Accelerated Gradient and Scale Invariance for
Adversarial Attacks", eq. 7): the gradient of the loss averaged over m scaled copies S_i(x') = x'/2^i,
i = 0..m−1, differentiated through the scaling (so copy i contributes 2^−i·∇L(x'/2^i)), all copies in one
batch (copy-major) through the `expand` hook.

Sources (official code github.com/JHL-HUST/SI-NI-FGSM, commit 4464fcd, `si_mi_fgsm.py` / `si_ni_fgsm.py`):

- m = 5: `graph()`, lines 146–187 of `si_mi_fgsm.py`, five hard-coded copies x, x/2, x/4, x/8, x/16 (there is
  no flag for m; the paper's §4.1 also uses m = 5).
- torchattack (spencerwooo/torchattack, `torchattack/sinifgsm.py`, line 40 `m: int = 3`, docstring line 25):
  m = 3, reachable here as ``si: {copies: 3}``.

Where the official code differs from this port:

- it sums the m gradients (``noise +=``); the loop here averages them. MI's L1 normalisation and the sign
  step make the two identical; an L2 step normalises as well.
- its images are in Inception's [−1, 1] input range, so x/2^i contracts toward mid-grey (0 in [−1,1] is
  0.5 in [0,1] pixels); the paper's formula on [0,1] pixels, and the ports (torchattack, TransferAttack)
  contract toward black. Default ``center = 0.5``, the official code's arithmetic, 0.5 + (x' − 0.5)/2^i
  (the official value wins where code and ports differ); ``center = 0`` is the ports' variant.
- it attacks the model's own prediction (line 155, ``y = pred`` at the first iteration); here the label is
  whatever the run gives (`ctx.y`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError


def scale_copies(points: torch.Tensor, copies: int, center: float = 0.0) -> torch.Tensor:
    """(copies·R, C, H, W) copy-major: row i·R + r is center + (points[r] − center)/2^i (pixels in [0,1])."""
    if center == 0:
        return torch.cat([points * 0.5**i for i in range(copies)])
    return torch.cat([center + (points - center) * 0.5**i for i in range(copies)])


@register("si")
@dataclass
class ScaleInvariance(Component):
    """SI: mean loss over copies x'/2^i, i = 0..m−1.

    copies: m, the number of scale copies — 5 (official SI-NI-FGSM `si_mi_fgsm.py`, the paper's §4.1);
    3 is torchattack's (swoo) default. center: the pixel value (in [0,1]) the copies contract toward —
    0 (x'/2^i on [0,1] pixels: the paper's formula, as the ports) or 0.5 (the official TF code, which
    scales in Inception's [−1,1] input range).
    """

    copies: int = 5
    center: float = 0.5

    order = 30  # after Admix's mixing (25): scales of the mixed image, as the official Admix code
    prefix_stable = True  # fixed scales, no draws

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ConfigError(f"{self.name}: copies must be >= 1, got {self.copies}")
        if not 0 <= self.center <= 1:
            raise ConfigError(f"{self.name}: center must be a pixel value in [0, 1], got {self.center}")

    def batch_multiplier(self) -> int:
        return self.copies

    def expand(self, points: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, int]:
        return scale_copies(points, self.copies, self.center), self.copies
