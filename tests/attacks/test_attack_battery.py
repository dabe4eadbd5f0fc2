"""The shared battery: every registered component alone, the presets and some compositions, L∞ and L2.

Checks, on a tiny float64 conv net with a residual block (so `sgm` applies), 16-px images:
quantised images stay inside the ε-ball and [0,255]; the source loss rises over clean; the same seed gives
the same bytes; an image's result does not depend on its batch-mates (batch of 4, alone, in another batch).
New plug-ins registered before collection get the battery for free; `check_attack` is reusable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transferlab.attacks.registry import COMPONENTS, PRESETS, _load_builtins, build_attack

try:
    from transferlab.eval.quantize import quantize
except ImportError:  # pragma: no cover - minimal stand-in until the eval package provides it

    def quantize(x_clean, x_adv, eps, norm="linf"):
        clean = (x_clean * 255).round()
        delta = (x_adv * 255).round().clamp(0, 255) - clean
        if norm == "linf":
            delta = delta.clamp(-eps * 255, eps * 255).trunc()
        else:
            norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = torch.where(norms > eps * 255, (delta * eps * 255 / norms).trunc(), delta)
        return (clean + delta).clamp(0, 255) / 255


SIZE = 16


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models: one intra-op thread. With two, a busy second core makes every op wait (measured 80x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


EPS = {"linf": 8 / 255, "l2": 0.5}
STEPS = 3
COMPOSITIONS = ["pgd", "mi+sgm+ir", "hybrid_ir", "vni", "di+ti+mi"]
#: non-default settings worth their own run: (id, method, params)
VARIANTS = [
    ("ir-pairwise", "ir", {"ir": {"variant": "pairwise", "players": 6}}),
    ("ir-control", "ir", {"ir": {"variant": "control"}}),
]


class Block(nn.Module):
    """Residual block: relu(conv2(relu(conv1(x))) + shortcut(x))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.shortcut = nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class TinyResNet(nn.Module):
    """stem conv -> residual block -> global average pool -> linear; any input size."""

    def __init__(self, classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.block = Block(8)
        self.head = nn.Linear(8, classes)
        self.double().eval().requires_grad_(False)

    def forward(self, x):
        h = self.block(torch.relu(self.stem(x)))
        return self.head(h.mean((2, 3))) * 4


def tiny_model() -> TinyResNet:
    return TinyResNet()


def tiny_batch(n: int = 4, seed: int = 1):
    """8-bit valued float64 images and the model's own clean predictions as labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g).double() / 255
    with torch.no_grad():
        y = tiny_model()(x).argmax(1)
    return x, y


def all_methods() -> list[str]:
    _load_builtins()
    return sorted({*COMPONENTS, *PRESETS, *COMPOSITIONS})


def check_attack(method: str, norm: str, params=None) -> None:
    """Every battery check for one method and norm (raises AssertionError on failure)."""
    eps = EPS[norm]
    model = tiny_model()
    x, y = tiny_batch(4)
    keys = [f"img{i}" for i in range(4)]

    def make():
        return build_attack(method, params, eps=eps, alpha=eps / 3, steps=STEPS, norm=norm, seed=7)

    adv = make().run(model, x, y, keys=keys)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    # inside the ball and the image domain, before and after 8-bit quantisation
    for img in (adv, quantize(x, adv, eps, norm)):
        d = (img - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-9).all(), f"{method}/{norm}: outside the ε-ball: {size.max()} > {eps}"
        assert img.min() >= 0 and img.max() <= 1
    q = quantize(x, adv, eps, norm)
    assert torch.equal(q * 255, (q * 255).round())
    # the source loss rises
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y, reduction="none")
        adv_loss = F.cross_entropy(model(q), y, reduction="none")
    assert (adv_loss > clean_loss).all(), f"{method}/{norm}: loss did not rise: {clean_loss} -> {adv_loss}"
    # same seed, same bytes
    again = make().run(model, x, y, keys=keys)
    assert torch.equal(adv, again), f"{method}/{norm}: not deterministic"
    # independent of batch-mates: alone, and inside a different batch
    alone = make().run(model, x[2:3], y[2:3], keys=keys[2:3])
    other, _ = tiny_batch(2, seed=5)
    mixed_x = torch.cat([other[:1], x[2:3], x[0:1]])
    mixed_y = torch.cat([y[1:2], y[2:3], y[0:1]])
    mixed = make().run(model, mixed_x, mixed_y, keys=["new", keys[2], keys[0]])
    # (float64 convolutions differ by ~1e-16 between batch sizes: compare far above that noise)
    close = dict(atol=1e-10, rtol=0)
    torch.testing.assert_close(alone[0], adv[2], **close, msg=f"{method}/{norm}: image 2 differs alone")
    torch.testing.assert_close(
        mixed[1], adv[2], **close, msg=f"{method}/{norm}: image 2 differs in another batch"
    )


def cases() -> list:
    plain = [pytest.param(m, None, id=m) for m in all_methods()]
    return plain + [pytest.param(m, p, id=i) for i, m, p in VARIANTS]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method,params", cases())
def test_battery(method: str, params, norm: str) -> None:
    check_attack(method, norm, params)
