"""The shared attack battery, shipped with the package so that a plug-in author can run it on their
own component: `transferlab check-attack NAME [--plugin MODULE]`, or `check_attack(...)` in a test.

On a tiny float64 conv net with a residual block (so `sgm` applies), 16-px images, it checks that:
adversarial images stay inside the ε-ball and [0,1], before and after 8-bit quantisation; the source loss
rises over clean; the same seed gives the same bytes; an image's result does not depend on its batch-mates
(alone, and inside another batch, pool images included); and the model inputs the attack sends equal what
its components declare (the cost tables and micro-batch sizes rest on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.attacks.registry import build_attack
from transferlab.eval.quantize import quantize

SIZE = 16
EPS = {"linf": 8 / 255, "l2": 0.5}
STEPS = 3


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
    """stem conv -> residual block -> global average pool -> linear; any input size; float64."""

    def __init__(self, classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.block = Block(8)
        self.head = nn.Linear(8, classes)
        self.num_classes = classes
        self.double().eval().requires_grad_(False)

    def forward(self, x):
        h = self.block(torch.relu(self.stem(x)))
        return self.head(h.mean((2, 3))) * 4


def tiny_batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit valued float64 images and the tiny model's own clean predictions as labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g).double() / 255
    with torch.no_grad():
        y = TinyResNet()(x).argmax(1)
    return x, y


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def run_battery(method: str, norm: str = "linf", params: dict | None = None) -> list[Check]:
    """Every battery check for one method and norm; a check that cannot run fails with the error."""
    eps = EPS[norm]
    model = TinyResNet()
    x, y = tiny_batch(4)
    try:
        if any(c.needs_ensemble for c in build_attack(method, params, eps=eps, alpha=eps / 3, steps=STEPS,
                                                       norm=norm).components):
            from transferlab.ensemble import Ensemble

            model = Ensemble([TinyResNet(), TinyResNet(seed=3)], "tiny_pair")
    except Exception as exc:  # the attack cannot even be built
        return [Check("runs", False, f"{type(exc).__name__}: {exc}")]
    keys = [f"img{i}" for i in range(4)]
    pool, _ = tiny_batch(6, seed=9)  # images outside every batch below

    def make():
        return build_attack(method, params, eps=eps, alpha=eps / 3, steps=STEPS, norm=norm, seed=7)

    checks: list[Check] = []
    try:
        attack = make()
        adv = attack.run(model, x, y, keys=keys, pool=pool)
    except Exception as exc:  # the attack itself fails: nothing else can be checked
        return [Check("runs", False, f"{type(exc).__name__}: {exc}")]
    checks.append(Check("runs", adv.shape == x.shape and adv.dtype == x.dtype,
                        f"output {tuple(adv.shape)}"))
    worst = 0.0
    for img in (adv, quantize(x, adv, eps, norm)):
        d = (img - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        worst = max(worst, float(size.max()))
        in_domain = bool(img.min() >= 0 and img.max() <= 1)
    checks.append(Check("ε-ball after 8-bit quantisation", worst <= eps + 1e-9 and in_domain,
                        f"largest {norm} size {worst:.6g}, ε {eps:.6g}, pixels in [0,1]: {in_domain}"))
    q = quantize(x, adv, eps, norm)
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y, reduction="none")
        adv_loss = F.cross_entropy(model(q), y, reduction="none")
    checks.append(Check("source loss rises", bool((adv_loss > clean_loss).all()),
                        f"clean {clean_loss.tolist()} -> adversarial {adv_loss.tolist()}"))
    again = make().run(model, x, y, keys=keys, pool=pool)
    checks.append(Check("same seed, same result", torch.equal(adv, again),
                        "" if torch.equal(adv, again) else f"max difference {(adv - again).abs().max():.3g}"))
    alone = make().run(model, x[2:3], y[2:3], keys=keys[2:3], pool=pool)
    other, _ = tiny_batch(2, seed=5)
    mixed = make().run(model, torch.cat([other[:1], x[2:3], x[0:1]]), torch.cat([y[1:2], y[2:3], y[0:1]]),
                       keys=["new", keys[2], keys[0]], pool=pool)
    # float64 convolutions differ by ~1e-16 between batch sizes: compare far above that noise
    gaps = {"alone": float((alone[0] - adv[2]).abs().max()),
            "in another batch": float((mixed[1] - adv[2]).abs().max())}
    bad = {k: v for k, v in gaps.items() if v > 1e-10}
    checks.append(Check("independent of batch-mates", not bad,
                        "; ".join(f"image 2 differs {k} by up to {v:.3g}" for k, v in bad.items())
                        or "image 2 identical alone and in another batch"))
    declared = attack.declared_forwards(x.shape[0])
    sent = attack.forwards_total
    checks.append(Check("declared forwards", sent <= declared + 1e-9,
                        f"sent {sent} model inputs, declared {declared:g} "
                        f"({attack.passes_per_step():g} passes per image-step; "
                        f"by hook: {attack.forwards_by})"))
    return checks


def check_attack(method: str, norm: str = "linf", params: dict | None = None) -> None:
    """The battery as an assertion (for tests): raises AssertionError naming every failed check."""
    failed = [c for c in run_battery(method, norm, params) if not c.ok]
    assert not failed, f"{method}/{norm}: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
