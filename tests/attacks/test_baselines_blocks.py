"""Block and resize transformations: BSR (`bsr`), SIA (`sia`), the DI variants (`di`), TI's kernel.

The shared battery for each variant, then each defining step on small float64 tensors against a direct port
of the source's code fed the same draws: BSR's blocks (a zero angle is a pure block permutation; a rotation
matches torchvision's, with tfa's fill for the official variant), SIA's ten per-block operations, DI's
'original' (unchanged input or an H'×H' canvas holding the resized input), 'transferattack', and
'torchattacks' against torchattacks' own DIFGSM.input_diversity with its random draws forced.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.stats as st
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from transferlab.attacks.base import AttackContext
from transferlab.attacks.block_shuffle_rotation import (
    BlockShuffleRotation,
    split_lengths,
    truncated_normal,
)
from transferlab.attacks.input_diversity import Geometry, InputDiversity, resize_like_model
from transferlab.attacks.registry import build_attack
from transferlab.attacks.structure_invariance import OPS, StructureInvariance, bilinear_matrix
from transferlab.attacks.translation_invariance import gaussian_kernel
from transferlab.errors import ConfigError
from transferlab.rng import ImageStreams
from transferlab.testing import TinyResNet, check_attack, tiny_batch

EPS, ALPHA = 8 / 255, 2 / 255


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: one torch thread


def context(x, model=None, keys=None, seed=0) -> AttackContext:
    keys = list(range(x.shape[0])) if keys is None else keys
    y = torch.zeros(x.shape[0], dtype=torch.long)
    return AttackContext(model, x, y, EPS, ALPHA, "linf", 3, ImageStreams.for_keys(seed, keys))


def distinct_images(n: int, h: int, w: int, c: int = 3) -> torch.Tensor:
    """Images whose pixels are all different (a permutation of pixels is visible)."""
    return torch.randperm(n * c * h * w, generator=torch.Generator().manual_seed(0)).double().view(
        n, c, h, w) / (n * c * h * w)


# ---------------------------------------------------------------------------------------------- battery
BATTERY = [
    ("bsr", None),
    ("bsr", {"bsr": {"variant": "transferattack"}}),
    ("sia", None),
    ("sia", {"sia": {"variant": "transferattack"}}),
    ("di", {"di": {"variant": "resample"}}),
    ("di", {"di": {"variant": "original"}}),
    ("di", {"di": {"variant": "transferattack"}}),
    ("di", {"di": {"variant": "torchattacks"}}),
    ("mi+bsr+di", {"di": {"variant": "original"}}),
    ("mi+sia+ti", None),
]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method,params", BATTERY, ids=[f"{m}-{p}" for m, p in BATTERY])
def test_battery(method, params, norm):
    check_attack(method, norm, params)


def test_defaults_variants_and_declarations():
    bsr, ta = BlockShuffleRotation(), BlockShuffleRotation(variant="transferattack")
    assert (bsr.blocks, bsr.copies, bsr.angle, bsr.fill) == (2, 20, 0.2, 0.5)
    assert (ta.blocks, ta.copies, ta.fill) == (3, 20, 0.0) and ta.angle == pytest.approx(math.radians(24))
    sia = StructureInvariance()
    assert (sia.blocks, sia.copies, len(sia.ops)) == (3, 20, 10)
    assert len(StructureInvariance(variant="transferattack").ops) == 7
    di = InputDiversity()
    assert (di.variant, di.p, di.resize_rate, di.fill) == ("original", 0.5, 1.1, 0.5)  # DI-2-FGSM
    assert InputDiversity(variant="torchattacks").resize_rate == 0.9
    assert InputDiversity(variant="original").fill == 0.5
    for name, cls in (("bsr", BlockShuffleRotation), ("sia", StructureInvariance)):
        attack = build_attack(name, eps=EPS, alpha=ALPHA, steps=2)
        assert attack.inputs_per_image() == 20 and cls().batch_multiplier() == 20
    for bad in ({"variant": "x"}, {"blocks": 0}, {"copies": 0}, {"angle": 10.0}, {"fill": 2.0}):
        with pytest.raises(ConfigError):
            BlockShuffleRotation(**bad)
    for bad in ({"variant": "ta"}, {"blocks": 0}, {"noise": -1}):
        with pytest.raises(ConfigError):
            StructureInvariance(**bad)
    for bad in ({"variant": "x"}, {"variant": "torchattacks", "resize_rate": 1.1}, {"resize_rate": 0.9},
                {"fill": -0.1}):
        with pytest.raises(ConfigError):
            InputDiversity(**bad)


@pytest.mark.parametrize("name,params", [("bsr", {}), ("bsr", {"variant": "transferattack"}), ("sia", {}),
                                         ("sia", {"variant": "transferattack"})])
def test_one_batched_model_call_per_step(name, params):
    """All copies in one forward per step, from the images' own streams (not the global generator)."""
    model, (x, y) = TinyResNet(), tiny_batch(3)
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, inputs):
            calls.append(inputs.shape[0])
            return model(inputs)

    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    build_attack(name, {name: params}, eps=EPS, alpha=ALPHA, steps=2).run(Counting(), x, y)
    assert calls == [3 * 20, 3 * 20]
    assert torch.equal(torch.random.get_rng_state(), before)


