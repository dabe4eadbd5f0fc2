"""PGN, GRA and RAP: the shared battery, the defining steps against hand computations on the tiny model,
forward accounting, and compositions with mi/di/ti."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transferlab.attacks.base import AttackContext
from transferlab.attacks.gradient_norm_penalty import GradientNormPenalty
from transferlab.attacks.gradient_relevance import GradientRelevance, relevance
from transferlab.attacks.registry import build_attack
from transferlab.attacks.reverse_perturbation import ReversePerturbation
from transferlab.errors import ConfigError
from transferlab.rng import ImageStreams
from transferlab.testing import TinyResNet, check_attack, tiny_batch

EPS, ALPHA = 8 / 255, 2 / 255
SMALL = {"pgn": {"neighbours": 3}, "gra": {"neighbours": 3}, "rap": {"late_start": 1, "inner_steps": 2}}


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: one torch thread


def ce_grad(model, points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row gradient of the cross-entropy (rows independent)."""
    points = points.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(points), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, points)
    return g


def mean_abs(t: torch.Tensor) -> torch.Tensor:
    return t.abs().flatten(1).mean(1).view(-1, 1, 1, 1)


def project(x: torch.Tensor, delta: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    return (x + delta.clamp(-eps, eps)).clamp(0, 1) - x


def context(model, x, y, keys, seed=0) -> AttackContext:
    return AttackContext(model, x, y, EPS, ALPHA, "linf", 3, ImageStreams.for_keys(seed, keys))


def image_major(u: torch.Tensor) -> torch.Tensor:
    """(B, N, ...) draws as copy-major rows (N·B, ...), row k·B + b of image b."""
    return u.transpose(0, 1).flatten(0, 1)


# ------------------------------------------------------------------------------------------ battery
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method", ["pgn", "gra", "rap", "mi+pgn", "mi+gra", "mi+rap"])
def test_battery(method: str, norm: str) -> None:
    params = {k: v for k, v in SMALL.items() if k in method.split("+")}
    check_attack(method, norm, params)


def test_battery_variants() -> None:
    check_attack("pgn", params={"pgn": {"neighbours": 2, "delta": 0.0}})
    check_attack("gra", params={"gra": {"neighbours": 2, "indicator": "value"}})
    check_attack("rap", params={"rap": {"late_start": 0, "inner_steps": 2, "eps_n": "1eps",
                                        "inner_loss": "logit", "alpha_n": 2}})


@pytest.mark.parametrize("name", ["pgn", "gra", "rap"])
def test_battery_at_defaults(name: str) -> None:
    check_attack(name)


# ------------------------------------------------------------------------------------------ forwards
@pytest.mark.parametrize(
    "method,params,per_step",
    [
        ("pgn", {"pgn": {"neighbours": 3}}, 1 + 2 * 3),
        ("pgn", {"pgn": {"neighbours": 3, "delta": 0.0}}, 1 + 3),
        ("gra", {"gra": {"neighbours": 3}}, 1 + 3),
        ("rap", {"rap": {"late_start": 0, "inner_steps": 2}}, 1 + 2),
        ("mi+di+ti+pgn", {"pgn": {"neighbours": 2}}, 1 + 2 * 2),
    ],
)
def test_declared_forwards_equal_sent(method, params, per_step) -> None:
    model, (x, y) = TinyResNet(), tiny_batch(3)
    attack = build_attack(method, params, eps=EPS, alpha=ALPHA, steps=3)
    attack.run(model, x, y)
    assert attack.passes_per_step() == per_step
    assert attack.forwards_total == attack.declared_forwards(3) == 3 * 3 * per_step


def test_rap_late_start_declares_exactly_what_it_sends() -> None:
    """Before the late start no inner inputs are sent, and the declaration (`extra_forwards_total`) says
    so: the passes column is exact, not an upper bound."""
    model, (x, y) = TinyResNet(), tiny_batch(2)
    steps, late, k = 4, 1, 3
    attack = build_attack("rap", {"rap": {"late_start": late, "inner_steps": k}}, eps=EPS, alpha=ALPHA,
                          steps=steps)
    attack.run(model, x, y)
    assert attack.forwards_by == {"data": 2 * steps, "rap": 2 * (steps - late) * k}
    assert attack.declared_forwards(2) == 2 * (steps + (steps - late) * k) == attack.forwards_total
    assert attack.passes_total() == steps + (steps - late) * k


# ------------------------------------------------------------------------------------------ PGN
@pytest.mark.parametrize("delta", [0.0, 0.5, 1.0])
def test_pgn_gradient_equals_hand_computation(delta: float) -> None:
    model, (x, y) = TinyResNet(), tiny_batch(3)
    keys, n, zeta = ["a", "b", "c"], 4, 3.0
    attack = build_attack("pgn", {"pgn": {"neighbours": n, "zeta": zeta, "delta": delta}}, eps=EPS,
                          alpha=ALPHA, steps=1)
    point = (x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype))
    point = point.clamp(0, 1)
    ctx = context(model, x, y, keys)
    ctx.x_adv = point
    got = attack.gradient(point, ctx)

    draws = ImageStreams.for_keys(0, keys).rand(n, *x.shape[1:], dtype=x.dtype)  # (B, N, ...)
    u = image_major((draws * 2 - 1) * zeta * EPS)
    near = point.repeat(n, 1, 1, 1) + u
    g1 = ce_grad(model, near, y.repeat(n))
    g2 = ce_grad(model, near - ALPHA * g1 / mean_abs(g1), y.repeat(n))
    want = ((1 - delta) * g1 + delta * g2).view(n, *x.shape).mean(0)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-9)
    if delta == 0:  # the mean neighbour gradient
        torch.testing.assert_close(got, g1.view(n, *x.shape).mean(0), atol=1e-12, rtol=1e-9)
        assert u.abs().max() <= zeta * EPS and u.abs().max() > 0.9 * zeta * EPS


