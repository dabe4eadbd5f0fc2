"""An image's adversarial example must not depend on the images that share its batch.

Two ways it could: a genuine coupling (a random stream or a reduction shared across the batch), and
CPU kernels whose rounding depends on the batch shape (oneDNN / GEMM pick other kernels for 1, 2 or
more rows), which the sign step amplifies wherever the gradient is at float-noise level. IR hits the
second systematically (at δ = 0 its gradient is exactly 0 and only float residue is left), so IR attacks
run one image per micro-batch. `ShapeSensitiveNet` makes the kernel effect large and deterministic:
its logits depend on the number of rows in the call, so any model call that mixes images shows up.

What holds, and is tested here:
- every attack: per-image streams, no cross-image reduction: for a fixed micro-batch size an image's
  floats are bitwise the same whatever its batch-mates are and wherever it sits in the batch;
- IR attacks: an image's floats are bitwise its alone result, whatever the batch, batch size, order
  or `max_forward` (every model call holds only that image's inputs);
- the same batch twice gives the same bytes.
Not guaranteed: non-IR attacks across micro-batch *sizes* (last bits, occasionally a pixel of a PNG).
"""

from __future__ import annotations

import pytest
import torch
from conftest import CIFAR_JPG, CIFAR_WEIGHTS, ChannelNet, ShapeSensitiveNet, need
from torch import nn

from transferlab.attacks import build_attack
from transferlab.attacks.base import AttackContext
from transferlab.attacks.interaction_reduction import InteractionReduction
from transferlab.rng import ImageStreams

EPS = 8 / 255
IR_SMALL = {"grid": 4, "cells": 3, "masks": 4, "players": 5}
IR_METHODS = [
    ("official", "ir", {"ir": dict(IR_SMALL, variant="official")}),
    ("pairwise", "ir", {"ir": dict(IR_SMALL, variant="pairwise")}),
    ("control", "ir", {"ir": dict(IR_SMALL, variant="control")}),
    ("mi+di+ir", "mi+di+ir", {"ir": IR_SMALL}),  # transformed data term: IR forwards the full point
]
OTHER_METHODS = ["pgd", "mi", "ni", "di", "ti", "vr", "vmi", "di+ti+mi"]


def images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 12, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def attack(method, params=None, steps=3, max_forward=256, random_start=None):
    return build_attack(
        method, params, eps=EPS, alpha=EPS / 4, steps=steps, max_forward=max_forward,
        random_start=random_start, seed=5,
    )


def run(atk, model, x, y, keys):
    return atk.run(model, x, y, keys=keys, scope=("a", "src"))


# ---------------------------------------------------------------------------- IR: alone == batched
@pytest.mark.parametrize("method", IR_METHODS, ids=[m[0] for m in IR_METHODS])
def test_ir_image_gets_its_alone_result_in_any_batch(method):
    _, name, params = method
    model = ShapeSensitiveNet()
    x, y = images(5)
    keys = [f"img{i}" for i in range(5)]
    atk = attack(name, params)
    alone = torch.cat([run(atk, model, x[i : i + 1], y[i : i + 1], keys[i : i + 1]) for i in range(5)])
    for max_forward in (1, 9, 256, 10_000):
        batched = run(attack(name, params, max_forward=max_forward), model, x, y, keys)
        assert torch.equal(batched, alone), f"max_forward={max_forward}: an image depends on its batch"
    order = [4, 2, 0, 3, 1]
    assert torch.equal(run(atk, model, x[order], y[order], [keys[i] for i in order]), alone[order])
    # other batch-mates
    x2, y2 = images(3, seed=7)
    mixed = run(atk, model, torch.cat([x2, x[3:4]]), torch.cat([y2, y[3:4]]), ["u", "v", "w", keys[3]])
    assert torch.equal(mixed[-1], alone[3])


def test_ir_runs_one_image_per_micro_batch_and_others_keep_their_sizing():
    for _, name, params in IR_METHODS:
        for max_forward in (1, 256, 10_000):
            assert attack(name, params, max_forward=max_forward).images_per_forward() == 1
    assert attack("pgd", max_forward=256).images_per_forward() == 256
    assert attack("vr", {"vr": {"copies": 4}}, max_forward=10).images_per_forward() == 2


def test_ir_model_calls_hold_one_image():
    """Each model call of an IR attack on a batch sees the rows of a single image."""
    net, calls = ChannelNet(), []

    class Spy(nn.Module):
        def forward(self, inputs):
            calls.append(inputs.shape[0])
            return net(inputs)

    x, y = images(4)
    atk = attack("ir", {"ir": IR_SMALL}, steps=2)
    run(atk, Spy(), x, y, list("abcd"))
    masked = 2 * IR_SMALL["masks"]
    # per image: the clean logits, then per step the data term and the masked inputs
    assert calls == [1, 1, masked, 1, masked] * 4


