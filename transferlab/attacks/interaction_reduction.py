"""Interaction reduction (IR; Wang et al., ICLR 2021): maximise CE − λ·Î(δ), Î an interaction estimate.

Players are the cells of a g×g grid over δ = point − x (point includes NI's look-ahead); v(S) = s(x + δ_S)
is the game of ``transferlab.interaction.game_spec.GameSpec`` — the one `transferlab interaction`
measures — with the score s = z_other − z_y and, by default, the "other" class fixed per step and per
image as the argmax over c ≠ y of the full-perturbation logits (``other: fixed``, the reference code's;
``per-coalition`` re-picks it for every masked input, the paper's equation). Variants (``variant``):

- ``official``: K masks M_k per image, each the union of m cells drawn with replacement;
  Î = mean_k [s(x+δ) − s(x+δ⊙(1−M_k)) − s(x+δ⊙M_k) + s(x)]. Its scale is not the pairwise
  interaction's: λ is only comparable inside this variant.
- ``pairwise``: Î = 1/(n−1) · mean_{i∈P} [s(x+δ) − s(x+δ_{N∖i}) − s(x+δ_i) + s(x)], P all n cells or
  ``players`` cells drawn per step and image without replacement: an unbiased estimate of the average
  pairwise Shapley interaction E_{i≠j} I_ij (exact with all players, by Σ_{j≠i} I_ij = v(N)−v(N∖i)−v(i)+v(∅)).
- ``control``: the official variant's masked inputs at the same cost, but the term is +λ·mean CE over
  them (masking as augmentation, no interaction): isolates the effect of penalising interaction.

Every image gets its own term (logits gathered per image); the clean logits z(x) are computed once per batch
in ``setup``; all masked inputs of the batch go through the model in one forward. Memory: the forward keeps
(2K+1) (official/control) or (2|P|+1) (pairwise) sets of activations per image for the backward pass.

Batches: IR is ``per_image``, so the attack loop gives it micro-batches of one image and every model call
holds that image's inputs only. Needed for batch independence: with no random start, δ = 0 at the first
step, where Î's gradient is exactly 0 but its float residue (~1e-5 on a CIFAR ResNet-20) exceeds the
cross-entropy gradient of confidently classified images, so the first sign step follows float noise, and
CPU kernels round differently for another batch shape (1 vs 2 vs ≥3 images). On one image per call the
result is the image's alone result whatever the batch size, `max_forward` or batch-mates; it still
depends on the torch build, CPU and thread count. Costs nothing at 32 px (measured 0.92–1.0× the time
of 3-image micro-batches) and changes nothing at ≥ 128 px with the automatic `max_forward` (≤ 64 inputs,
fewer than one image's 2K+1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transferlab.attacks.base import AttackContext, Component, rows_per_image
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError
from transferlab.interaction.game_spec import GameSpec
from transferlab.interaction.players import coalition_masks, grid_cells, grid_masks

VARIANTS = ("official", "pairwise", "control")


@register("ir")
@dataclass
class InteractionReduction(Component):
    """IR: objective CE − lam·Î. variant official|pairwise|control; grid g (None: 16 if H ≥ 128 else 8);
    cells m per mask (None: 32 on a 16-grid, g²//4 otherwise); masks K (32); players |P| for pairwise
    (32: the cost of `official` with K=32; None or >= n: all n cells); score margin|logodds (larger = more
    adversarial); other fixed|per-coalition (None: fixed for the margin, the reference's)."""

    variant: str = "official"
    lam: float = 1.0
    grid: int | None = None
    cells: int | None = None
    masks: int = 32
    players: int | None = 32
    score: str = "margin"
    other: str | None = None

    order = 70
    default_random_start = False
    per_image = True  # one image per micro-batch: floats independent of batch-mates (module docstring)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"{self.name}: variant must be one of {VARIANTS}, got {self.variant!r}")
        for key in ("grid", "cells", "players"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{self.name}: {key} must be >= 1 or None, got {value}")
        if self.masks < 1:
            raise ConfigError(f"{self.name}: masks must be >= 1, got {self.masks}")
        if self.lam < 0:
            raise ConfigError(f"{self.name}: lam must be >= 0 (the sign is fixed: interaction is reduced)")
        try:
            self.game = GameSpec.resolve(self.score, self.other, self.grid, role="ir")
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None
        self.other = self.game.other  # resolved: the run's identity names the policy played

    # ------------------------------------------------------------------ sizes
    def grid_for(self, height: int, width: int | None = None) -> int:
        return self.game.grid_for(height, height if width is None else width)

    def cells_per_mask(self, grid: int) -> int:
        if self.cells is not None:
            return self.cells
        return 32 if grid == 16 else max(1, grid * grid // 4)

    def coalitions_per_image(self, n: int | None = None) -> int:
        """Masks per image per step: K, or |P| for pairwise."""
        if self.variant != "pairwise":
            return self.masks
        if n is None:  # before the image size is known: the largest grid (16 px cells at >= 128 px)
            n = (self.grid if self.grid is not None else 16) ** 2
        return n if self.players is None else min(self.players, n)

    def extra_forwards(self) -> int:
        """2 masked inputs per coalition, plus the full input when the data term's logits are not reusable."""
        return 2 * self.coalitions_per_image() + 1

    # ------------------------------------------------------------------ hooks
    def setup_forwards(self) -> int:
        """The clean logits, once per batch."""
        return 1

    def _key(self, what: str) -> str:
        return f"{self.name}:{what}"

    def setup(self, ctx: AttackContext) -> None:
        h, w = ctx.x.shape[-2:]
        g = self.grid_for(h, w)
        cells = grid_cells(h, w, g, device=ctx.x.device)
        n = g * g
        if self.variant == "pairwise" and n < 2:
            raise ValueError(
                f"{self.name}: pairwise interaction needs at least 2 players, got a {g}x{g} grid"
            )
        with torch.no_grad():
            ctx.state[self._key("clean_logits")] = ctx.forward(ctx.x).detach()
        ctx.state[self._key("cells")] = cells
        ctx.state[self._key("grid")] = g
        ctx.state[self._key("n")] = n
        if self.variant == "pairwise":  # the single-cell masks are constant across steps: built once
            ctx.state[self._key("single")] = grid_masks(h, w, g, device=ctx.x.device, dtype=ctx.x.dtype)

    def teardown(self, ctx: AttackContext) -> None:
        for what in ("clean_logits", "cells", "grid", "n", "single"):
            ctx.state.pop(self._key(what), None)

    def coalition_masks(self, rows: int, ctx: AttackContext, dtype: torch.dtype) -> torch.Tensor:
        """Pixel masks of the step's coalitions S: (rows, P, 1, H, W).

        rows = k·B, copy-major (row c·B + b belongs to image b); draws from each image's own stream.
        """
        cells, g, n = (ctx.state[self._key(what)] for what in ("cells", "grid", "n"))
        k = rows_per_image(rows, ctx)
        if self.variant == "pairwise":
            single = ctx.state[self._key("single")].to(dtype)  # (n, 1, H, W), from setup
            if self.players is None or self.players >= n:
                return single[None].expand(rows, n, 1, *cells.shape)
            u = ctx.streams.rand(k, n, dtype=torch.float64)  # (B, k, n)
            idx = u.argsort(-1)[..., : self.players].transpose(0, 1).reshape(rows, self.players)
            return single[idx.to(cells.device)]
        m = self.cells_per_mask(g)
        idx = ctx.streams.randint(n, k, self.masks, m).transpose(0, 1).reshape(rows, self.masks, m)
        coalitions = torch.zeros(rows, self.masks, n, device=cells.device)
        coalitions.scatter_(-1, idx.to(cells.device), 1.0)
        return coalition_masks(coalitions, cells, dtype=dtype)

    def _masked_logits(self, point, logits, ctx, need_full: bool):
        """(full logits or None, masked logits (rows, 2, P, classes), repeated y, repeated clean logits)."""
        rows = point.shape[0]
        k = rows_per_image(rows, ctx)
        x = ctx.x.repeat(k, 1, 1, 1)
        masks = self.coalition_masks(rows, ctx, point.dtype)  # (rows, P, 1, H, W)
        p = masks.shape[1]
        delta_s = (point - x)[:, None] * masks  # δ_S
        with_s = x[:, None] + delta_s
        without_s = point[:, None] - delta_s  # x + δ_{N∖S}
        inputs = torch.cat([without_s, with_s], 1).flatten(0, 1)  # image-major: (rows·2P, C, H, W)
        full_needed = need_full and logits is None
        if full_needed:
            inputs = torch.cat([inputs, point])
        z = ctx.forward(inputs)
        if full_needed:
            logits, z = z[-rows:], z[:-rows]
        return (
            logits,
            z.view(rows, 2, p, -1),
            ctx.y.repeat(k),
            ctx.state[self._key("clean_logits")].repeat(k, 1),
        )

    def interaction(self, point: torch.Tensor, ctx: AttackContext, logits: torch.Tensor | None = None):
        """Î per row of `point` (official or pairwise estimate), differentiable w.r.t. point."""
        if self.variant == "control":
            raise ValueError(f"{self.name}: the control variant has no interaction term")
        full, z, y, clean = self._masked_logits(point, logits, ctx, need_full=True)
        rows, _, p, classes = z.shape
        game = self.game
        other = game.other_class(full, y)  # None under per-coalition
        s_full = game.value(full, y, other)
        s_clean = game.value(clean, y, other)
        s_masked = game.value(
            z.reshape(-1, classes), y.repeat_interleave(2 * p),
            None if other is None else other.repeat_interleave(2 * p),
        ).view(rows, 2, p)
        terms = s_full[:, None] - s_masked[:, 0] - s_masked[:, 1] + s_clean[:, None]  # (rows, P)
        if self.variant == "pairwise":
            return terms.mean(1) / (ctx.state[self._key("n")] - 1)
        return terms.mean(1)

    def regulariser(
        self, point: torch.Tensor, logits: torch.Tensor | None, ctx: AttackContext
    ) -> torch.Tensor:
        if self.variant == "control":
            _, z, y, _ = self._masked_logits(point, logits, ctx, need_full=False)
            rows, two, p, classes = z.shape
            ce = F.cross_entropy(z.reshape(-1, classes), y.repeat_interleave(two * p), reduction="none")
            return self.lam * ce.view(rows, two * p).mean(1)
        return -self.lam * self.interaction(point, ctx, logits)
