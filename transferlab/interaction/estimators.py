"""Estimators of Shapley values and Shapley interaction indices, separate from the games they query.

All estimators accept a plain game (values (K,)) or a batched game (values (B, K)): results then carry the
same leading batch axis. Every estimator batches its coalitions into few game calls and reports the number
of coalition evaluations it spent per image.

Definitions (DESIGN §2): Δ_ij(S) = v(S∪{i,j}) − v(S∪{i}) − v(S∪{j}) + v(S);
I_ij = Σ_{S⊆N\\{i,j}} |S|!(n−|S|−2)!/(n−1)! · Δ_ij(S) = E_{r~U{0..n−2}} E_{|S|=r} Δ_ij(S);
I^(m)_ij = E_{|S|=m} Δ_ij(S), so I_ij = mean_m I^(m)_ij.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .games import Game

DEFAULT_MAX_PLAYERS = 16

Pairs = Sequence[tuple[int, int]]


@dataclass
class Estimate:
    """An estimate: ``value`` (float or tensor), ``stderr`` (None when exact), ``evaluations`` per image."""

    value: float | torch.Tensor
    stderr: float | torch.Tensor | None
    evaluations: int
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _scalar(t: torch.Tensor | None) -> float | torch.Tensor | None:
    """0-d tensors become floats (a single game's scalar result)."""
    if t is None:
        return None
    return float(t) if t.dim() == 0 else t


def _evaluate(game: Game, coalitions: torch.Tensor) -> torch.Tensor:
    """Values with coalitions in the last axis, float64 on the CPU."""
    return torch.as_tensor(game(coalitions)).detach().to("cpu", torch.float64)


# --------------------------------------------------------------------------- exact (enumeration)


def all_coalitions(n: int) -> torch.Tensor:
    """Bool (2^n, n): row k is the coalition {i : bit i of k is set}."""
    k = torch.arange(2**n)
    return ((k[:, None] >> torch.arange(n)) & 1).bool()


def _enumerate(game: Game, max_players: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (..., 2^n), popcounts (2^n,)) over all coalitions; one game call."""
    n = game.n_players
    if n > max_players:
        raise ValueError(f"exact enumeration needs 2^n game evaluations: n = {n} players exceeds the limit "
                         f"max_players = {max_players}; use a coarser grid, a sampled estimator, "
                         "or raise max_players")
    coalitions = all_coalitions(n)
    return _evaluate(game, coalitions), coalitions.sum(-1)


def _shapley_weights(n: int, offset: int) -> torch.Tensor:
    """w(s) = s!(n−s−offset)!/(n−offset+1)! for s = 0..n−offset (offset 1: Shapley, 2: interaction)."""
    m = n - offset
    w = [math.factorial(s) * math.factorial(m - s) / math.factorial(m + 1) for s in range(m + 1)]
    return torch.tensor(w, dtype=torch.float64)


def _pair_deltas(values: torch.Tensor, n: int, i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Δ_ij(S) for every S ⊆ N\\{i,j} (..., 2^(n−2)) and the subsets' indices."""
    idx = torch.arange(2**n)
    bi, bj = 1 << i, 1 << j
    s = idx[(idx & bi == 0) & (idx & bj == 0)]
    delta = values[..., s | bi | bj] - values[..., s | bi] - values[..., s | bj] + values[..., s]
    return delta, s


def exact_shapley(game: Game, max_players: int = DEFAULT_MAX_PLAYERS) -> Estimate:
    """Shapley values φ (..., n) by full enumeration of the 2^n coalitions."""
    n = game.n_players
    values, size = _enumerate(game, max_players)
    w = _shapley_weights(n, 1)
    idx = torch.arange(2**n)
    phi = []
    for i in range(n):
        s = idx[idx & (1 << i) == 0]
        phi.append(((values[..., s | (1 << i)] - values[..., s]) * w[size[s]]).sum(-1))
    return Estimate(torch.stack(phi, -1), None, 2**n, "exact_shapley")


def exact_interactions(game: Game, max_players: int = DEFAULT_MAX_PLAYERS) -> Estimate:
    """The n×n matrix of Shapley interaction indices I_ij (..., n, n) by full enumeration; diagonal 0."""
    n = game.n_players
    values, size = _enumerate(game, max_players)
    w = _shapley_weights(n, 2)
    out = torch.zeros(*values.shape[:-1], n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            delta, s = _pair_deltas(values, n, i, j)
            out[..., i, j] = out[..., j, i] = (delta * w[size[s]]).sum(-1)
    return Estimate(out, None, 2**n, "exact_interactions")


def exact_order_interactions(game: Game, max_players: int = DEFAULT_MAX_PLAYERS) -> Estimate:
    """All m-order interactions I^(m)_ij (..., n−1, n, n), m = 0..n−2, by full enumeration; diagonal 0."""
    n = game.n_players
    values, size = _enumerate(game, max_players)
    out = torch.zeros(*values.shape[:-1], n - 1, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            delta, s = _pair_deltas(values, n, i, j)
            for m in range(n - 1):
                out[..., m, i, j] = out[..., m, j, i] = delta[..., size[s] == m].mean(-1)
    return Estimate(out, None, 2**n, "exact_order_interactions")


# --------------------------------------------------------------------------- sampled


def _normalise_pairs(pairs: Pairs | tuple[int, int], n: int) -> list[tuple[int, int]]:
    if len(pairs) == 2 and all(isinstance(p, int) for p in pairs):
        pairs = [pairs]  # a single pair
    out = []
    for i, j in pairs:
        i, j = int(i), int(j)
        if i == j or not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair ({i}, {j}) is not two distinct players of 0..{n - 1}")
        out.append((i, j))
    if not out:
        raise ValueError("need at least one pair")
    return out


def random_pairs(n: int, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` distinct unordered pairs (i < j) drawn uniformly without replacement."""
    total = n * (n - 1) // 2
    if count > total:
        raise ValueError(f"asked for {count} pairs but {n} players have only {total}")
    g = torch.Generator().manual_seed(seed)
    i, j = torch.triu_indices(n, n, offset=1)
    pick = torch.randperm(total, generator=g)[:count].sort().values
    return [(int(i[k]), int(j[k])) for k in pick]


def _subsets_of_rest(n: int, i: int, j: int, sizes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Bool (S, n): for each requested size, a uniform subset of N\\{i,j} of that size."""
    rest = torch.tensor([k for k in range(n) if k not in (i, j)], dtype=torch.long)
    rank = torch.rand(sizes.shape[0], n - 2, generator=g, dtype=torch.float64).argsort(-1).argsort(-1)
    chosen = rank < sizes[:, None]
    out = torch.zeros(sizes.shape[0], n, dtype=torch.bool)
    out[:, rest] = chosen
    return out


def _four_corners(subsets: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """(4·S, n): S∪{i,j}, S∪{i}, S∪{j}, S for every subset S (in that block order)."""
    with_i, with_j, with_ij = subsets.clone(), subsets.clone(), subsets.clone()
    with_i[:, i] = True
    with_j[:, j] = True
    with_ij[:, [i, j]] = True
    return torch.cat([with_ij, with_i, with_j, subsets])


def _deltas_from_corners(values: torch.Tensor, count: int) -> torch.Tensor:
    """Δ(S) (..., count) from values of the four-corner blocks (..., 4·count)."""
    v = values.unflatten(-1, (4, count))
    return v[..., 0, :] - v[..., 1, :] - v[..., 2, :] + v[..., 3, :]


def _mean_stderr(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over the last axis (stderr NaN with one sample)."""
    k = samples.shape[-1]
    sd = samples.std(-1, correction=1) if k > 1 else torch.full_like(samples[..., 0], float("nan"))
    return samples.mean(-1), sd / math.sqrt(k)


def _sampled_pair_deltas(game: Game, pairs: list[tuple[int, int]], sizes: list[torch.Tensor],
                         g: torch.Generator) -> list[torch.Tensor]:
    """Δ_ij over sampled subsets of the requested sizes for every pair; all pairs in one game call."""
    n = game.n_players
    blocks = [_four_corners(_subsets_of_rest(n, i, j, sz, g), i, j)
              for (i, j), sz in zip(pairs, sizes, strict=True)]
    values = _evaluate(game, torch.cat(blocks))
    out, start = [], 0
    for sz in sizes:
        k = sz.shape[0]
        out.append(_deltas_from_corners(values[..., start:start + 4 * k], k))
        start += 4 * k
    return out


def sampled_interaction(game: Game, pairs: Pairs | tuple[int, int], samples: int = 100,
                        seed: int = 0) -> Estimate:
    """Unbiased sampled Shapley interaction index for each pair: value, stderr (..., P).

    Each sample draws r uniform in {0..n−2}, then S ⊆ N\\{i,j} uniform with |S| = r (exactly the Shapley
    weighting), and costs 4 evaluations: 4·P·samples per image, in one game call.
    """
    n = game.n_players
    if n < 2 or samples < 1:
        raise ValueError("need at least 2 players and 1 sample")
    pairs = _normalise_pairs(pairs, n)
    g = torch.Generator().manual_seed(seed)
    sizes = [torch.randint(0, n - 1, (samples,), generator=g) for _ in pairs]
    deltas = torch.stack(_sampled_pair_deltas(game, pairs, sizes, g), -2)  # (..., P, samples)
    value, stderr = _mean_stderr(deltas)
    return Estimate(value, stderr, 4 * len(pairs) * samples, "sampled_interaction",
                    {"pairs": pairs, "samples": samples, "seed": seed})


def order_interactions(game: Game, pairs: Pairs | tuple[int, int], orders: Sequence[int] | None = None,
                       samples: int = 100, seed: int = 0) -> Estimate:
    """Sampled m-order interactions I^(m)_ij (|S| = m fixed, S uniform): value, stderr (..., P, M).

    ``orders`` defaults to all m = 0..n−2 (then the mean over the last axis estimates I_ij).
    Costs 4·P·M·samples evaluations per image, in one game call.
    """
    n = game.n_players
    pairs = _normalise_pairs(pairs, n)
    orders = list(range(n - 1)) if orders is None else [int(m) for m in orders]
    if any(m < 0 or m > n - 2 for m in orders):
        raise ValueError(f"orders must lie in 0..{n - 2} for {n} players, got {orders}")
    if samples < 1:
        raise ValueError("need at least 1 sample")
    g = torch.Generator().manual_seed(seed)
    flat_pairs = [p for p in pairs for _ in orders]
    sizes = [torch.full((samples,), m, dtype=torch.long) for _ in pairs for m in orders]
    deltas = torch.stack(_sampled_pair_deltas(game, flat_pairs, sizes, g), -2)  # (..., P·M, samples)
    value, stderr = _mean_stderr(deltas.unflatten(-2, (len(pairs), len(orders))))
    return Estimate(value, stderr, 4 * len(flat_pairs) * samples, "order_interactions",
                    {"pairs": pairs, "orders": orders, "samples": samples, "seed": seed})


# --------------------------------------------------------------------------- average pairwise interaction


def average_interaction(game: Game, players: int | Sequence[int] | None = None, seed: int = 0) -> Estimate:
    """Average pairwise interaction E_{i≠j}[I_ij], via Σ_{j≠i} I_ij = v(N) − v(N\\{i}) − v({i}) + v(∅).

    players=None: exact over all n players (2n+2 evaluations, stderr None). players=k (int): k players drawn
    uniformly without replacement (seeded) — unbiased, stderr with the finite-population correction.
    players=[...]: exactly the average over those rows i (stderr None).
    ``extra['row_sums']`` holds Σ_{j≠i} I_ij for the players used (..., k).
    """
    n = game.n_players
    if n < 2:
        raise ValueError("the pairwise interaction needs at least 2 players")
    sampled = isinstance(players, numbers.Integral) and not isinstance(players, bool)
    if players is None:
        chosen = torch.arange(n)
    elif sampled:
        if not 1 <= players <= n:
            raise ValueError(f"players must be in 1..{n}, got {players}")
        chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:players].sort().values
    else:
        chosen = torch.as_tensor(list(players), dtype=torch.long)
        if chosen.numel() == 0 or chosen.min() < 0 or chosen.max() >= n:
            raise ValueError(f"players must be indices in 0..{n - 1}")
    k = chosen.numel()
    singles = torch.zeros(k, n, dtype=torch.bool)
    singles[torch.arange(k), chosen] = True
    coalitions = torch.cat([torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool),
                            ~singles, singles])
    v = _evaluate(game, coalitions)
    row_sums = v[..., :1] - v[..., 2:2 + k] - v[..., 2 + k:] + v[..., 1:2]
    rows = row_sums / (n - 1)
    value = rows.mean(-1)
    stderr = None
    if sampled:
        sd = rows.std(-1, correction=1) if k > 1 else torch.full_like(value, float("nan"))
        stderr = sd * math.sqrt((1 - k / n) / k)
    return Estimate(_scalar(value), _scalar(stderr), 2 * k + 2, "average_interaction",
                    {"players": chosen.tolist(), "row_sums": row_sums})
