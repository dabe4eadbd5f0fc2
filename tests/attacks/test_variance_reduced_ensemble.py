"""SVRE against a direct transcription of its defining step, its costs, and what it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transferlab.attacks.registry import build_attack
from transferlab.ensemble import Collection, Ensemble
from transferlab.errors import ConfigError
from transferlab.testing import TinyResNet, check_attack, tiny_batch

pytestmark = pytest.mark.usefixtures("single_thread")

EPS, STEPS = 8 / 255, 3


def pair() -> Ensemble:
    return Ensemble([TinyResNet(), TinyResNet(seed=3)], "pair")


def reference_svre_mi(model: Ensemble, x, y, schedules, eps, alpha, steps, mu=1.0):
    """SVRE-MI-FGSM as the official script writes it: ∇J_k at the step's point recomputed every inner
    iteration, inner and outer momentum on mean-|·|-normalised gradients, sign steps, clip to the ball."""

    def grad_of(f, at):
        at = at.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(f(at), y, reduction="sum"), at)
        return g

    def normalise(g):
        return g / g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)

    def clip(z):
        return torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)

    adv, momentum = x.clone(), torch.zeros_like(x)
    for t in range(steps):
        g_ens = grad_of(model, adv)
        inner, acc = adv.clone(), torch.zeros_like(x)
        for k in schedules[t]:
            member = model.members[k]
            g = grad_of(member, inner) - (grad_of(member, adv) - g_ens)
            acc = mu * acc + normalise(g)
            inner = clip(inner + alpha * acc.sign())
        momentum = mu * momentum + normalise(acc)
        adv = clip(adv + alpha * momentum.sign())
    return adv


@pytest.mark.parametrize("anchors", ["cached", "per_inner"])
def test_matches_the_defining_step(anchors):
    model = pair()
    x, y = tiny_batch(3)
    attack = build_attack("mi+svre", {"svre": {"inner": 5, "anchors": anchors}}, eps=EPS, alpha=EPS / 4,
                          steps=STEPS, seed=2)
    ours = attack.run(model, x, y)
    svre = next(c for c in attack.components if c.name == "svre")

    class Step:  # the schedule is keyed by (seed, step) only
        def __init__(self, t):
            self.step, self.attack = t, attack

    schedules = [svre.schedule(Step(t), 2) for t in range(STEPS)]
    assert any(len(set(s)) == 2 for s in schedules), "the test should exercise both members"
    expected = reference_svre_mi(model, x, y, schedules, EPS, EPS / 4, STEPS)
    assert torch.allclose(ours, expected, atol=1e-12, rtol=0)


def test_costs_are_declared_in_member_passes():
    model = pair()
    x, y = tiny_batch(2)
    cached = build_attack("mi+svre", {"svre": {"inner": "4K"}}, eps=EPS, alpha=EPS / 4, steps=STEPS)
    cached.run(model, x, y)
    k, m = 2, 8  # '4K' with two members
    # full ensemble forwards per image: the data term, then (K anchors + M inner) single-member passes / K
    assert cached.passes_total() == pytest.approx(STEPS * (1 + (k + m) / k))
    assert cached.forwards_total == pytest.approx(cached.declared_forwards(2))
    noisy = build_attack("mi+di+svre", {"svre": {"inner": 4}}, eps=EPS, alpha=EPS / 4, steps=STEPS)
    noisy.run(model, x, y)  # DI draws per call: anchors re-drawn every inner iteration (2M passes)
    assert noisy.passes_total() == pytest.approx(STEPS * (1 + 2 * 4 / k))
    assert noisy.forwards_total == pytest.approx(noisy.declared_forwards(2))


def test_battery_passes_composed():  # svre alone runs in tests/attacks/test_attack_battery.py
    check_attack("mi+di+svre", params={"svre": {"inner": 4}})
    check_attack("mi+svre", norm="l2", params={"svre": {"inner": 4}})


def test_refuses_a_single_model_and_a_collection():
    x, y = tiny_batch(2)
    attack = build_attack("mi+svre", None, eps=EPS, alpha=EPS / 4, steps=1)
    with pytest.raises(ConfigError, match="ensemble"):
        attack.run(TinyResNet(), x, y)
    collection = Collection([TinyResNet(), TinyResNet(seed=3)], "sets", n_grad=1)
    with pytest.raises(ConfigError, match="ensemble source"):
        attack.run(collection, x, y)
    with pytest.raises(ConfigError, match="inner"):
        build_attack("svre", {"svre": {"inner": "four"}}, eps=EPS, alpha=EPS / 4, steps=1)


def test_only_runs_one_member_and_restores():
    model = pair()
    x, _ = tiny_batch(2)
    with torch.no_grad():
        with model.only(1):
            alone = model(x)
            assert model.call_share == 0.5
        both = model(x)
    assert torch.equal(alone, model.members[1](x))
    assert torch.allclose(both, (model.members[0](x) + model.members[1](x)) / 2)
    assert model.call_share == 1.0
