"""Budget-relative pixel parameters: `sigma: 0.9375eps` resolves against the entry's ε (1/255 units)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_attack_battery import TinyResNet, single_thread, tiny_batch  # noqa: E402, F401 (autouse)

from transferlab.attacks.registry import build_attack  # noqa: E402
from transferlab.attacks.scaled import relative_factor  # noqa: E402
from transferlab.config import load_config  # noqa: E402
from transferlab.errors import ConfigError  # noqa: E402


@pytest.mark.parametrize("text,factor", [("0.9375eps", 0.9375), ("0.25 * eps", 0.25), ("eps", 1.0),
                                         (" 2eps ", 2.0), ("1e-1eps", 0.1), (".5eps", 0.5)])
def test_relative_values_parse(text, factor):
    assert relative_factor(text) == pytest.approx(factor)


@pytest.mark.parametrize("value", [3.75, "3.75", "eps2", "0.5epsx", None])
def test_other_values_are_not_relative(value):
    assert relative_factor(value) is None


def test_relative_sigma_equals_the_absolute_value_bitwise():
    model, (x, y) = TinyResNet(), tiny_batch(3)
    common = dict(eps=4 / 255, alpha=1 / 255, steps=3, seed=0)
    relative = build_attack("vr", {"vr": {"sigma": "0.9375eps", "copies": 4}}, **common)
    absolute = build_attack("vr", {"vr": {"sigma": 3.75, "copies": 4}}, **common)
    assert relative.components[0].sigma == pytest.approx(3.75)
    assert torch.equal(relative.run(model, x, y), absolute.run(model, x, y))


def test_relative_values_are_refused_where_they_have_no_meaning():
    with pytest.raises(ConfigError, match="gamma is not in pixel units"):
        build_attack("sgm", {"sgm": {"gamma": "0.5eps"}}, eps=4 / 255, alpha=1 / 255, steps=1)
    with pytest.raises(ConfigError, match="needs the budget"):
        build_attack("vr", {"vr": {"sigma": "0.5eps"}}, eps=0.5, alpha=0.1, steps=1, norm="l2")


def test_config_resolves_per_entry_and_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("attack_defaults: {eps: 4}\nattacks:\n  vr: {method: vr, vr: {sigma: 0.9375eps}}\n"
                    "  vr16: {method: vr, eps: 16, vr: {sigma: 0.9375eps}}\n"
                    "  bad: {method: vr, vr: {copies: 2eps}}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*copies is not in pixel units"):
        load_config(path)
    path.write_text("attack_defaults: {eps: 4}\nattacks:\n  vr: {method: vr, vr: {sigma: 0.9375eps}}\n"
                    "  vr16: {method: vr, eps: 16, vr: {sigma: 0.9375eps}}\n")
    from transferlab.runner.resolve import attack_from_spec

    cfg = load_config(path)
    sigmas = [attack_from_spec(n, s, 32, 0).components[0].sigma for n, s in cfg["attacks"].items()]
    assert sigmas == pytest.approx([3.75, 15.0])
