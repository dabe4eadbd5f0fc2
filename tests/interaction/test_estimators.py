"""Estimators against brute force, closed forms, shapiq and their own statistical guarantees."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.interaction.estimators import (
    average_interaction,
    exact_interactions,
    exact_order_interactions,
    exact_shapley,
    order_interactions,
    random_pairs,
    sampled_interaction,
)
from transferlab.interaction.games import BatchedPerturbationGame, PolynomialGame, TableGame


def _value(game, subset) -> float:
    c = torch.zeros(1, game.n_players, dtype=torch.bool)
    c[0, list(subset)] = True
    return float(game(c)[0])


def brute_interaction(game, i: int, j: int) -> float:
    """The definition, term by term."""
    n = game.n_players
    rest = [k for k in range(n) if k not in (i, j)]
    total = 0.0
    for r in range(n - 1):
        w = math.factorial(r) * math.factorial(n - r - 2) / math.factorial(n - 1)
        for s in itertools.combinations(rest, r):
            total += w * (_value(game, s + (i, j)) - _value(game, s + (i,)) - _value(game, s + (j,))
                          + _value(game, s))
    return total


def brute_shapley(game) -> list[float]:
    """Average marginal contribution over all orderings."""
    n = game.n_players
    phi = [0.0] * n
    perms = list(itertools.permutations(range(n)))
    for p in perms:
        for k, i in enumerate(p):
            phi[i] += _value(game, p[:k + 1]) - _value(game, p[:k])
    return [f / len(perms) for f in phi]


def _v(game, subset):
    return _value(game, subset)


def test_exact_interactions_match_brute_force_on_random_table():
    game = TableGame.random(5, seed=3)
    res = exact_interactions(game)
    assert res.stderr is None and res.evaluations == 32
    for i, j in itertools.combinations(range(5), 2):
        assert abs(float(res.value[i, j]) - brute_interaction(game, i, j)) < 1e-12
        assert float(res.value[i, j]) == float(res.value[j, i])
    assert torch.all(res.value.diagonal() == 0)


def test_exact_shapley_matches_permutation_definition():
    game = TableGame.random(5, seed=4)
    phi = exact_shapley(game).value
    assert np.allclose(phi.numpy(), brute_shapley(game), atol=1e-12)


def test_shapley_efficiency_and_symmetry():
    # symmetric in players 0 and 1 by construction: v(S) depends on S only through |S ∩ {0,1}|
    base = TableGame.random(6, seed=5).values
    idx = torch.arange(64)
    swapped = (idx & ~3) | ((idx & 1) << 1) | ((idx & 2) >> 1)
    game = TableGame(base + base[swapped])
    phi = exact_shapley(game).value
    assert abs(float(phi.sum()) - float(game.values[-1] - game.values[0])) < 1e-12
    assert abs(float(phi[0] - phi[1])) < 1e-12
    assert abs(float(phi[2] - phi[3])) > 1e-6  # not symmetric: the check can tell


def test_polynomial_pair_and_triple_terms():
    a, b = 1.7, -0.9
    game = PolynomialGame(6, {(1, 4): a, (0, 2, 5): b, (3,): 2.0})
    I = exact_interactions(game).value
    assert abs(float(I[1, 4]) - a) < 1e-12
    assert abs(float(I[0, 2]) - b / 2) < 1e-12 and abs(float(I[2, 5]) - b / 2) < 1e-12
    assert abs(float(I[3, 1])) < 1e-12


def test_random_polynomial_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    terms = {tuple(sorted(torch.randperm(7, generator=g)[:k].tolist())): float(torch.randn(1, generator=g))
             for k in (1, 2, 2, 3, 4, 7)}
    game = PolynomialGame(7, terms)
    I = exact_interactions(game).value
    phi = exact_shapley(game).value
    for i, j in itertools.combinations(range(7), 2):
        assert abs(float(I[i, j]) - game.interaction(i, j)) < 1e-12
    assert np.allclose(phi.numpy(), [game.shapley_value(i) for i in range(7)], atol=1e-12)


def test_row_sum_identity_and_average_interaction():
    game = TableGame.random(7, seed=6)
    I = exact_interactions(game).value
    n = 7
    for i in range(n):
        others = [k for k in range(n) if k != i]
        rhs = _v(game, range(n)) - _v(game, others) - _v(game, [i]) + _v(game, [])
        assert abs(float(I[i].sum()) - rhs) < 1e-12
    avg = average_interaction(game)
    assert avg.stderr is None and avg.evaluations == 2 * n + 2
    assert abs(avg.value - float(I.sum() / (n * (n - 1)))) < 1e-12


def test_average_interaction_costs_2n_plus_2_on_large_game():
    terms = {(0, 1): 1.0, (2, 3, 4): 3.0, tuple(range(40)): 5.0, (7,): -1.0}
    game = PolynomialGame(40, terms)
    res = average_interaction(game)
    want = np.mean([game.interaction(i, j) for i in range(40) for j in range(40) if i != j])
    assert abs(res.value - want) < 1e-12
    assert game.evaluations == 82


def test_average_interaction_sampled_rows_unbiased():
    game = TableGame.random(9, seed=7)
    exact = average_interaction(game).value
    full = average_interaction(game, players=9, seed=1)
    assert abs(full.value - exact) < 1e-12 and full.stderr == pytest.approx(0.0)
    ests = [average_interaction(game, players=3, seed=s) for s in range(300)]
    assert ests[0].evaluations == 8 and ests[0].stderr > 0
    vals = np.array([e.value for e in ests])
    assert abs(vals.mean() - exact) < 3 * vals.std(ddof=1) / math.sqrt(len(vals))
    # the reported stderr describes the spread of the estimates
    assert 0.6 < np.mean([e.stderr for e in ests]) / vals.std(ddof=1) < 1.4


@pytest.mark.parametrize("game", [TableGame.random(7, seed=8),
                                  PolynomialGame(8, {tuple(range(8)): 7.0, (0, 1): 1.0, (1, 2, 3): 2.0})],
                         ids=["table", "full-order-polynomial"])
def test_sampled_interaction_unbiased(game):
    """Mean over seeds within 3 standard errors of the exact index (the full-order polynomial separates the
    Shapley weighting, I = a/(n−1), from a uniform-subset (Banzhaf) weighting, a/2^(n−2))."""
    pairs = [(0, 1), (2, 5)]
    I = exact_interactions(game).value
    runs = [sampled_interaction(game, pairs, samples=40, seed=s) for s in range(100)]
    vals = torch.stack([r.value for r in runs])  # (seeds, P)
    mean, se = vals.mean(0), vals.std(0) / math.sqrt(len(runs))
    for p, (i, j) in enumerate(pairs):
        assert abs(float(mean[p] - I[i, j])) < 3 * float(se[p])
    # the stderr each run reports matches the spread across seeds
    ratio = torch.stack([r.stderr for r in runs]).mean(0) / vals.std(0)
    assert torch.all((ratio > 0.7) & (ratio < 1.3))


def test_sampled_interaction_cost_and_single_call():
    game = TableGame.random(6, seed=9)
    calls = []

    class Spy:
        n_players = 6

        def __call__(self, c):
            calls.append(len(c))
            return game(c)

    res = sampled_interaction(Spy(), [(0, 1), (1, 2), (3, 4)], samples=25, seed=0)
    assert res.evaluations == 4 * 3 * 25 and calls == [300]
    assert res.value.shape == (3,) and res.stderr.shape == (3,)


def test_order_interactions_average_to_the_shapley_interaction():
    game = TableGame.random(6, seed=10)
    orders = exact_order_interactions(game).value  # (n−1, n, n)
    I = exact_interactions(game).value
    assert orders.shape == (5, 6, 6)
    assert torch.allclose(orders.mean(0), I, atol=1e-12)
    # and the mean over m differs from a size-weighted (Banzhaf-like) mean on this game
    sizes = torch.tensor([math.comb(4, m) for m in range(5)], dtype=torch.float64)
    banzhaf = (orders * sizes[:, None, None]).sum(0) / sizes.sum()
    assert not torch.allclose(banzhaf, I, atol=1e-3)


def test_exact_orders_match_polynomial_closed_form():
    game = PolynomialGame(7, {(0, 1): 1.0, (0, 1, 2): -2.0, (0, 1, 3, 4): 0.5, (2, 5): 3.0})
    orders = exact_order_interactions(game).value
    for m in range(6):
        for i, j in [(0, 1), (2, 5), (0, 2)]:
            assert abs(float(orders[m, i, j]) - game.order_interaction(i, j, m)) < 1e-12


def test_sampled_order_interactions_unbiased():
    game = TableGame.random(7, seed=11)
    exact = exact_order_interactions(game).value
    pairs, orders = [(0, 3), (4, 6)], [0, 1, 2, 4]
    res = order_interactions(game, pairs, orders=orders, samples=400, seed=3)
    assert res.value.shape == (2, 4) and res.evaluations == 4 * 2 * 4 * 400
    for p, (i, j) in enumerate(pairs):
        for q, m in enumerate(orders):
            se = float(res.stderr[p, q])
            assert abs(float(res.value[p, q] - exact[m, i, j])) <= 3 * se + 1e-12
    # m = 0 has a single subset (∅): the sample is exact
    assert float(res.stderr[0, 0]) == 0.0


def test_estimators_handle_batched_games():
    batch = TableGame.random(5, seed=12, batch=3)
    I = exact_interactions(batch).value
    assert I.shape == (3, 5, 5)
    for b in range(3):
        assert torch.allclose(I[b], exact_interactions(TableGame(batch.values[b])).value)
    avg = average_interaction(batch)
    assert avg.value.shape == (3,)
    assert torch.allclose(avg.value, I.sum((-1, -2)) / 20)
    assert sampled_interaction(batch, [(0, 1)], samples=5).value.shape == (3, 1)


def test_average_interaction_on_a_perturbation_game():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 4)).eval()
    x = torch.rand(2, 3, 6, 6)
    d = (torch.rand(2, 3, 6, 6) - 0.5) * 0.3
    game = BatchedPerturbationGame(model, x, d, torch.tensor([1, 3]), grid=3)
    I = exact_interactions(game).value  # (2, 9, 9)
    avg = average_interaction(game).value
    assert torch.allclose(avg, I.sum((-1, -2)) / 72, atol=1e-9)


def test_exact_refuses_large_games():
    with pytest.raises(ValueError, match="max_players"):
        exact_interactions(PolynomialGame(17, {(0, 1): 1.0}))
    assert exact_shapley(PolynomialGame(4, {(0, 1): 1.0}), max_players=4).value.shape == (4,)


def test_random_pairs_are_distinct_and_valid():
    pairs = random_pairs(10, 45, seed=0)
    assert len(set(pairs)) == 45 and all(0 <= i < j < 10 for i, j in pairs)
    with pytest.raises(ValueError):
        random_pairs(4, 7)
    with pytest.raises(ValueError):
        sampled_interaction(TableGame.random(4), [(1, 1)])


def test_shapiq_oracle():
    shapiq = pytest.importorskip("shapiq")
    game = TableGame.random(6, seed=13)

    def fn(coalitions):
        return game(torch.as_tensor(np.asarray(coalitions, dtype=bool))).numpy()

    computer = shapiq.ExactComputer(fn, n_players=6)
    sii = computer("SII", order=2)
    sv = computer("SV", order=1)
    I = exact_interactions(game).value
    phi = exact_shapley(game).value
    for i, j in itertools.combinations(range(6), 2):
        assert abs(float(I[i, j]) - float(sii[(i, j)])) < 1e-10
    for i in range(6):
        assert abs(float(phi[i]) - float(sv[(i,)])) < 1e-10