# ---------------------------------------------------------------------------- every attack
@pytest.mark.parametrize("method", OTHER_METHODS + ["ir"])
def test_fixed_micro_batch_size_result_independent_of_mates_and_position(method):
    """For the same micro-batch size, replacing or reordering the batch-mates changes nothing."""
    model = ShapeSensitiveNet()
    params = {"ir": IR_SMALL} if method == "ir" else None
    atk = attack(method, params, random_start=True)
    x, y = images(4)
    x2, y2 = images(4, seed=3)
    keys = ["p", "q", "r", "s"]
    ref = run(atk, model, x, y, keys)
    assert torch.equal(run(atk, model, x, y, keys), ref), "the same batch twice differs"
    for pos in range(4):  # image 'q' at every position, among other images
        xb, yb = x2.clone(), y2.clone()
        xb[pos], yb[pos] = x[1], y[1]
        kb = ["m0", "m1", "m2", "m3"]
        kb[pos] = "q"
        assert torch.equal(run(atk, model, xb, yb, kb)[pos], ref[1]), f"position {pos}"


def test_streams_do_not_depend_on_batch_mates():
    keys = ["a", "b", "c"]
    together = ImageStreams.for_keys(3, keys, "atk", "src")
    draws = [together.rand(2, 5), together.randn(4), together.randint(9, 3, 2)]
    for i, key in enumerate(keys):
        alone = ImageStreams.for_keys(3, [key], "atk", "src")
        assert torch.equal(alone.rand(2, 5)[0], draws[0][i])
        assert torch.equal(alone.randn(4)[0], draws[1][i])
        assert torch.equal(alone.randint(9, 3, 2)[0], draws[2][i])
    reordered = ImageStreams.for_keys(3, ["c", "x", "a"], "atk", "src")
    assert torch.equal(reordered.rand(2, 5)[2], draws[0][0])
    assert not torch.equal(ImageStreams.for_keys(3, ["a"], "other", "src").rand(2, 5)[0], draws[0][0])


@pytest.mark.parametrize("variant", ["official", "pairwise"])
def test_ir_masks_and_draw_rows_per_image(variant):
    """Coalitions (and copy-major draw_rows) of image b are the same in a batch and alone, step after step."""
    model = ChannelNet()
    x, y = images(3)
    ir = InteractionReduction(variant=variant, **IR_SMALL)

    def context(idx):
        streams = ImageStreams.for_keys(0, [f"k{i}" for i in idx])
        ctx = AttackContext(model, x[idx], y[idx], EPS, EPS / 4, "linf", 3, streams)
        ir.setup(ctx)
        return ctx

    batch = context([0, 1, 2])
    alone = [context([i]) for i in range(3)]
    for _ in range(3):
        masks = ir.coalition_masks(2 * 3, batch, torch.float32).view(2, 3, *batch_shape(ir, x))
        rows = batch.draw_rows("rand", 2 * 3, (4,)).view(2, 3, 4)
        for i, ctx in enumerate(alone):
            assert torch.equal(ir.coalition_masks(2, ctx, torch.float32), masks[:, i])
            assert torch.equal(ctx.draw_rows("rand", 2, (4,)), rows[:, i])


def batch_shape(ir, x):
    p = ir.coalitions_per_image(ir.grid_for(x.shape[-2]) ** 2)
    return (p, 1, *x.shape[-2:])


# ---------------------------------------------------------------------------- the real case
def test_cifar_pgd_ir_batched_equals_alone():
    """The issue's case: ResNet-20, pgd+ir official; confident images used to follow float noise of
    the batch shape in their first sign step."""
    from transferlab.data import open_dataset, to_float
    from transferlab.experiment import attack_from_spec
    from transferlab.models import load_model

    need(CIFAR_WEIGHTS)
    root = need(CIFAR_JPG)
    model = load_model("cifar10_resnet20", weights_dir=CIFAR_WEIGHTS)
    ds = open_dataset({"kind": "folder", "root": str(root), "resolution": 32, "crop_pct": 1.0})
    items, x = ds.load(ds.items[:12])
    x = to_float(x)
    y = torch.tensor([i.label for i in items])
    with torch.no_grad():
        p = model(x).softmax(1)
    right = (p.argmax(1) == y).nonzero().flatten()
    # the most confident images: their cross-entropy gradient is at float-noise level
    pick = right[p[right, y[right]].argsort(descending=True)[:3]]
    x, y, keys = x[pick], y[pick], [items[i].image_id for i in pick]
    spec = {
        "method": "pgd+ir", "params": {"ir": {"variant": "official"}}, "norm": "linf", "eps": 4,
        "alpha": 1, "steps": 1, "random_start": None, "max_forward": None,
    }
    atk = attack_from_spec("pgd_ir", spec, 32, 0)
    scope = ("pgd_ir", "cifar10_resnet20")
    batched = atk.run(model, x, y, keys=keys, scope=scope)
    for i in range(3):
        alone = atk.run(model, x[i : i + 1], y[i : i + 1], keys=keys[i : i + 1], scope=scope)
        assert torch.equal(alone[0], batched[i]), f"image {keys[i]} depends on its batch"
