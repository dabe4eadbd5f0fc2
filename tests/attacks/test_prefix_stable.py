"""Prefix-stable attacks: after t steps of a longer run, exactly the image a t-step run ends with."""

from __future__ import annotations

import pytest
import torch
from conftest import ChannelNet

from transferlab.attacks import build_attack
from transferlab.attacks.registry import COMPONENTS, _load_builtins

_load_builtins()
DECLARED = sorted(name for name, cls in COMPONENTS.items() if cls.prefix_stable)


def trajectory(method: str, steps: int, norm: str = "linf", **kwargs) -> tuple[torch.Tensor, dict]:
    """The final images of a `steps`-step run and the images after every step."""
    torch.manual_seed(0)
    x, y = torch.rand(5, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1])
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    attack = build_attack(method, eps=eps, alpha=alpha, steps=steps, norm=norm, max_forward=2, **kwargs)
    seen: dict[int, torch.Tensor] = {}

    def hook(t, x_adv, index):
        seen.setdefault(t, torch.empty_like(x))[index] = x_adv

    out = attack.run(ChannelNet(seed=1), x, y, keys=list(range(5)), scope=("a", "m"), on_step=hook)
    return out, seen


def test_the_declared_components_are_the_deterministic_ones():
    assert DECLARED == ["mi", "ni", "si", "ti"]


@pytest.mark.parametrize("method", ["pgd", *DECLARED, "mi+ti", "ni+ti", "ni+si"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_shorter_run_is_a_prefix_of_a_longer_one_byte_for_byte(method, norm):
    _, seen = trajectory(method, 7, norm)
    for steps in (1, 3, 6):
        short, _ = trajectory(method, steps, norm)
        assert build_attack(method, eps=1, alpha=1, steps=steps).prefix_stable()
        assert torch.equal(short, seen[steps]), (method, norm, steps)


def test_random_start_and_random_components_are_not_prefix_stable():
    assert not build_attack("mi", eps=1, alpha=1, steps=3, random_start=True).prefix_stable()
    for method in ("mi+di", "vmi", "mi+bsr"):
        assert not build_attack(method, eps=8 / 255, alpha=2 / 255, steps=3).prefix_stable(), method
