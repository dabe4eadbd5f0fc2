"""Input-transformation baselines: SI (`si`), Admix (`admix`), SSA (`ssa`).

The shared battery for each (and some variants and compositions), then each defining step against a hand
computation on the tiny float64 model: SI's gradient is the mean of the m scaled gradients; Admix mixes
exactly pool images with weight η (and its result does not change with the batch-mates); SSA's DCT is
orthonormal and its transform and gradient match a direct computation from the same draws.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transferlab.attacks.admix import Admix
from transferlab.attacks.base import AttackContext
from transferlab.attacks.registry import build_attack
from transferlab.attacks.scale_invariance import ScaleInvariance
from transferlab.attacks.spectrum_simulation import (
    SpectrumSimulation,
    dct_2d,
    dct_matrix,
    idct_2d,
    spectrum_transform,
)
from transferlab.errors import ConfigError
from transferlab.rng import ImageStreams
from transferlab.testing import TinyResNet, check_attack, tiny_batch

EPS, ALPHA = 8 / 255, 2 / 255


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: one torch thread


def context(model, x, y, keys=None, seed=0, pool=None) -> AttackContext:
    keys = list(range(x.shape[0])) if keys is None else keys
    return AttackContext(model, x, y, EPS, ALPHA, "linf", 3, ImageStreams.for_keys(seed, keys), pool=pool)


def ce_grad(model, points, y, through=lambda p: p):
    """Per-row gradient of the cross-entropy of model(through(points)) with respect to points."""
    p = points.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(through(p)), y, reduction="none").sum(), p)
    return g


def count_calls(model) -> tuple[list[int], object]:
    """Rows of every model call, and the hook handle."""
    calls: list[int] = []
    handle = model.register_forward_hook(lambda _m, inputs, _out: calls.append(inputs[0].shape[0]))
    return calls, handle


# ---------------------------------------------------------------------------------------------- battery
BATTERY = [
    pytest.param("si", None, id="si"),
    pytest.param("admix", None, id="admix"),
    pytest.param("ssa", None, id="ssa"),
    pytest.param("si", {"si": {"copies": 3}}, id="si-torchattack-m3"),
    pytest.param("si", {"si": {"center": 0.0}}, id="si-ports-center"),
    pytest.param("admix", {"admix": {"center": 0.0}}, id="admix-ports-center"),
    pytest.param("ssa", {"ssa": {"through_transform": True}}, id="ssa-through-transform"),
    pytest.param("mi+si+admix", {"admix": {"scales": 1}}, id="mi+si+admix-bare"),
    pytest.param("mi+ssa", None, id="mi+ssa"),
    pytest.param("mi+di+ti+admix", None, id="mi+di+ti+admix"),
]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method,params", BATTERY)
def test_battery(method: str, params, norm: str) -> None:
    check_attack(method, norm, params)


def test_battery_mi_si_admix_defaults() -> None:
    check_attack("mi+si+admix")


# ---------------------------------------------------------------------------------------------- SI
@pytest.mark.parametrize("center", [0.0, 0.5])
def test_si_gradient_is_mean_of_scaled_gradients(center: float) -> None:
    model, (x, y) = TinyResNet(), tiny_batch(3)
    attack = build_attack("si", {"si": {"center": center}}, eps=EPS, alpha=ALPHA, steps=1)
    ctx = context(model, x, y)
    got = attack.loss_gradient(x, y, ctx)
    want = torch.stack([ce_grad(model, x, y, lambda p, s=0.5**i: center + (p - center) * s)
                        for i in range(5)]).mean(0)
    assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)
    assert ctx.forwards == 5 * x.shape[0]


def test_si_defaults_and_copies() -> None:
    assert ScaleInvariance().copies == 5 and ScaleInvariance().center == 0.5  # the official arithmetic
    si3 = ScaleInvariance(copies=3, center=0.0)
    model, (x, y) = TinyResNet(), tiny_batch(2)
    inputs, k = si3.expand(x, context(model, x, y))
    assert k == 3 == si3.batch_multiplier()
    assert torch.equal(inputs, torch.cat([x, x / 2, x / 4]))
    with pytest.raises(ConfigError):
        ScaleInvariance(copies=0)


# ---------------------------------------------------------------------------------------------- Admix
def test_admix_mixes_exactly_pool_images() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(2)
    pool, _ = tiny_batch(6, seed=9)
    pool = pool.view(2, 3, *x.shape[1:])
    assert Admix().center == 0.5  # the official [-1,1] arithmetic
    comp = Admix(center=0.0)
    assert (comp.eta, comp.mixes, comp.scales) == (0.2, 3, 5)
    assert comp.pool_size() == 3 and comp.batch_multiplier() == 15
    inputs, k = comp.expand(x, context(model, x, y, pool=pool))
    assert k == 15 and inputs.shape == (15 * 2, *x.shape[1:])
    blocks = inputs.view(5, 3, 2, *x.shape[1:])  # (scale i, mix j, image b)
    for i in range(5):
        for j in range(3):
            assert torch.equal(blocks[i, j], (x + 0.2 * pool[:, j]) * 0.5**i)
    # the official [-1,1] arithmetic: mix relative to 0.5, scale toward 0.5
    half, _ = Admix(center=0.5).expand(x, context(model, x, y, pool=pool))
    blocks = half.view(5, 3, 2, *x.shape[1:])
    for i in range(5):
        for j in range(3):
            want = 0.5 + (x + 0.2 * (pool[:, j] - 0.5) - 0.5) * 0.5**i
            assert torch.allclose(blocks[i, j], want, atol=1e-15)


def test_admix_tiles_pool_over_copies_of_the_batch() -> None:
    """Points already copied (VT's neighbours, an earlier copy-maker): row c·B + b mixes image b's pool."""
    model, (x, y) = TinyResNet(), tiny_batch(2)
    pool, _ = tiny_batch(4, seed=9)
    pool = pool.view(2, 2, *x.shape[1:])
    points = torch.cat([x, 1 - x])  # two copies of the batch, copy-major
    inputs, k = Admix(mixes=2, scales=1, center=0.0).expand(points, context(model, x, y, pool=pool))
    assert k == 2
    blocks = inputs.view(2, 2, 2, *x.shape[1:])  # (mix j, copy c, image b)
    for j in range(2):
        assert torch.equal(blocks[j, 0], x + 0.2 * pool[:, j])
        assert torch.equal(blocks[j, 1], 1 - x + 0.2 * pool[:, j])


def test_admix_gradient_by_hand() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(2)
    pool, _ = tiny_batch(6, seed=9)
    pool = pool.view(2, 3, *x.shape[1:])
    attack = build_attack("admix", {"admix": {"center": 0.0}}, eps=EPS, alpha=ALPHA, steps=1)
    ctx = context(model, x, y, pool=pool)
    got = attack.loss_gradient(x, y, ctx)
    want = torch.stack([ce_grad(model, x, y, lambda p, i=i, j=j: (p + 0.2 * pool[:, j]) * 0.5**i)
                        for i in range(5) for j in range(3)]).mean(0)
    assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)
    assert ctx.forwards == 15 * 2


def test_admix_result_does_not_depend_on_batch_mates() -> None:
    model = TinyResNet()
    x, y = tiny_batch(4)
    pool, _ = tiny_batch(8, seed=9)

    def run(index, keys):
        attack = build_attack("mi+admix", eps=EPS, alpha=ALPHA, steps=3, seed=3)
        adv = attack.run(model, x[index], y[index], keys=keys, pool=pool)
        return adv, attack.last_context.pool

    adv_a, pool_a = run([0, 1], ["a", "b"])
    adv_b, pool_b = run([2, 0, 3], ["c", "a", "d"])
    adv_c, pool_c = run([0], ["a"])
    assert (adv_a[0] - adv_b[1]).abs().max() <= 1e-10
    assert (adv_a[0] - adv_c[0]).abs().max() <= 1e-10
    # image "a" mixes the same pool images whatever its batch, and they are images of the pool
    assert torch.equal(pool_a[0], pool_b[1]) and torch.equal(pool_a[0], pool_c[0])
    for img in pool_a[0]:
        assert any(torch.equal(img, p) for p in pool)
    # its batch-mates never enter: changing them changes nothing, even their pixels
    swapped = x.clone()
    swapped[1] = 1 - swapped[1]
    attack = build_attack("mi+admix", eps=EPS, alpha=ALPHA, steps=3, seed=3)
    adv_d = attack.run(model, swapped[[0, 1]], y[[0, 1]], keys=["a", "b"], pool=pool)
    assert (adv_a[0] - adv_d[0]).abs().max() <= 1e-10


def test_admix_needs_a_pool() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(2)
    attack = build_attack("admix", {"admix": {"center": 0.0}}, eps=EPS, alpha=ALPHA, steps=1)
    with pytest.raises(ValueError, match="pool"):
        attack.run(model, x, y)


# ---------------------------------------------------------------------------------------------- SSA
@pytest.mark.parametrize("shape", [(3, 3, 16, 16), (2, 3, 16, 12), (1, 1, 7, 5)])
def test_dct_round_trip_and_orthonormal(shape) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    coeffs = dct_2d(x)
    assert (idct_2d(coeffs) - x).abs().max() < 1e-6
    assert (dct_2d(idct_2d(x)) - x).abs().max() < 1e-6
    for n in shape[-2:]:
        d = dct_matrix(n)
        assert (d @ d.T - torch.eye(n, dtype=torch.float64)).abs().max() < 1e-12
    # orthonormal: energy preserved per channel; a constant image has only the DC term c·√(HW)
    assert torch.allclose(coeffs.pow(2).sum((-2, -1)), x.pow(2).sum((-2, -1)), atol=1e-12)
    const = dct_2d(torch.full(shape, 0.3, dtype=torch.float64))
    dc = 0.3 * (shape[-2] * shape[-1]) ** 0.5
    assert torch.allclose(const[..., 0, 0], torch.full(shape[:-2], dc, dtype=torch.float64), atol=1e-12)
    assert const.flatten(-2)[..., 1:].abs().max() < 1e-12
    # differentiable: the float32 path keeps its dtype, and gradients flow
    x32 = x.float().requires_grad_(True)
    idct_2d(dct_2d(x32) * 2).sum().backward()
    assert x32.grad is not None and x32.grad.dtype == torch.float32


def test_dct_matches_definition() -> None:
    """D[k, i] = a_k cos(π(2i+1)k / 2n) summed directly, for one row and one column."""
    n = 6
    x = torch.arange(n * n, dtype=torch.float64).view(n, n).sin()
    out = dct_2d(x)
    a = [(1 / n) ** 0.5] + [(2 / n) ** 0.5] * (n - 1)
    for k, m in [(0, 0), (1, 2), (5, 3)]:
        s = sum(x[i, j] * torch.cos(torch.tensor(torch.pi * (2 * i + 1) * k / (2 * n), dtype=torch.float64))
                * torch.cos(torch.tensor(torch.pi * (2 * j + 1) * m / (2 * n), dtype=torch.float64))
                for i in range(n) for j in range(n))
        assert abs(float(out[k, m]) - a[k] * a[m] * float(s)) < 1e-12


def _ssa_expected(model, x, y, comp: SpectrumSimulation, seed: int, through: bool) -> torch.Tensor:
    """The official step by hand from the same draws: mean over copies of the gradient at T(x)
    (through=False), or of IDCT(DCT(that gradient) ⊙ M) (through=True)."""
    ctx = context(model, x, y, seed=seed)
    rows = comp.copies * x.shape[0]
    noise, mask = comp.draws(rows, tuple(x.shape[1:]), ctx, x.dtype)
    spectra = idct_2d(dct_2d(x.repeat(comp.copies, 1, 1, 1) + noise) * mask)
    grads = ce_grad(model, spectra, y.repeat(comp.copies))
    if through:
        grads = idct_2d(dct_2d(grads) * mask)
    return grads.view(comp.copies, *x.shape).mean(0)


@pytest.mark.parametrize("through", [False, True])
def test_ssa_gradient_by_hand(through: bool) -> None:
    model, (x, y) = TinyResNet(), tiny_batch(3)
    attack = build_attack("ssa", {"ssa": {"copies": 6, "through_transform": through}},
                          eps=EPS, alpha=ALPHA, steps=1)
    comp = attack.components[0]
    ctx = context(model, x, y, seed=4)
    got = attack.loss_gradient(x, y, ctx)
    want = _ssa_expected(model, x, y, comp, seed=4, through=through)
    assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)
    assert ctx.forwards == 6 * 3
    other = _ssa_expected(model, x, y, comp, seed=4, through=not through)
    assert not torch.allclose(got, other, atol=1e-6)  # the two variants really differ


def test_ssa_transform_values_and_defaults() -> None:
    comp = SpectrumSimulation()
    assert (comp.copies, comp.rho, comp.sigma, comp.through_transform) == (20, 0.5, 16.0, False)
    assert "sigma" in SpectrumSimulation.pixel_params
    model, (x, y) = TinyResNet(), tiny_batch(2)
    inputs, k = comp.expand(x, context(model, x, y, seed=1))
    noise, mask = comp.draws(40, tuple(x.shape[1:]), context(model, x, y, seed=1), x.dtype)
    assert k == 20 and torch.allclose(inputs, spectrum_transform(x.repeat(20, 1, 1, 1), noise, mask),
                                      atol=1e-15)
    assert mask.min() >= 0.5 and mask.max() < 1.5
    assert abs(float(noise.std()) - 16 / 255) < 0.1 * 16 / 255
    # rho = 0, sigma = 0: the transform is the identity
    ident, _ = SpectrumSimulation(copies=2, rho=0.0, sigma=0.0).expand(x, context(model, x, y))
    assert (ident - x.repeat(2, 1, 1, 1)).abs().max() < 1e-12


def test_ssa_sigma_relative_to_budget() -> None:
    attack = build_attack("ssa", {"ssa": {"sigma": "1eps"}}, eps=8 / 255, alpha=1 / 255, steps=1)
    assert attack.components[0].sigma == pytest.approx(8.0)
    with pytest.raises(ConfigError):
        build_attack("ssa", {"ssa": {"rho": "1eps"}}, eps=8 / 255, alpha=1 / 255, steps=1)


# ---------------------------------------------------------------------------------------------- all three
@pytest.mark.parametrize("method,copies", [("si", 5), ("admix", 15), ("ssa", 20), ("mi+si+admix", 75),
                                           ("mi+ssa", 20)])
def test_one_batched_model_call_per_step_and_own_streams(method: str, copies: int) -> None:
    model, (x, y) = TinyResNet(), tiny_batch(3)
    pool, _ = tiny_batch(5, seed=9)
    attack = build_attack(method, eps=EPS, alpha=ALPHA, steps=2, seed=1, max_forward=10_000)
    assert attack.inputs_per_image() == copies
    calls, handle = count_calls(model)
    state = torch.get_rng_state()
    try:
        torch.manual_seed(123)
        first = attack.run(model, x, y, pool=pool)
        torch.manual_seed(456)
        second = attack.run(model, x, y, pool=pool)
    finally:
        handle.remove()
        torch.set_rng_state(state)
    assert calls == [copies * 3] * 4  # one batched call per step, two steps, two runs
    assert torch.equal(first, second)  # the global generator plays no part


def test_compositions_build_and_run() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(2)
    pool, _ = tiny_batch(5, seed=9)
    for method in ("mi+si+admix", "mi+ssa", "ni+admix+di+ti"):
        attack = build_attack(method, eps=EPS, alpha=ALPHA, steps=2)
        adv = attack.run(model, x, y, pool=pool)
        assert adv.shape == x.shape and (adv - x).abs().max() <= EPS + 1e-12
    order = [c.name for c in build_attack("mi+si+admix", eps=EPS, alpha=ALPHA, steps=1).components]
    assert order.index("admix") < order.index("si")  # the mix is scaled, as in the official code
