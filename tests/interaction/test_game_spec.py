"""One game for IR and measurement: orientation of every score, the two 'other' class policies, and the
exact/shapiq oracle run on the game IR penalises (IR's own term compared with the measured game)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.attacks.base import AttackContext
from transferlab.attacks.interaction_reduction import InteractionReduction
from transferlab.errors import ConfigError
from transferlab.interaction.estimators import average_interaction, exact_interactions
from transferlab.interaction.game_spec import OTHER_POLICIES, GameSpec
from transferlab.interaction.games import BatchedPerturbationGame, PerturbationGame
from transferlab.interaction.scores import SCORES
from transferlab.rng import ImageStreams

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: one torch thread


class Net(nn.Module):
    """A float64 conv net with 6 classes whose runner-up class changes across masked inputs."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1).double()
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(72, 6).double()
        self.requires_grad_(False)

    def forward(self, x):
        return self.fc(self.pool(torch.tanh(self.conv((x - 0.5) * 4))).flatten(1)) * 3


def _batch(b: int = 3, size: int = 9, scale: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g, dtype=torch.float64)
    point = (x + scale * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    y = torch.randint(0, 6, (b,), generator=g)
    return x, point, y


def _ctx(model, x, y):
    streams = ImageStreams.for_keys(0, range(x.shape[0]))
    return AttackContext(model, x, y, 8 / 255, 2 / 255, "linf", 3, streams)


def _mean_offdiag(matrix: torch.Tensor) -> torch.Tensor:
    """E_{i≠j} I_ij per image of a (B, n, n) interaction matrix."""
    n = matrix.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool)
    return matrix[..., off].mean(-1)


@pytest.mark.parametrize("score", SCORES)
def test_every_score_is_larger_when_more_adversarial(score):
    spec = GameSpec.resolve(score)
    logits = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])  # row 0 correct and confident, row 1 misclassified
    v = spec.value(logits, y)
    assert v[0] < 0 < v[1]
    lower_true = logits.clone()
    lower_true[0, 0] = 2.0  # less confident in the true class: more adversarial
    assert spec.value(lower_true, y)[0] > v[0]


def test_policies_are_validated_and_resolved_per_role():
    assert GameSpec.resolve("margin").other == "per-coalition"  # measurement: the paper's equation
    assert GameSpec.resolve("margin", role="ir").other == "fixed"  # IR: the reference code's
    assert GameSpec.resolve("logodds", role="ir").other is None
    with pytest.raises(ValueError, match="applies to the margin score only"):
        GameSpec("logodds", "fixed")
    with pytest.raises(ValueError, match="policy"):
        GameSpec("margin", "strongest")
    with pytest.raises(ConfigError, match="margin score only"):
        InteractionReduction(score="logodds", other="fixed")
    assert InteractionReduction().other == "fixed" and InteractionReduction(score="logodds").other is None


def test_per_coalition_dominates_fixed_and_they_agree_on_the_full_perturbation():
    model = Net()
    x, point, y = _batch()
    coalitions = torch.tensor(list(itertools.product([0, 1], repeat=9)), dtype=torch.bool)
    fixed = BatchedPerturbationGame(model, x, point - x, y, grid=3, other="fixed")(coalitions)
    repicked = BatchedPerturbationGame(model, x, point - x, y, grid=3, other="per-coalition")(coalitions)
    assert (repicked >= fixed - 1e-12).all()  # max over c ≠ y ≥ any one class
    torch.testing.assert_close(repicked[:, -1], fixed[:, -1])  # the full coalition picks y* itself
    assert (repicked - fixed).abs().max() > 1e-3, "the test net must change its runner-up across coalitions"


@pytest.mark.parametrize("other", OTHER_POLICIES)
def test_ir_penalises_the_measured_game_exactly(other):
    """IR's pairwise term with all players = E_{i≠j} I_ij of the measurement's game, by 2^9 enumeration."""
    model = Net()
    x, point, y = _batch()
    ir = InteractionReduction(variant="pairwise", grid=3, players=None, other=other)
    ctx = _ctx(model, x, y)
    ir.setup(ctx)
    term = ir.interaction(point, ctx)
    game = BatchedPerturbationGame(model, x, point - x, y, grid=3, other=other)
    exact = exact_interactions(game).value  # (B, 9, 9)
    torch.testing.assert_close(term, _mean_offdiag(exact), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(average_interaction(game).value, term, atol=1e-10, rtol=1e-9)


def test_ir_official_term_is_the_game_on_its_own_masks():
    """Each official term s(x+δ) − s(x+δ_{N∖M}) − s(x+δ_M) + s(x) is the fixed game's Δ over (M, N∖M)."""
    model = Net()
    x, point, y = _batch(b=2)
    ir = InteractionReduction(variant="official", grid=3, cells=3, masks=4)
    ctx = _ctx(model, x, y)
    ir.setup(ctx)
    term = ir.interaction(point, ctx)
    idx = ImageStreams.for_keys(0, range(2)).randint(9, 1, 4, 3)[:, 0]  # the draws IR made: (B, K, m)
    for b in range(2):
        masks = torch.zeros(4, 9, dtype=torch.bool)
        masks.scatter_(1, idx[b], True)
        game = PerturbationGame(model, x[b], point[b] - x[b], y[b], grid=3, other="fixed")
        full, empty = torch.ones(1, 9, dtype=torch.bool), torch.zeros(1, 9, dtype=torch.bool)
        v = game(torch.cat([full, empty, masks, ~masks]))
        want = (v[0] + v[1] - v[2:6] - v[6:10]).mean()
        torch.testing.assert_close(term[b], want, atol=1e-10, rtol=1e-9)


def test_shapiq_agrees_on_the_fixed_game_ir_penalises():
    shapiq = pytest.importorskip("shapiq")
    model = Net()
    x, point, y = _batch(b=1)
    game = PerturbationGame(model, x[0], point[0] - x[0], y[0], grid=3, other="fixed")

    def fn(coalitions):
        return game(torch.as_tensor(np.asarray(coalitions, dtype=bool))).numpy()

    sii = shapiq.ExactComputer(fn, n_players=9)("SII", order=2)
    ours = exact_interactions(game).value
    for i, j in itertools.combinations(range(9), 2):
        assert abs(float(ours[i, j]) - float(sii[(i, j)])) < 1e-9
    ir = InteractionReduction(variant="pairwise", grid=3, players=None)
    ctx = _ctx(model, x, y)
    ir.setup(ctx)
    mean_sii = np.mean([float(sii[(i, j)]) for i, j in itertools.combinations(range(9), 2)])
    assert abs(float(ir.interaction(point, ctx)[0]) - mean_sii) < 1e-9