def test_mi_pgn_attack_equals_hand_loop() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(2)
    keys, seed, n, zeta, d = ["p", "q"], 4, 3, 3.0, 0.5
    params = {"pgn": {"neighbours": n, "zeta": zeta, "delta": d}}
    adv = build_attack("mi+pgn", params, eps=EPS, alpha=ALPHA, steps=3, seed=seed).run(model, x, y, keys=keys)
    streams = ImageStreams.for_keys(seed, keys)
    delta, g = torch.zeros_like(x), torch.zeros_like(x)
    for _ in range(3):
        u = (streams.rand(n, *x.shape[1:], dtype=x.dtype) * 2 - 1) * zeta * EPS  # (B, N, ...)
        near = ((x + delta)[:, None] + u).flatten(0, 1)  # image-major here
        yy = y.repeat_interleave(n)
        g1 = ce_grad(model, near, yy)
        g2 = ce_grad(model, near - ALPHA * g1 / mean_abs(g1), yy)
        avg = ((1 - d) * g1 + d * g2).view(2, n, *x.shape[1:]).mean(1)
        g = g + avg / mean_abs(avg)
        delta = project(x, delta + ALPHA * g.sign())
    torch.testing.assert_close(adv, x + delta, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------ GRA
def test_relevance_is_the_cosine_similarity() -> None:
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 3, 5, 5, generator=gen), torch.randn(4, 3, 5, 5, generator=gen)
    b[1] = 2.5 * a[1]  # parallel: 1
    want = F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
    torch.testing.assert_close(relevance(a, b).flatten(), want)
    assert relevance(a, b)[1].item() == pytest.approx(1.0)
    assert relevance(torch.zeros_like(a), b).abs().max() == 0  # undefined: the average gradient alone


