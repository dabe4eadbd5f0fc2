"""MEF against a direct transcription of the official step (with γ = 0, so the samples are deterministic)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transferlab.attacks.registry import build_attack
from transferlab.testing import TinyResNet, check_attack, tiny_batch

pytestmark = pytest.mark.usefixtures("single_thread")

EPS, STEPS = 8 / 255, 4


def reference_mef(model, x, y, eps, alpha, steps, n, kappa, inner_mu, mu):
    """SignedQiu/MEFAttack `mef_attack` with the uniform part at zero: per sample k the point
    x' + κε·p_k, p_k ← g_k/mean|g_k| − μ_in·p_k, MI (μ) on the mean gradient, sign steps, clip."""

    def grad_of(at):
        at = at.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(at), y, reduction="sum"), at)
        return g

    def normalise(g):
        return g / g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)

    adv, mom = x.clone(), torch.zeros_like(x)
    pgia = [torch.zeros_like(x) for _ in range(n)]
    for _ in range(steps):
        grads = [grad_of(adv + kappa * eps * p) for p in pgia]
        pgia = [normalise(g) - inner_mu * p for g, p in zip(grads, pgia)]
        mom = mu * mom + normalise(torch.stack(grads).mean(0))
        adv = torch.min(torch.max(adv + alpha * mom.sign(), x - eps), x + eps).clamp(0, 1)
    return adv


def test_matches_the_defining_step_without_the_uniform_part():
    model = TinyResNet()
    x, y = tiny_batch(3)
    params = {"mef": {"samples": 3, "gamma": 0.0, "kappa": 0.5}, "mi": {"mu": 0.5}}
    ours = build_attack("mi+mef", params, eps=EPS, alpha=EPS / 4, steps=STEPS).run(model, x, y)
    expected = reference_mef(model, x, y, EPS, EPS / 4, STEPS, n=3, kappa=0.5, inner_mu=0.9, mu=0.5)
    assert torch.allclose(ours, expected, atol=1e-12, rtol=0)
    # the PGIA term matters: without it (κ = 0) the images differ
    plain = build_attack("mi+mef", {"mef": {"samples": 3, "gamma": 0.0, "kappa": 0.0}, "mi": {"mu": 0.5}},
                         eps=EPS, alpha=EPS / 4, steps=STEPS).run(model, x, y)
    assert not torch.equal(plain, ours)


def test_costs_and_composition():
    model = TinyResNet()
    x, y = tiny_batch(2)
    attack = build_attack("mi+mef", {"mef": {"samples": 4}}, eps=EPS, alpha=EPS / 4, steps=STEPS)
    attack.run(model, x, y)
    assert attack.passes_total() == STEPS * 4 and attack.forwards_total == 2 * STEPS * 4
    check_attack("mi+di+mef", params={"mef": {"samples": 4}})
    check_attack("mi+mef+vt", params={"mef": {"samples": 2}, "vt": {"neighbours": 2}})
