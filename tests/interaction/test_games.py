"""Games: analytic games and the batched perturbation game on a tiny conv net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferlab.interaction.games import (
    BatchedPerturbationGame,
    PerturbationGame,
    PolynomialGame,
    TableGame,
    default_grid,
)
from transferlab.interaction.players import grid_masks
from transferlab.interaction.scores import logodds, margin


class TinyNet(nn.Module):
    """A deterministic conv net taking [0, 1] images of any size (normalisation inside)."""

    def __init__(self, classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv((x - 0.5) / 0.25))).flatten(1))


class CountingNet(TinyNet):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def _images(b: int = 3, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    adv = (x + 0.1 * torch.randn(b, 3, size, size, generator=g).sign()).clamp(0, 1)
    y = torch.randint(0, 5, (b,), generator=g)
    return x, adv - x, y


def _random_coalitions(k: int, n: int, seed: int = 1):
    return torch.rand(k, n, generator=torch.Generator().manual_seed(seed)) < 0.5


def test_table_game_indexes_coalitions_by_bits():
    game = TableGame(torch.arange(8, dtype=torch.float64))
    c = torch.tensor([[False, False, False], [True, False, True], [True, True, True], [False, True, False]])
    assert game(c).tolist() == [0.0, 5.0, 7.0, 2.0]
    assert game.evaluations == 4


def test_polynomial_game_values():
    game = PolynomialGame(4, {(): 1.0, (0, 1): 2.0, (1, 2, 3): -3.0})
    c = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1]]).bool()
    assert game(c).tolist() == [1.0, 3.0, 0.0, -2.0]
    assert game.interaction(0, 1) == 2.0 and game.interaction(1, 2) == -1.5


def test_default_grid_rule():
    assert default_grid(224, 224) == 16 and default_grid(128, 300) == 16
    assert default_grid(32, 32) == 8 and default_grid(127, 224) == 8


def test_perturbation_game_endpoints_and_evaluations():
    model = TinyNet().eval()
    x, d, y = _images(1)
    game = PerturbationGame(model, x[0], d[0], int(y[0]), grid=4)
    assert game.n_players == 16
    v = game(torch.stack([torch.zeros(16, dtype=torch.bool), torch.ones(16, dtype=torch.bool)]))
    with torch.no_grad():
        clean = margin(model(x).double(), y)[0]
        full = margin(model(x + d).double(), y)[0]
    assert v.dtype == torch.float64 and v.shape == (2,)
    assert torch.allclose(v, torch.stack([clean, full]), atol=1e-6)
    game(_random_coalitions(5, 16))
    assert game.evaluations == 7


def test_perturbation_game_matches_manual_masking():
    """Each coalition's value equals a hand-built x + δ·mask forward (independent of the game's batching)."""
    model = TinyNet().eval()
    x, d, y = _images(1, size=8)
    masks = grid_masks(8, 8, 2)  # (4, 1, 8, 8)
    coalitions = _random_coalitions(6, 4)
    game = PerturbationGame(model, x[0], d[0], y[0], grid=2, chunk=4, score="logodds")
    got = game(coalitions)
    for k, c in enumerate(coalitions):
        m = (masks * c[:, None, None, None].float()).sum(0)
        with torch.no_grad():
            want = logodds(model(x + d * m).double(), y)[0]
        assert abs(float(got[k]) - float(want)) < 1e-5


def test_batched_game_equals_one_coalition_at_a_time():
    model = TinyNet().eval()
    x, d, y = _images(3, size=8)
    coalitions = _random_coalitions(10, 16)
    batched = BatchedPerturbationGame(model, x, d, y, grid=4, chunk=7)(coalitions)
    assert batched.shape == (3, 10)
    for b in range(3):
        single = PerturbationGame(model, x[b], d[b], y[b], grid=4)
        one_by_one = torch.stack([single(coalitions[k:k + 1])[0] for k in range(10)])
        assert torch.allclose(batched[b], one_by_one, atol=1e-5)


def test_values_do_not_depend_on_batch_mates():
    model = TinyNet().eval()
    x, d, y = _images(3, seed=0)
    x2, d2, y2 = _images(3, seed=5)
    x2[0], d2[0], y2[0] = x[0], d[0], y[0]
    coalitions = _random_coalitions(9, 16)
    a = BatchedPerturbationGame(model, x, d, y, grid=4, chunk=16)(coalitions)[0]
    b = BatchedPerturbationGame(model, x2, d2, y2, grid=4, chunk=5)(coalitions)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_forward_count_is_per_chunk_not_per_coalition():
    model = CountingNet().eval()
    x, d, y = _images(2)
    game = BatchedPerturbationGame(model, x, d, y, grid=4, chunk=20)
    game(_random_coalitions(25, 16))
    # 20 inputs per forward, 2 images → 10 coalitions per forward → 3 forwards for 25 coalitions
    assert model.calls == 3
    assert game.evaluations == 25 and game.forwards == 50


def test_user_masks_equal_grid_players():
    model = TinyNet().eval()
    x, d, y = _images(2)
    coalitions = _random_coalitions(6, 4)
    by_grid = BatchedPerturbationGame(model, x, d, y, grid=2)(coalitions)
    by_masks = BatchedPerturbationGame(model, x, d, y, masks=grid_masks(8, 8, 2)[:, 0])(coalitions)
    assert torch.allclose(by_grid, by_masks, atol=1e-6)


def test_bad_shapes_raise():
    model = TinyNet().eval()
    x, d, y = _images(1)
    game = PerturbationGame(model, x[0], d[0], y[0], grid=2)
    with pytest.raises(ValueError, match="coalitions"):
        game(torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks"):
        PerturbationGame(model, x[0], d[0], y[0], masks=torch.ones(4, 7, 7))
