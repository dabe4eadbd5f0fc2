"""The shared battery: every registered component alone, the presets and some compositions, L∞ and L2.

Checks, on a tiny float64 conv net with a residual block (so `sgm` applies), 16-px images:
quantised images stay inside the ε-ball and [0,255]; the source loss rises over clean; the same seed gives
the same bytes; an image's result does not depend on its batch-mates (batch of 4, alone, in another batch).
The battery itself lives in `transferlab.testing` (`transferlab check-attack` runs it on a plug-in).
"""

from __future__ import annotations

import pytest
import torch

from transferlab.attacks.registry import COMPONENTS, PRESETS, _load_builtins
from transferlab.testing import Block, TinyResNet, check_attack, run_battery, tiny_batch  # noqa: F401


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models: one intra-op thread. With two, a busy second core makes every op wait (measured 80x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


COMPOSITIONS = ["pgd", "mi+sgm+ir", "hybrid_ir", "vni", "di+ti+mi", "margin+mi", "start+mi"]
#: non-default settings worth their own run: (id, method, params)
VARIANTS = [
    ("ir-pairwise", "ir", {"ir": {"variant": "pairwise", "players": 6}}),
    ("ir-control", "ir", {"ir": {"variant": "control"}}),
]


def tiny_model() -> TinyResNet:
    return TinyResNet()


def all_methods() -> list[str]:
    _load_builtins()
    return sorted({*COMPONENTS, *PRESETS, *COMPOSITIONS})


def cases() -> list:
    plain = [pytest.param(m, None, id=m) for m in all_methods()]
    return plain + [pytest.param(m, p, id=i) for i, m, p in VARIANTS]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method,params", cases())
def test_battery(method: str, params, norm: str) -> None:
    check_attack(method, norm, params)