# ---------------------------------------------------------------------------------------------- BSR
def test_split_lengths_and_truncated_normal():
    w = torch.rand(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lengths = split_lengths(w, 17)
    assert (lengths.sum(1) == 17).all() and (lengths >= 0).all()
    by_hand = np.round(w.numpy() * 17 / w.numpy().sum(1, keepdims=True)).astype(int)
    for row, hand in zip(lengths.tolist(), by_hand):
        hand[hand.argmax()] += 17 - hand.sum()
        assert row == hand.tolist()
    u = torch.rand(200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    angles = truncated_normal(u, 0.2)
    assert angles.abs().max() < 0.4  # tf.truncated_normal: within two standard deviations
    a, b = -2.0, 2.0  # std of the standard normal truncated to [-2, 2]
    var = 1 - (b * st.norm.pdf(b) - a * st.norm.pdf(a)) / (st.norm.cdf(b) - st.norm.cdf(a))
    assert float(angles.std()) == pytest.approx(0.2 * math.sqrt(var), rel=0.01)


def test_bsr_official_zero_angle_is_a_block_permutation():
    x = distinct_images(4, 13, 11)
    bsr = BlockShuffleRotation(blocks=3, angle=0.0)
    plan = bsr.plan(4, 13, 11, context(x))
    out = bsr.render(x, plan)
    assert out.shape == x.shape
    for r in range(4):
        ys = [0, *plan.rows_y[r].cumsum(0).tolist()]
        xs = [0, *plan.cols_x[r].cumsum(0).tolist()]
        seen = set()
        oy = 0
        for i in range(3):
            a = int(plan.perm_y[r, i])
            ox = 0
            for j in range(3):
                b = int(plan.perm_x[r, j])
                hb, wb = ys[a + 1] - ys[a], xs[b + 1] - xs[b]
                source = x[r, :, ys[a]:ys[a + 1], xs[b]:xs[b + 1]]
                assert torch.equal(out[r, :, oy:oy + hb, ox:ox + wb], source)
                seen.add((a, b))
                ox += wb
            oy += hb
        assert seen == {(a, b) for a in range(3) for b in range(3)}  # every block exactly once
        assert torch.equal(out[r].flatten().sort().values, x[r].flatten().sort().values)


def rotate_tf(block: torch.Tensor, angle: float, fill: float) -> torch.Tensor:
    """tfa.image.rotate (bilinear, constant fill read for every outside neighbour) via torchvision: the
    rotation conventions agree, and sampling x − fill with zero padding then adding fill is tfa's fill."""
    if block.numel() == 0:
        return block
    return TF.rotate(block - fill, math.degrees(angle), InterpolationMode.BILINEAR, fill=None) + fill


def bsr_official_reference(x1: torch.Tensor, plan, r: int, fill: float) -> torch.Tensor:
    """mi_bsr.py's shuffle_rotate for one image with the plan's lengths, permutations and angles."""
    strips = x1.split(plan.rows_y[r].tolist(), dim=2)
    rows = []
    for i, a in enumerate(plan.perm_y[r].tolist()):
        pieces = strips[a].split(plan.cols_x[r].tolist(), dim=3)
        rows.append(torch.cat([rotate_tf(pieces[b], float(plan.angles[r, i, j]), fill)
                               for j, b in enumerate(plan.perm_x[r].tolist())], dim=3))
    return torch.cat(rows, dim=2)


def test_bsr_official_matches_the_source_shuffle_rotate():
    x = torch.rand(3, 3, 14, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    bsr = BlockShuffleRotation(angle=0.3)
    plan = bsr.plan(3, 14, 12, context(x, seed=4))
    assert plan.angles.abs().min() > 0
    out = bsr.render(x, plan)
    for r in range(3):
        torch.testing.assert_close(out[r:r + 1], bsr_official_reference(x[r:r + 1], plan, r, 0.5))
    # empty strips (the source's U[0,1) weights can round a length to 0) are skipped
    plan.rows_y = split_lengths(torch.tensor([[1e-3, 0.9]] * 3, dtype=torch.float64), 14)
    plan.cols_x = split_lengths(torch.tensor([[0.9, 1e-4]] * 3, dtype=torch.float64), 12)
    assert (plan.rows_y[:, 0] == 0).all() and (plan.cols_x[:, 1] == 0).all()
    out = bsr.render(x, plan)
    for r in range(3):
        torch.testing.assert_close(out[r:r + 1], bsr_official_reference(x[r:r + 1], plan, r, 0.5))
    # one block: a whole-image rotation, and what it brings in is the fill (0.5: the source's 0 in [-1,1])
    one = BlockShuffleRotation(blocks=1, angle=0.3)
    plan = one.plan(1, 14, 12, context(x[:1]))
    plan.angles.fill_(math.pi / 4)
    got = one.render(x[:1], plan)
    torch.testing.assert_close(got, rotate_tf(x[:1], math.pi / 4, 0.5))
    assert torch.equal(got[0, :, 0, 0], torch.full((3,), 0.5, dtype=x.dtype))  # every neighbour outside


def bsr_transferattack_reference(x1: torch.Tensor, plan, r: int) -> torch.Tensor:
    """TransferAttack bsr.py's shuffle for one image with the plan's draws (output strip i holds source strip
    perm[i]; its rotation and its pieces' lengths and order are strip i's)."""
    dims = [2, 3] if bool(plan.rows_first[r]) else [3, 2]
    n = plan.perm_y.shape[1]
    la = split_lengths(plan.rows_y[r:r + 1], x1.size(dims[0]))[0].tolist()
    strips = list(x1.split(la, dim=dims[0]))
    out = []
    for i, a in enumerate(plan.perm_y[r].tolist()):
        strip = TF.rotate(strips[a], math.degrees(float(plan.angles[r, i])), InterpolationMode.BILINEAR,
                          fill=[0.0] * x1.shape[1])  # T.RandomRotation's fill for tensors
        lb = split_lengths(plan.cols_x[r, i].view(1, n), x1.size(dims[1]))[0].tolist()
        pieces = list(strip.split(lb, dim=dims[1]))
        out.append(torch.cat([pieces[b] for b in plan.perm_x[r, i].tolist()], dim=dims[1]))
    return torch.cat(out, dim=dims[0])


def test_bsr_transferattack_matches_the_source_shuffle():
    x = torch.rand(6, 3, 15, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    bsr = BlockShuffleRotation(variant="transferattack")
    plan = bsr.plan(6, 15, 13, context(x, seed=6))
    assert plan.rows_first.any() and not plan.rows_first.all()  # both axis orders exercised
    out = bsr.render(x, plan)
    for r in range(6):
        torch.testing.assert_close(out[r:r + 1], bsr_transferattack_reference(x[r:r + 1], plan, r))
    # zero angle: a pure permutation of pixels (every piece once)
    flat = BlockShuffleRotation(variant="transferattack", angle=0.0)
    xd = distinct_images(6, 15, 13)
    got = flat.render(xd, flat.plan(6, 15, 13, context(xd, seed=6)))
    for r in range(6):
        assert torch.equal(got[r].flatten().sort().values, xd[r].flatten().sort().values)


def test_bsr_expand_copy_major_per_image_and_differentiable():
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    bsr = BlockShuffleRotation(copies=4)
    out, k = bsr.expand(x, context(x.detach(), keys=list("abc")))
    assert k == 4 and out.shape == (12, 3, 12, 12)
    alone, _ = bsr.expand(x[1:2], context(x[1:2].detach(), keys=["b"]))
    assert torch.equal(alone, out[1::3])  # row c·B + b belongs to image b, drawn from its own stream
    out.sum().backward()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


# ---------------------------------------------------------------------------------------------- SIA
def sia_reference_block(block: torch.Tensor, op: str, shift: float, scale: float, keep: torch.Tensor,
                        noise: torch.Tensor, rho: float) -> torch.Tensor:
    """One block through SIT attack.py's operation `op`, with the given draws."""
    _, _, w, h = block.shape  # the source's naming: w is dim 2, h is dim 3
    if op == "resize":
        size = (int(h * 0.8) + 1, int(w * 0.8) + 1)  # (new_h, new_w): the axes' sizes swapped, as there
        y = F.interpolate(block, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(y, size=(w, h), mode="bilinear", align_corners=False).clamp(0, 1)
    if op == "vshift":
        return block.roll(int(shift * w), dims=2)
    if op == "hshift":
        return block.roll(int(shift * h), dims=3)
    if op == "vflip":
        return block.flip(dims=(2,))
    if op == "hflip":
        return block.flip(dims=(3,))
    if op == "rotate180":
        return block.rot90(k=2, dims=(2, 3))
    if op == "scale":
        return scale * block
    if op == "noise":
        return torch.clip(block + (-rho + 2 * rho * noise), 0, 1)
    if op == "dct":
        d = scipy.fft.dctn(block.numpy(), type=2, norm="ortho", axes=(2, 3))
        d[:, :, -int(w * 0.4):, :] = 0  # as the source: a [-0:] slice zeroes everything
        d[:, :, :, -int(h * 0.4):] = 0
        return torch.from_numpy(scipy.fft.idctn(d, type=2, norm="ortho", axes=(2, 3)))
    if op == "dropout":
        return block * keep.view(1, -1, 1, 1) / 0.9
    raise AssertionError(op)


def sia_reference(x: torch.Tensor, sia: StructureInvariance, plan) -> torch.Tensor:
    """SIT's blocktransform for every row with the plan's cuts and per-block draws."""
    out = x.clone()
    n = plan.op.shape[1]
    for r in range(x.shape[0]):
        ey, ex = plan.edges_y[r].tolist(), plan.edges_x[r].tolist()
        for i in range(n):
            for j in range(n):
                sl = (slice(r, r + 1), slice(None), slice(ey[i], ey[i + 1]), slice(ex[j], ex[j + 1]))
                out[sl] = sia_reference_block(
                    x[sl], sia.ops[int(plan.op[r, i, j])], float(plan.shift[r, i, j]),
                    float(plan.scale[r, i, j]), plan.keep[r, i, j].double(), plan.noise[sl],
                    sia.noise / 255)
    return out


@pytest.mark.parametrize("variant", ["official", "transferattack"])
def test_sia_each_operation_matches_the_source(variant):
    sia = StructureInvariance(variant=variant)
    x = torch.rand(4, 3, 16, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    plan = sia.plan(4, 3, 16, 14, context(x, seed=8), dtype=torch.float64)
    edges = torch.cat([plan.edges_y, plan.edges_x], 1)
    assert (plan.edges_y.diff(dim=1) > 0).all() and (plan.edges_x.diff(dim=1) > 0).all(), edges
    for k, op in enumerate(sia.ops):
        plan.op.fill_(k)
        got = sia.render(x, plan)
        assert got.shape == x.shape
        torch.testing.assert_close(got, sia_reference(x, sia, plan), msg=op)
        if op not in ("dct", "dropout"):  # the others keep [0,1] images in [0,1]
            assert got.min() >= 0 and got.max() <= 1, op
    assert variant == "official" or set(sia.ops) == set(OPS["official"]) - {"resize", "dct", "dropout"}


def test_sia_mixed_operations_per_block_and_tiny_blocks():
    sia = StructureInvariance()
    x = torch.rand(12, 3, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    plan = sia.plan(12, 3, 9, 8, context(x, seed=10), dtype=torch.float64)
    assert len(plan.op.unique()) == len(sia.ops)  # every operation somewhere
    torch.testing.assert_close(sia.render(x, plan), sia_reference(x, sia, plan))
    # a DCT block under 3 px along an axis is zeroed (the source's [-0:] slice), as reproduced
    plan.op.fill_(sia.ops.index("dct"))
    plan.edges_y[0] = torch.tensor([0, 2, 5, 9])
    assert torch.equal(sia.render(x, plan)[0, :, :2], torch.zeros(3, 2, 8, dtype=x.dtype))


def test_sia_bilinear_matrix_is_f_interpolate():
    v = torch.rand(2, 1, 7, 1, dtype=torch.float64)
    for n_out in (3, 7, 10):
        want = F.interpolate(v, size=(n_out, 1), mode="bilinear", align_corners=False)[:, 0, :, 0]
        torch.testing.assert_close(v[:, 0, :, 0] @ bilinear_matrix(7, n_out).T, want)


def test_sia_expand_per_image_and_differentiable():
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    sia = StructureInvariance(copies=3)
    out, k = sia.expand(x, context(x.detach(), keys=["a", "b"]))
    assert k == 3 and out.shape == (6, 3, 10, 10)
    alone, _ = sia.expand(x[1:], context(x[1:].detach(), keys=["b"]))
    assert torch.equal(alone, out[1::2])
    out.sum().backward()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


# ---------------------------------------------------------------------------------------------- DI
def geometry(apply, size, top, left, out):
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return Geometry(torch.tensor(apply), t(size), t(size), t(top), t(left), out, out)


def test_di_original_unchanged_or_canvas_holding_the_resized_input():
    x = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    di = InputDiversity(variant="original")
    g = geometry([False, True], [20, 21], [0, 1], [0, 0], 22)  # H' = ⌊1.1·20⌋ = 22
    canvas = di.canvas(x, g)
    assert canvas.shape == (2, 3, 22, 22)
    resized = F.interpolate(x[1:], size=(21, 21), mode="nearest")  # TF NEAREST_NEIGHBOR: src ⌊i·H/h⌋
    assert torch.equal(canvas[1:, :, 1:22, 0:21], resized)
    pad = torch.ones(1, 3, 22, 22, dtype=torch.bool)
    pad[:, :, 1:22, 0:21] = False
    assert (canvas[1:][pad] == 0.5).all()  # the source pads 0 in [-1,1] pixels
    out = di.render(x, g)  # what the model wrapper receives: H×W for every row
    assert out.shape == x.shape and torch.equal(out[0], x[0])
    torch.testing.assert_close(out[1:], resize_like_model(canvas[1:], (20, 20), "bilinear"))

    class Bicubic(torch.nn.Module):
        interpolation = "bicubic"

    bicubic = resize_like_model(canvas[1:], (20, 20), "bicubic")
    torch.testing.assert_close(di.render(x, g, Bicubic())[1:], bicubic)
    # through the hook: rows whose draw says "unchanged" are the input itself
    xs = torch.rand(64, 3, 16, 16, dtype=torch.float64)
    ctx = context(xs)
    g = di.geometry(64, 16, 16, context(xs))
    out = di.transform(xs, ctx)
    assert 0 < int(g.apply.sum()) < 64
    assert torch.equal(out[~g.apply], xs[~g.apply]) and not torch.equal(out[g.apply], xs[g.apply])
    assert ((g.height >= 16) & (g.height < 17) & (g.top == 0)).all()  # H' = 17 at 16 px: h = 16, top 0


def test_di_variants_share_draws_and_size_ranges():
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    apply = {}
    for variant, lo, hi, out in (("original", 32, 35, 35), ("transferattack", 32, 35, 35),
                                 ("torchattacks", 28, 32, 32)):
        g = InputDiversity(variant=variant).geometry(4 * 300, 32, 32, context(x, seed=11))
        assert g.out_h == out and g.height.min() == lo and g.height.max() == hi - 1
        assert (g.top >= 0).all() and (g.top + g.height <= out).all() and (g.left + g.width <= out).all()
        assert abs(g.apply.double().mean().item() - 0.5) < 0.05
        apply[variant] = g.apply
    resample = InputDiversity().draws(4 * 300, 32, 32, context(x, seed=11))[0]
    assert all(torch.equal(a, resample) for a in apply.values())


def test_di_transferattack_matches_dim_py():
    x = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    di = InputDiversity(variant="transferattack")
    g = geometry([True, False], [21, 20], [1, 0], [0, 0], 22)
    out = di.render(x, g)
    rescaled = F.interpolate(x[:1], size=[21, 21], mode="bilinear", align_corners=False)
    padded = F.pad(rescaled, [0, 1, 1, 0], value=0)
    want = F.interpolate(padded, size=[20, 20], mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:1], want)
    assert torch.equal(out[1], x[1])


@pytest.mark.parametrize("rnd,top,left,coin",
                         [(29, 1, 2, 0.1), (28, 0, 3, 0.2), (31, 0, 0, 0.3), (30, 1, 0, 0.9)])
def test_di_torchattacks_matches_difgsm_input_diversity(monkeypatch, rnd, top, left, coin):
    torchattacks = pytest.importorskip("torchattacks")
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    atk = torchattacks.DIFGSM(TinyResNet(), resize_rate=0.9, diversity_prob=0.5)
    forced = iter([rnd, top, left])
    monkeypatch.setattr(torch, "randint", lambda *a, **k: torch.tensor([next(forced)], dtype=torch.int32))
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor([coin]))
    want = atk.input_diversity(x)
    monkeypatch.undo()
    di = InputDiversity(variant="torchattacks")
    got = di.render(x, geometry([coin < 0.5] * 2, [rnd] * 2, [top] * 2, [left] * 2, 32))
    assert got.shape == want.shape == x.shape
    torch.testing.assert_close(got, want)


def test_di_bilinear_rows_of_different_sizes_in_one_batch():
    x = torch.rand(3, 3, 12, 10, dtype=torch.float64)
    di = InputDiversity(variant="torchattacks")
    g = Geometry(torch.tensor([True] * 3), torch.tensor([10, 11, 7]), torch.tensor([9, 8, 6]),
                 torch.tensor([1, 0, 2]), torch.tensor([0, 1, 3]), 12, 10)
    out = di.render(x, g)
    for r in range(3):
        h, w, t, lft = (int(v[r]) for v in (g.height, g.width, g.top, g.left))
        hand = F.pad(F.interpolate(x[r:r + 1], size=(h, w), mode="bilinear", align_corners=False),
                     (lft, 10 - w - lft, t, 12 - h - t))
        torch.testing.assert_close(out[r:r + 1], hand)


# ---------------------------------------------------------------------------------------------- TI
@pytest.mark.parametrize("size", [15, 7, 3])
def test_ti_kernel_is_every_sources_sampled_pdf_gkern(size):
    """gkern of the TI, VT, TransferAttack and torchattacks code: st.norm.pdf on linspace(-3, 3, k)."""
    k1 = st.norm.pdf(np.linspace(-3, 3, size))
    kern = np.outer(k1, k1)
    torch.testing.assert_close(gaussian_kernel(size, 3.0, torch.float64), torch.from_numpy(kern / kern.sum()))
