"""Start from another attack's output (two-stage methods such as ILA refine a baseline attack's images).

`start` owns the `init` hook: it runs the attack `method` (same ε, norm, per-image streams and model) on
the batch and hands its perturbation to the main loop as δ₀. Its forwards are declared as setup
forwards, so the cost tables count both stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError


@register("start")
@dataclass
class WarmStart(Component):
    """δ₀ from another attack: `method` run for `steps` steps (α as the main loop's) on the same images."""

    method: str = "pgd"
    steps: int = 10
    params: dict[str, Any] = field(default_factory=dict)
    order = 5

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"{self.name}: steps must be a positive integer, got {self.steps!r}")
        self._first = self._build(1.0, 1.0)  # checks the method and parameters now, not mid-run

    def _build(self, eps: float, alpha: float, seed: int = 0):
        from transferlab.attacks.registry import build_attack

        stage = build_attack(self.method, self.params, eps=eps, alpha=alpha, steps=self.steps, seed=seed)
        if any(isinstance(c, WarmStart) for c in stage.components):
            raise ConfigError(f"{self.name}: the first stage cannot itself start from another attack")
        return stage

    def setup_forwards(self) -> int:
        return int(round(self._first.passes_total()))

    def setup_inputs(self) -> int:
        return self._first.inputs_per_image()

    def init(self, ctx: AttackContext) -> torch.Tensor:
        attack = ctx.attack
        stage = self._build(ctx.eps, ctx.alpha, seed=attack.seed if attack else 0)
        stage.norm = ctx.norm
        stage.max_forward = attack.max_forward if attack else stage.max_forward
        stage.forwards_total, stage.forwards_by = 0, {}
        adv = stage._run_batch(ctx.model, ctx.x, ctx.y, ctx.streams, torch.arange(ctx.batch), None,
                               target=ctx.target, pool=ctx.pool)
        ctx.forwards += stage.last_context.forwards
        return adv - ctx.x
