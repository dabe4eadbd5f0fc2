"""Objectives that replace cross-entropy: logit and margin (C&W) losses, untargeted and targeted.

Each owns the `objective` hook and returns, per model input, the quantity the step maximises. With a
targeted attack (`targeted: true`) the loop passes the target classes and the objective turns toward
them. Logit loss: Zhao et al., *On Success and Simplicity: A Second Look at Transferable Targeted
Attacks*, NeurIPS 2021 (maximise the target logit); margin: Carlini & Wagner, S&P 2017, eq. for f₆
(the logit margin, capped at κ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError


def _other_max(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """max over j ≠ cls of logits[:, j]."""
    masked = logits.scatter(1, cls[:, None], float("-inf"))
    return masked.amax(1)


@register("logit")
@dataclass
class LogitLoss(Component):
    """Logit loss: maximise the target logit (targeted), or minimise the true-class logit."""

    def objective(self, logits, y, target, ctx: AttackContext) -> torch.Tensor:
        if target is not None:
            return logits.gather(1, target[:, None]).squeeze(1)
        return -logits.gather(1, y[:, None]).squeeze(1)


@register("margin")
@dataclass
class MarginLoss(Component):
    """C&W margin: max_{j≠y} z_j − z_y (untargeted) or z_t − max_{j≠t} z_j (targeted), capped at kappa."""

    kappa: float = float("inf")

    def __post_init__(self) -> None:
        if not self.kappa > 0:
            raise ConfigError(f"{self.name}: kappa must be > 0 (inf: no cap), got {self.kappa}")

    def objective(self, logits, y, target, ctx: AttackContext) -> torch.Tensor:
        if target is not None:
            value = logits.gather(1, target[:, None]).squeeze(1) - _other_max(logits, target)
        else:
            value = _other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)
        return value.clamp(max=self.kappa)
