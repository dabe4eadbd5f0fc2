"""The template-method loop: config values reach the attack, hooks fire, steps stay in the ball."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import ChannelNet, make_folder_dataset

from transferlab.attacks import build_attack
from transferlab.attacks.base import Attack
from transferlab.config import load_config
from transferlab.experiment import Experiment, loop_units


def test_every_config_value_reaches_the_attack(tmp_path):
    root = make_folder_dataset(tmp_path / "img")
    cfg = {
        "data": {"kind": "folder", "root": str(root), "resolution": 16, "crop_pct": 1.0},
        "models": {"sources": ["m"], "targets": ["m"]},
        "seed": 11,
        "attack_defaults": {"eps": 6, "alpha": 1.5, "steps": 7},
        "attacks": {
            "a": {
                "method": "pgd",
                "norm": "l2",
                "eps": 3,
                "alpha": 0.5,
                "steps": 4,
                "random_start": True,
                "max_forward": 17,
            },
            "b": {"method": "mi", "mi": {"mu": 0.25}},
        },
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exp = Experiment(load_config(path), tmp_path / "out", progress=False)
    jobs = {j.attack: j for j in exp.jobs()}
    a = exp.build(jobs["a"])
    root_d = math.sqrt(3 * 16 * 16)
    assert (a.norm, a.steps, a.random_start, a.seed, a.max_forward) == ("l2", 4, True, 11, 17)
    assert a.eps == pytest.approx(3 / 255 * root_d) and a.alpha == pytest.approx(0.5 / 255 * root_d)
    b = exp.build(jobs["b"])
    assert (b.norm, b.steps, b.random_start) == ("linf", 7, False)
    assert b.eps == pytest.approx(6 / 255) and b.alpha == pytest.approx(1.5 / 255)
    assert [c.name for c in b.components] == ["mi"] and b.components[0].mu == 0.25


def test_loop_units():
    assert loop_units({"norm": "linf", "eps": 16, "alpha": 2}, 224) == pytest.approx((16 / 255, 2 / 255))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_steps_stay_in_ball_and_hook_sees_every_step(norm):
    net = ChannelNet().double()
    x = torch.rand(5, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1])
    eps = 4 / 255 if norm == "linf" else 0.5
    attack = build_attack("pgd", eps=eps, alpha=eps / 3, steps=6, norm=norm, random_start=True, max_forward=2)
    seen = []

    def hook(t, x_adv, index):
        d = (x_adv - x[index]).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-9).all() and x_adv.min() >= 0 and x_adv.max() <= 1
        seen.append((t, tuple(index.tolist())))

    adv = attack.run(net, x, y, on_step=hook)
    assert sorted({t for t, _ in seen}) == list(range(1, 7))
    assert sorted({i for _, idx in seen for i in idx}) == list(range(5))  # micro-batches of 2 cover all
    loss = torch.nn.functional.cross_entropy
    assert loss(net(adv), y) > loss(net(x), y)


def test_invalid_loop_parameters():
    with pytest.raises(ValueError, match="norm"):
        Attack(eps=0.1, alpha=0.01, steps=1, norm="l1")
    with pytest.raises(ValueError, match="alpha"):
        Attack(eps=0.1, alpha=0, steps=1)


def test_forward_accounting():
    net = ChannelNet()
    attack = build_attack("pgd", eps=0.03, alpha=0.01, steps=3)
    attack.run(net, torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert attack.forwards_total == 12 and attack.forwards_per_step() == 1.0
