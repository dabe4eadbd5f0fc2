"""Games: value functions v(S) over coalitions of players, evaluated in batches.

A game is any object with ``n_players: int`` and ``__call__(coalitions) -> values`` where ``coalitions``
is a bool tensor (K, n) and ``values`` is a float64 tensor (K,) — or (B, K) for a batched game that
evaluates the same K coalitions for B images. Estimators (``estimators.py``) only see this interface,
so they can be checked exactly on the analytic games below before they are trusted on a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .game_spec import GameSpec, default_grid
from .players import coalition_masks, grid_cells

__all__ = ["BatchedPerturbationGame", "Game", "GameSpec", "PerturbationGame", "PolynomialGame", "TableGame",
           "default_grid"]


@runtime_checkable
class Game(Protocol):
    """The interface every estimator relies on."""

    n_players: int

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor: ...


def _check_coalitions(coalitions: torch.Tensor, n: int) -> torch.Tensor:
    coalitions = torch.as_tensor(coalitions)
    if coalitions.dim() != 2 or coalitions.shape[1] != n:
        raise ValueError(f"coalitions must have shape (K, {n}), got {tuple(coalitions.shape)}")
    return coalitions.bool()


# --------------------------------------------------------------------------- analytic games (tests)


class TableGame:
    """Explicit values for all 2^n coalitions; coalition S has index Σ_{i∈S} 2^i."""

    def __init__(self, values: torch.Tensor):
        values = torch.as_tensor(values, dtype=torch.float64)
        n = int(round(math.log2(values.shape[-1])))
        if 2**n != values.shape[-1]:
            raise ValueError(f"a table game needs 2^n values in its last axis, got {values.shape[-1]}")
        self.values = values
        self.n_players = n
        self.evaluations = 0

    @classmethod
    def random(cls, n: int, seed: int = 0, batch: int | None = None) -> TableGame:
        """IID standard-normal values (a game with interactions of every order)."""
        g = torch.Generator().manual_seed(seed)
        shape = (2**n,) if batch is None else (batch, 2**n)
        return cls(torch.randn(shape, generator=g, dtype=torch.float64))

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        c = _check_coalitions(coalitions, self.n_players).long()
        index = (c << torch.arange(self.n_players)).sum(-1)
        self.evaluations += c.shape[0]
        return self.values[..., index]


class PolynomialGame:
    """v(S) = Σ_T a_T · Π_{i∈T} [i∈S] (a multilinear polynomial; the a_T are its Möbius coefficients).

    Its Shapley values and interactions are known in closed form, so estimators can be checked on large n:
    φ_i = Σ_{T∋i} a_T/|T| and I_ij = Σ_{T⊇{i,j}} a_T/(|T|−1) (a·x_i·x_j gives I_ij = a; b·x_i·x_j·x_k
    gives I_ij = b/2).
    """

    def __init__(self, n_players: int, terms: Mapping[tuple[int, ...], float]):
        self.n_players = n_players
        self.terms = {tuple(sorted(set(t))): float(a) for t, a in terms.items()}
        for t in self.terms:
            if any(i < 0 or i >= n_players for i in t):
                raise ValueError(f"term {t} names a player outside 0..{n_players - 1}")
        self.evaluations = 0

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        c = _check_coalitions(coalitions, self.n_players)
        out = torch.zeros(c.shape[0], dtype=torch.float64)
        for t, a in self.terms.items():
            present = c[:, list(t)].all(-1) if t else torch.ones(c.shape[0], dtype=torch.bool)
            out += a * present.to(torch.float64)
        self.evaluations += c.shape[0]
        return out

    def shapley_value(self, i: int) -> float:
        """Closed-form Shapley value of player i."""
        return sum(a / len(t) for t, a in self.terms.items() if i in t)

    def interaction(self, i: int, j: int) -> float:
        """Closed-form Shapley interaction index I_ij."""
        return sum(a / (len(t) - 1) for t, a in self.terms.items() if i in t and j in t and i != j)

    def order_interaction(self, i: int, j: int, m: int) -> float:
        """Closed-form m-order interaction: Σ_{T⊇{i,j}} a_T · P(T\\{i,j} ⊆ S) for S uniform with |S| = m."""
        n2 = self.n_players - 2
        total = 0.0
        for t, a in self.terms.items():
            if i in t and j in t and i != j:
                k = len(t) - 2
                if k <= m:
                    total += a * math.comb(n2 - k, m - k) / math.comb(n2, m)
        return total


# --------------------------------------------------------------------------- perturbation games


def _as_player_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """User masks (n, H, W) or (n, 1|C, H, W) → float (n, 1|C, H, W)."""
    masks = torch.as_tensor(masks)
    if masks.dim() == 3:
        masks = masks[:, None]
    if masks.dim() != 4 or tuple(masks.shape[-2:]) != (height, width):
        raise ValueError(f"masks must have shape (n, H, W) or (n, C, H, W) with H, W = {height}, {width}; "
                         f"got {tuple(masks.shape)}")
    return masks.float()


class BatchedPerturbationGame:
    """v_b(S) = score(model(x_b + δ_b,S), y_b) for B images at once, δ_S keeping the players in S.

    x, delta: (B, C, H, W), pixels in [0, 1] (delta = x_adv − x). Players are the cells of a grid×grid
    partition (default ``default_grid``) or arbitrary ``masks`` (n, H, W) / (n, 1|C, H, W), with
    δ_S = δ·Σ_{i∈S} m_i. The score and the "other" class policy are a ``GameSpec`` (``game_spec.py``;
    ``other`` None: per-coalition for the margin, the paper's definition); under ``fixed`` the other class
    of each image is taken once from v(N)'s logits, one extra forward per image (counted in ``forwards``).
    ``__call__`` maps K coalitions to (B, K) float64 values; images × coalitions are
    flattened into the model's batch, at most ``chunk`` images per forward, under ``torch.no_grad``. The
    model must be in eval mode (a BatchNorm in train mode would make a value depend on the batch-mates).
    ``evaluations`` counts coalition evaluations per image (K per call); ``forwards`` counts model inputs.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor,
                 grid: int | None = None, masks: torch.Tensor | None = None, score: str = "margin",
                 chunk: int = 256, other: str | None = None):
        if x.dim() != 4 or x.shape != delta.shape:
            raise ValueError(f"x and delta must both be (B, C, H, W), got {tuple(x.shape)} and "
                             f"{tuple(delta.shape)}")
        height, width = x.shape[-2:]
        self.model, self.x, self.delta = model, x, delta
        self.y = torch.as_tensor(y, device=x.device).long().reshape(-1)
        if self.y.numel() != x.shape[0]:
            raise ValueError(f"need one label per image: {x.shape[0]} images, {self.y.numel()} labels")
        self.spec = GameSpec.resolve(score, other, grid, role="measure")
        self.score_name = score
        self.chunk = max(1, int(chunk))
        self._other: torch.Tensor | None = None  # the fixed policy's class per image, from v(N)
        if masks is not None:
            self.masks = _as_player_masks(masks, height, width).to(x.device)
            self.cells, self.grid = None, None
            self.n_players = self.masks.shape[0]
        else:
            self.grid = self.spec.grid_for(height, width)
            self.cells, self.masks = grid_cells(height, width, self.grid, device=x.device), None
            self.n_players = self.grid**2
        self.evaluations = 0
        self.forwards = 0

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def pixel_masks(self, coalitions: torch.Tensor) -> torch.Tensor:
        """(K, 1|C, H, W) float masks of the coalitions' pixels."""
        c = coalitions.to(self.x.device)
        if self.cells is not None:
            return coalition_masks(c, self.cells, dtype=self.x.dtype)
        flat = c.to(self.masks.dtype) @ self.masks.flatten(1)
        return flat.view(c.shape[0], *self.masks.shape[1:]).to(self.x.dtype)

    def _logits(self, coalitions: torch.Tensor) -> torch.Tensor:
        """(B·k, classes) float64 logits of k coalitions (image-major), one forward."""
        masks = self.pixel_masks(coalitions)  # (k, 1|C, H, W)
        images = self.x[:, None] + self.delta[:, None] * masks[None]  # (B, k, C, H, W)
        self.forwards += images.shape[0] * images.shape[1]
        return self.model(images.flatten(0, 1)).double()

    @property
    def other(self) -> torch.Tensor | None:
        """The fixed policy's other class per image (B,), argmax_{c≠y} of v(N)'s logits; None otherwise."""
        if self.spec.other == "fixed" and self._other is None:
            everyone = torch.ones(1, self.n_players, dtype=torch.bool, device=self.x.device)
            with torch.no_grad():
                self._other = self.spec.other_class(self._logits(everyone), self.y)
        return self._other

    def _forward_chunk(self, coalitions: torch.Tensor) -> torch.Tensor:
        """(B, k) values for k coalitions, one forward."""
        b, k = self.batch_size, coalitions.shape[0]
        logits = self._logits(coalitions)
        labels = self.y[:, None].expand(b, k).reshape(-1)
        other = self.other
        if other is not None:
            other = other[:, None].expand(b, k).reshape(-1)
        return self.spec.value(logits, labels, other).view(b, k)

    @torch.no_grad()
    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        c = _check_coalitions(coalitions, self.n_players)
        per_forward = max(1, self.chunk // self.batch_size)
        parts = [self._forward_chunk(c[s:s + per_forward]) for s in range(0, c.shape[0], per_forward)]
        self.evaluations += c.shape[0]
        if not parts:
            return torch.zeros(self.batch_size, 0, dtype=torch.float64, device=self.x.device)
        return torch.cat(parts, dim=1)


class PerturbationGame(BatchedPerturbationGame):
    """The single-image game v(S) = score(model(x + δ_S), y): x, delta (C, H, W) in [0, 1]; returns (K,)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: int | torch.Tensor,
                 grid: int | None = None, masks: torch.Tensor | None = None, score: str = "margin",
                 chunk: int = 256, other: str | None = None):
        if x.dim() != 3:
            raise ValueError(f"x must be one image (C, H, W), got {tuple(x.shape)}")
        super().__init__(model, x[None], delta[None], torch.as_tensor(y).reshape(1), grid=grid, masks=masks,
                         score=score, chunk=chunk, other=other)

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        return super().__call__(coalitions)[0]
