"""The perturbation game that IR penalises and the measurement plays: players, score, "other" class.

v(S) = s(x + δ_S), δ_S keeping the players (grid cells) in S and zeroing the rest; the players are the
cells of a g×g grid, g = ``default_grid`` unless given. Every score is oriented larger = more adversarial:

- ``margin``: s = z_o − z_y with the "other" class o chosen by the policy ``other``:
  - ``per-coalition``: o = argmax_{c≠y} z_c(x + δ_S) for every S, i.e.
    v(S) = max_{y'≠y} h_{y'}(x + δ_S) − h_y(x + δ_S), the paper's definition (Wang et al., ICLR 2021, §3);
    the measurement's default.
  - ``fixed``: o = y* = argmax_{c≠y} z_c(x + δ_N), from the full perturbation, for all S: what the
    reference code and IR play (y* is re-chosen at every attack step); IR's default.
  The two are different games: re-picking the class per coalition adds interaction whenever the winning
  wrong class changes across coalitions (DESIGN §2).
- ``logodds``: s = log (1 − p_y)/p_y = logsumexp_{c≠y} z_c − z_y (the negated log-odds of the true class);
  it sums over every wrong class, so no policy applies (``other`` is None).

IR's term and ``BatchedPerturbationGame`` both read a ``GameSpec``, so the oracle tests that check the
estimators on a game also check the game IR penalises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .scores import SCORES, logodds, margin, other_class

OTHER_POLICIES = ("fixed", "per-coalition")


def default_grid(height: int, width: int) -> int:
    """Default grid side: 16 (14-px cells at 224 px) for images ≥ 128 px, else 8 (4-px cells at 32 px)."""
    return 16 if min(height, width) >= 128 else 8


def default_other(score: str, role: str) -> str | None:
    """The policy when none is given: ``per-coalition`` for measurement (the paper's equation), ``fixed``
    for IR (the reference code's); None for scores without an other class."""
    if score != "margin":
        return None
    return "fixed" if role == "ir" else "per-coalition"


@dataclass(frozen=True)
class GameSpec:
    """score: margin | logodds; other: fixed | per-coalition (margin only); grid: cells per side or None
    for ``default_grid``."""

    score: str = "margin"
    other: str | None = "per-coalition"
    grid: int | None = None

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose one of {SCORES}")
        if self.score == "margin" and self.other not in OTHER_POLICIES:
            raise ValueError(f"the margin score needs an 'other' class policy, one of {OTHER_POLICIES}; "
                             f"got {self.other!r}")
        if self.score != "margin" and self.other is not None:
            raise ValueError(f"the {self.score} score sums over every wrong class: the 'other' class policy "
                             f"applies to the margin score only (got other={self.other!r})")
        if self.grid is not None and self.grid < 1:
            raise ValueError(f"grid must be >= 1 or None, got {self.grid}")

    @classmethod
    def resolve(cls, score: str = "margin", other: str | None = None, grid: int | None = None,
                role: str = "measure") -> GameSpec:
        """A spec with the role's default policy when ``other`` is None (``role``: measure | ir)."""
        return cls(score, other if other is not None else default_other(score, role), grid)

    def grid_for(self, height: int, width: int) -> int:
        """Cells per side for an image of this size."""
        return self.grid if self.grid is not None else default_grid(height, width)

    def other_class(self, full_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The fixed policy's y* per row from the full perturbation's logits; None for the other policies."""
        if self.other != "fixed":
            return None
        return other_class(full_logits, y)

    def value(self, logits: torch.Tensor, y: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        """s(logits) per row, larger = more adversarial; ``other`` is the fixed class per row (or None)."""
        if self.score == "margin":
            if self.other == "fixed" and other is None:
                raise ValueError("the fixed policy needs the other class of the full perturbation "
                                 "(GameSpec.other_class)")
            return margin(logits, y, other if self.other == "fixed" else None)
        return logodds(logits, y)

    def describe(self) -> str:
        """One line: 'margin, other class fixed' / 'logodds'."""
        return self.score if self.other is None else f"{self.score}, other class {self.other}"