def test_gra_refine_mixes_by_relevance() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(3)
    keys, n, beta = ["a", "b", "c"], 4, 3.5
    attack = build_attack("gra", {"gra": {"neighbours": n, "beta": beta}}, eps=EPS, alpha=ALPHA, steps=1)
    gra = attack.components[0]
    assert isinstance(gra, GradientRelevance)
    ctx = context(model, x, y, keys)
    gra.setup(ctx)
    grad = ce_grad(model, x, y)
    got = gra.refine(grad, x, attack, ctx)

    draws = ImageStreams.for_keys(0, keys).rand(n, *x.shape[1:], dtype=x.dtype)  # (B, N, ...)
    u = image_major((draws * 2 - 1) * beta * EPS)
    avg = ce_grad(model, x.repeat(n, 1, 1, 1) + u, y.repeat(n)).view(n, *x.shape).mean(0)
    s = F.cosine_similarity(grad.flatten(1), avg.flatten(1), dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(got, s * grad + (1 - s) * avg, atol=1e-12, rtol=1e-9)
    assert ((s > -1) & (s < 1)).all()  # a genuine mix on this model


def test_gra_decay_indicator() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(1)
    eta = 0.9
    gra = GradientRelevance(neighbours=1, eta=eta)
    ctx = context(model, x, y, ["a"])
    gra.setup(ctx)
    g0 = torch.ones_like(x)
    g1 = g0.clone()
    g1[0, 0, 0, :4] = -1  # four sign flips
    m0 = gra.decay(g0, ctx)
    assert torch.equal(m0, torch.full_like(x, 1 / eta) * eta)  # first step: sign 0 differs, M = 1
    m1 = gra.decay(g1, ctx)
    flipped = g1 != g0
    assert torch.equal(m1[flipped], m0[flipped] * eta) and torch.equal(m1[~flipped], m0[~flipped])
    delta = gra.update(torch.zeros_like(x), g1, ctx)  # no flip since g1: M unchanged, step α·M·sign
    torch.testing.assert_close(delta, ALPHA * m1 * g1.sign(), atol=0, rtol=0)


def test_mi_gra_attack_equals_hand_loop() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(2)
    keys, seed, n, beta, eta = ["p", "q"], 5, 3, 3.5, 0.94
    adv = build_attack("mi+gra", {"gra": {"neighbours": n}}, eps=EPS, alpha=ALPHA, steps=4,
                       seed=seed).run(model, x, y, keys=keys)
    streams = ImageStreams.for_keys(seed, keys)
    delta, g = torch.zeros_like(x), torch.zeros_like(x)
    m = torch.full_like(x, 1 / eta)
    flips = 0
    for _ in range(4):
        grad = ce_grad(model, x + delta, y)
        u = (streams.rand(n, *x.shape[1:], dtype=x.dtype) * 2 - 1) * beta * EPS
        nb = ((x + delta)[:, None] + u).flatten(0, 1)
        avg = ce_grad(model, nb, y.repeat_interleave(n)).view(2, n, *x.shape[1:]).mean(1)
        s = F.cosine_similarity(grad.flatten(1), avg.flatten(1), dim=1).view(-1, 1, 1, 1)
        current = s * grad + (1 - s) * avg
        new = g + current / mean_abs(current)
        same = (new.sign() == g.sign()).to(x.dtype)
        flips += int((same == 0).sum())
        m = m * (same + (1 - same) * eta)  # the official expression
        g = new
        delta = project(x, delta + ALPHA * m * g.sign())
    assert flips > x.numel()  # the indicator did act after the first step
    torch.testing.assert_close(adv, x + delta, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------ RAP
@pytest.mark.parametrize("base", ["pgd", "mi", "di+mi"])
def test_rap_before_late_start_is_the_plain_attack_bitwise(base: str) -> None:
    model, (x, y) = TinyResNet(), tiny_batch(3)
    keys = ["a", "b", "c"]
    plain = build_attack(base, eps=EPS, alpha=ALPHA, steps=3, seed=2).run(model, x, y, keys=keys)
    method = "rap" if base == "pgd" else f"{base}+rap"
    for late in (3, 10):
        rap = build_attack(method, {"rap": {"late_start": late}}, eps=EPS, alpha=ALPHA, steps=3, seed=2)
        assert torch.equal(rap.run(model, x, y, keys=keys), plain)
        assert rap.forwards_by == {"data": 9}


def test_rap_attack_equals_hand_loop() -> None:
    """late_start 1: a plain first step, then K inner sign steps of ε_n/K from a uniform start,
    descending the cross-entropy, and the outer gradient at x' + n."""
    model, (x, y) = TinyResNet(), tiny_batch(2)
    keys, seed, k, eps_n = ["p", "q"], 6, 3, 6.0
    params = {"rap": {"late_start": 1, "inner_steps": k, "eps_n": eps_n}}
    adv = build_attack("rap", params, eps=EPS, alpha=ALPHA, steps=3, seed=seed).run(model, x, y, keys=keys)
    streams = ImageStreams.for_keys(seed, keys)
    r, a_n = eps_n / 255, eps_n / 255 / k
    delta = torch.zeros_like(x)
    for t in range(3):
        centre = x + delta
        n = torch.zeros_like(x)
        if t >= 1:
            n = (streams.rand(*x.shape[1:], dtype=x.dtype) * 2 - 1) * r
            n = (centre + n).clamp(0, 1) - centre
            for _ in range(k):
                gi = ce_grad(model, centre + n, y)
                n = (centre + (n - a_n * gi.sign()).clamp(-r, r)).clamp(0, 1) - centre
        delta = project(x, delta + ALPHA * ce_grad(model, centre + n, y).sign())
    torch.testing.assert_close(adv, x + delta, atol=1e-12, rtol=0)


def test_rap_inner_loop_minimises_the_attack_loss() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(4)
    rap = ReversePerturbation(late_start=0, inner_steps=8, eps_n=8.0)
    ctx = context(model, x, y, list(range(4)))
    n = rap.reverse_perturbation(x, ctx)
    assert n.abs().max() <= 8 / 255 + 1e-12 and ((x + n) >= 0).all() and ((x + n) <= 1).all()
    with torch.no_grad():
        before = F.cross_entropy(model(x), y, reduction="none")
        after = F.cross_entropy(model(x + n), y, reduction="none")
    assert (after < before).all()
    assert ctx.forwards_by == {"rap": 4 * 8}
    # targeted: away from the target class (the attack's loss is −CE to the target)
    target = (y + 1) % 5
    ctx = context(model, x, y, list(range(4)))
    ctx.target = target
    n = rap.reverse_perturbation(x, ctx)
    with torch.no_grad():
        assert (F.cross_entropy(model(x + n), target, reduction="none")
                > F.cross_entropy(model(x), target, reduction="none")).all()


def test_rap_pixel_parameters_resolve_against_the_budget() -> None:
    attack = build_attack("mi+rap", {"rap": {"eps_n": "1eps", "alpha_n": "0.25eps"}}, eps=8 / 255,
                          alpha=ALPHA, steps=2)
    rap = next(c for c in attack.components if isinstance(c, ReversePerturbation))
    assert rap.eps_n == pytest.approx(8.0) and rap.alpha_n == pytest.approx(2.0)
    with pytest.raises(ConfigError):
        build_attack("rap", {"rap": {"inner_steps": "1eps"}}, eps=EPS, alpha=ALPHA, steps=2)
    x, y = tiny_batch(1)
    ctx = context(TinyResNet(), x, y, ["a"])
    assert ReversePerturbation().inner_alpha(ctx) == pytest.approx(2 / 255)  # official ε_n/K = 16/255 / 8
    assert ReversePerturbation(alpha_n=2.0, eps_n=8.0).inner_alpha(ctx) == pytest.approx(2 / 255)  # TA


# ------------------------------------------------------------------------------------------ compositions
@pytest.mark.parametrize("name", ["pgn", "gra", "rap"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_composes_with_mi_di_ti(name: str, norm: str) -> None:
    model, (x, y) = TinyResNet(), tiny_batch(3)
    params = {name: SMALL[name], "ti": {"kernel_size": 3}}
    eps = EPS if norm == "linf" else 0.5
    attack = build_attack(f"mi+di+ti+{name}", params, eps=eps, alpha=eps / 3, steps=3, norm=norm)
    adv = attack.run(model, x, y)
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert torch.isfinite(adv).all() and (size <= eps + 1e-9).all() and (size > 0).all()
    assert attack.forwards_total <= attack.declared_forwards(3)
    with torch.no_grad():
        assert (F.cross_entropy(model(adv), y, reduction="none")
                > F.cross_entropy(model(x), y, reduction="none")).all()


def test_ni_and_stacked_compositions_run() -> None:
    model, (x, y) = TinyResNet(), tiny_batch(2)
    for method in ("ni+gra", "ni+pgn", "mi+pgn+rap", "ni+rap+ti"):
        params = {k: v for k, v in SMALL.items() if k in method.split("+")}
        attack = build_attack(method, params, eps=EPS, alpha=ALPHA, steps=3)
        adv = attack.run(model, x, y)
        assert (adv - x).abs().max() <= EPS + 1e-12
        assert attack.forwards_total <= attack.declared_forwards(2)


def test_parameter_checks() -> None:
    for bad in ({"neighbours": 0}, {"zeta": -1.0}, {"delta": 1.5}):
        with pytest.raises(ConfigError):
            GradientNormPenalty(**bad)
    for bad in ({"eta": 0.0}, {"beta": -1.0}, {"indicator": "magnitude"}):
        with pytest.raises(ConfigError):
            GradientRelevance(**bad)
    for bad in ({"late_start": -1}, {"inner_steps": 0}, {"inner_loss": "margin"}, {"alpha_n": 0.0}):
        with pytest.raises(ConfigError):
            ReversePerturbation(**bad)
