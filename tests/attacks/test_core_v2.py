"""The attack core's hooks: single owners, outer, init, targeted objectives, taps, declarations."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from transferlab.attacks.base import Attack, Component
from transferlab.attacks.registry import build_attack
from transferlab.errors import ConfigError
from transferlab.testing import TinyResNet, tiny_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_attack_battery import single_thread  # noqa: E402, F401 (autouse: one thread for tiny models)

EPS, ALPHA = 8 / 255, 2 / 255


def make(method, steps=3, params=None, **kw):
    return build_attack(method, params, eps=EPS, alpha=ALPHA, steps=steps, seed=3, **kw)


def test_two_owners_of_one_hook_are_refused_by_name():
    with pytest.raises(ConfigError, match="'logit' and 'margin' both define the 'objective' hook"):
        make("logit+margin")


def test_targeted_objectives_move_toward_the_target():
    model, (x, y) = TinyResNet(), tiny_batch(4)
    target = (y + 1) % 5
    with pytest.raises(ValueError, match="is targeted: pass target classes"):
        make("pgd", targeted=True).run(model, x, y)
    for method in ("pgd", "logit", "margin"):
        adv = make(method, steps=10, targeted=True).run(model, x, y, target=target)
        with torch.no_grad():
            before = model(x).softmax(1).gather(1, target[:, None])
            after = model(adv).softmax(1).gather(1, target[:, None])
        assert (after > before).all(), method


def test_outer_hook_can_start_late_and_start_can_hand_over_another_attack():
    model, (x, y) = TinyResNet(), tiny_batch(2)

    @dataclass
    class LateStart(Component):
        name = "late"
        skip: int = 2

        def outer(self, delta, ctx, step):
            return delta if ctx.step < self.skip else step(delta)

    late = Attack([LateStart()], eps=EPS, alpha=ALPHA, steps=5).run(model, x, y)
    plain = make("pgd", steps=3).run(model, x, y)
    assert torch.equal(late, plain)
    staged = make("start", steps=0, params={"start": {"method": "pgd", "steps": 3}})
    assert torch.equal(staged.run(model, x, y), plain)
    assert staged.last_context.forwards == 2 * 3  # the first stage's forwards are counted


def test_undeclared_work_is_refused_naming_the_component():
    model, (x, y) = TinyResNet(), tiny_batch(4)

    @dataclass
    class Sneaky(Component):
        name = "sneaky"

        def process(self, grad, ctx):
            ctx.forward(ctx.x)  # one forward per step that extra_forwards() does not declare
            return grad

    with pytest.raises(ValueError, match="sent by .*sneaky: 12"):
        Attack([Sneaky()], eps=EPS, alpha=ALPHA, steps=3).run(model, x, y)

    @dataclass
    class Copies(Component):
        name = "copies"

        def expand(self, points, ctx):
            return points.repeat(4, 1, 1, 1), 4

    with pytest.raises(ValueError, match="'copies' makes 4 copies per image in expand but declares"):
        Attack([Copies()], eps=EPS, alpha=ALPHA, steps=1).run(model, x, y)


def test_feature_taps_are_read_inside_hooks_and_removed_after():
    model, (x, y) = TinyResNet(), tiny_batch(2)
    seen = []

    @dataclass
    class Reader(Component):
        name = "reader"
        layer: str = "block.conv1"

        def taps(self):
            return (self.layer,)

        def process(self, grad, ctx):
            seen.append(tuple(ctx.features[self.layer].shape))
            return grad

    Attack([Reader()], eps=EPS, alpha=ALPHA, steps=2).run(model, x, y)
    assert seen == [(2, 8, 8, 8)] * 2
    assert not model.block.conv1._forward_hooks  # cleaned up after the batch
    tap_error = "no layer .block.conv3. to tap .did you mean block.conv2, block.conv1"
    with pytest.raises(ConfigError, match=tap_error):
        Attack([Reader(layer="block.conv3")], eps=EPS, alpha=ALPHA, steps=1).run(model, x, y)


def test_ensemble_loss_fusion_averages_member_objectives():
    from transferlab.ensemble import Ensemble

    a, b = TinyResNet(seed=0), TinyResNet(seed=1)
    for m in (a, b):
        m.name = f"m{id(m)}"
    x, y = tiny_batch(2)
    for fusion in ("logits", "probs", "loss"):
        ens = Ensemble([a, b], "a+b", fusion).double()
        adv = make("mi+sgm", steps=3).run(ens, x, y)  # SGM reaches both members' residual blocks
        assert (adv - x).abs().max() <= EPS + 1e-12 and not torch.equal(adv, x)
