"""Each component's defining step against a hand computation (tiny float64 models, small images)."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_attack_battery import Block, TinyResNet, single_thread, tiny_batch  # noqa: E402, F401 (autouse)

from transferlab.attacks.base import Attack, AttackContext  # noqa: E402
from transferlab.attacks.input_diversity import InputDiversity  # noqa: E402
from transferlab.attacks.interaction_reduction import InteractionReduction  # noqa: E402
from transferlab.attacks.momentum import Momentum, Nesterov  # noqa: E402
from transferlab.attacks.registry import build_attack, make_component  # noqa: E402
from transferlab.attacks.skip_gradient import SkipGradient, residual_entries  # noqa: E402
from transferlab.attacks.translation_invariance import (  # noqa: E402
    TranslationInvariance,
    default_kernel_size,
    gaussian_kernel,
)
from transferlab.attacks.variance_reduction import VarianceReduction  # noqa: E402
from transferlab.attacks.variance_tuning import VarianceTuning  # noqa: E402
from transferlab.errors import ConfigError  # noqa: E402
from transferlab.rng import ImageStreams  # noqa: E402

EPS, ALPHA = 8 / 255, 2 / 255


def context(model, x, y, keys=None, seed=0, norm="linf", eps=EPS, alpha=ALPHA, steps=3) -> AttackContext:
    keys = list(range(x.shape[0])) if keys is None else keys
    return AttackContext(model, x, y, eps, alpha, norm, steps, ImageStreams.for_keys(seed, keys))


def ce_grad(model, points, y):
    """Per-image gradient of the cross-entropy (summed over the batch, so each row is its own gradient)."""
    p = points.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(p), y, reduction="none").sum(), p)
    return g


def project(x, delta, eps=EPS):
    return (x + delta.clamp(-eps, eps)).clamp(0, 1) - x


def mean_abs(t):
    return t.abs().flatten(1).mean(1).view(-1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------- MI / NI
def test_mi_momentum_update_by_hand():
    model, (x, y) = TinyResNet(), tiny_batch(3)
    ctx = context(model, x, y)
    mi = Momentum(mu=0.7)
    mi.setup(ctx)
    g1, g2 = torch.randn_like(x), torch.randn_like(x)
    out1 = mi.process(g1, ctx)
    out2 = mi.process(g2, ctx)
    torch.testing.assert_close(out1, g1 / mean_abs(g1))
    torch.testing.assert_close(out2, 0.7 * g1 / mean_abs(g1) + g2 / mean_abs(g2))
    # per image: scaling one image's gradient changes nothing (L1 normalisation is per image)
    mi.teardown(ctx)
    mi.setup(ctx)
    g1s = g1.clone()
    g1s[1] *= 1000
    torch.testing.assert_close(mi.process(g1s, ctx), out1)
    assert torch.equal(mi.process(torch.zeros_like(x), ctx)[0], 0.7 * out1[0])  # zero gradient stays finite


def test_mi_attack_equals_hand_loop():
    model, (x, y) = TinyResNet(), tiny_batch(3)
    adv = build_attack("mi", eps=EPS, alpha=ALPHA, steps=4).run(model, x, y)
    delta, g = torch.zeros_like(x), torch.zeros_like(x)
    for _ in range(4):
        grad = ce_grad(model, x + delta, y)
        g = 1.0 * g + grad / mean_abs(grad)
        delta = project(x, delta + ALPHA * g.sign())
    torch.testing.assert_close(adv, x + delta, atol=1e-12, rtol=0)


def test_ni_lookahead_point():
    model, (x, y) = TinyResNet(), tiny_batch(2)
    ni = Nesterov(mu=0.9)
    ctx = context(model, x, y)
    ni.setup(ctx)
    assert torch.equal(ni.lookahead(x, ctx), x)  # no momentum yet
    g = ni.process(torch.randn_like(x), ctx)
    torch.testing.assert_close(ni.lookahead(x, ctx), x + ALPHA * 0.9 * g)
    ctx2 = context(model, x, y, norm="l2", alpha=0.3)
    ni2 = Nesterov(mu=0.9)
    ni2.setup(ctx2)
    g = ni2.process(torch.randn_like(x), ctx2)
    torch.testing.assert_close(ni2.lookahead(x, ctx2), x + 0.3 * 0.9 * g / math.sqrt(x[0].numel()))


def test_ni_attack_equals_hand_loop():
    model, (x, y) = TinyResNet(), tiny_batch(3)
    adv = build_attack("ni", eps=EPS, alpha=ALPHA, steps=4).run(model, x, y)
    delta, g = torch.zeros_like(x), torch.zeros_like(x)
    for _ in range(4):
        grad = ce_grad(model, x + delta + ALPHA * g, y)
        g = g + grad / mean_abs(grad)
        delta = project(x, delta + ALPHA * g.sign())
    torch.testing.assert_close(adv, x + delta, atol=1e-12, rtol=0)


def test_two_momentum_components_rejected():
    model, (x, y) = TinyResNet(), tiny_batch(1)
    with pytest.raises(ConfigError, match="momentum"):
        build_attack("mi+ni", eps=EPS, alpha=ALPHA, steps=1).run(model, x, y)


# ---------------------------------------------------------------------------------------------- VMI
class Recorder:
    """Wraps attack.loss_gradient to record the points the neighbours are evaluated at."""

    def __init__(self, attack: Attack):
        self.attack, self.calls = attack, []

    def loss_gradient(self, points, y, ctx, regularise=True):
        self.calls.append((points.detach().clone(), y.clone(), regularise))
        return self.attack.loss_gradient(points, y, ctx, regularise)


def test_vmi_uses_previous_variance_and_samples_the_box():
    model, (x, y) = TinyResNet(), tiny_batch(3)
    attack = build_attack("vmi", eps=EPS, alpha=ALPHA, steps=2)  # mi + vt
    vmi = next(c for c in attack.components if isinstance(c, VarianceTuning))
    ctx = context(model, x, y)
    vmi.setup(ctx)
    rec = Recorder(attack)
    x0 = x.clone()
    ctx.x_adv = x0
    grad0 = ce_grad(model, x0, y)
    out0 = vmi.refine(grad0, x0, rec, ctx)
    assert torch.equal(out0, grad0)  # v_0 = 0
    ((points, yy, regularise),) = rec.calls
    n, b = vmi.neighbours, x.shape[0]
    assert points.shape == (n * b, *x.shape[1:]) and not regularise
    assert torch.equal(yy, y.repeat(n))
    offsets = points.view(n, b, *x.shape[1:]) - x0  # copy-major: row k·B + b belongs to image b
    assert offsets.abs().max() <= 1.5 * EPS + 1e-12
    assert offsets.abs().max() > 0.99 * 1.5 * EPS  # fills the box (3·16·16·20 uniform draws)
    assert abs(offsets.mean().item()) < 0.01 * EPS
    v1 = ce_grad(model, points, y.repeat(n)).view(n, *x.shape).mean(0) - grad0
    # next step: gradient + the variance of the previous step
    x1 = (x0 + ALPHA * grad0.sign()).clamp(0, 1)
    ctx.x_adv = x1
    grad1 = ce_grad(model, x1, y)
    out1 = vmi.refine(grad1, x1, rec, ctx)
    torch.testing.assert_close(out1, grad1 + v1)


def test_vni_neighbours_around_the_adversarial_image_not_the_lookahead():
    model, (x, y) = TinyResNet(), tiny_batch(2)
    attack = build_attack("vni", eps=EPS, alpha=ALPHA, steps=3)
    seen, images = [], {}
    original = attack.loss_gradient

    def spy(points, yy, ctx, regularise=True):
        seen.append((ctx.step, points.detach().clone(), regularise))
        return original(points, yy, ctx, regularise)

    attack.loss_gradient = spy
    attack.run(model, x, y, on_step=lambda t, adv, index: images.__setitem__(t, adv))
    # step 1 (the second): main gradient at the look-ahead point, neighbours around x + δ_1
    (main,) = [p for t, p, r in seen if t == 1 and r]
    (neigh,) = [p for t, p, r in seen if t == 1 and not r]
    offsets = neigh.view(20, 2, *x.shape[1:]) - images[1]
    assert offsets.abs().max() <= 1.5 * EPS + 1e-12
    assert (main - images[1]).abs().max() > 0.5 * ALPHA  # the look-ahead point is elsewhere


def test_vmi_attack_equals_hand_loop():
    model, (x, y) = TinyResNet(), tiny_batch(2)
    keys, seed, n, beta = ["a", "b"], 3, 5, 1.5
    params = {"vt": {"neighbours": n, "beta": beta}}
    adv = build_attack("vmi", params, eps=EPS, alpha=ALPHA, steps=3, seed=seed).run(model, x, y, keys=keys)
    streams = ImageStreams.for_keys(seed, keys)
    delta, g, v = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
    for _ in range(3):
        grad = ce_grad(model, x + delta, y)
        use = grad + v
        g = g + use / mean_abs(use)
        u = (streams.rand(n, *x.shape[1:], dtype=x.dtype) * 2 - 1) * beta * EPS  # (B, N, C, H, W)
        nb = (x + delta)[:, None] + u
        v = ce_grad(model, nb.flatten(0, 1), y.repeat_interleave(n)).view(2, n, *x.shape[1:]).mean(1) - grad
        delta = project(x, delta + ALPHA * g.sign())
    torch.testing.assert_close(adv, x + delta, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------- VR
def test_vr_copies_and_mean_gradient():
    model, (x, y) = TinyResNet(), tiny_batch(2)
    keys, m = ["p", "q"], 64
    vr = VarianceReduction(copies=m)
    ctx = context(model, x, y, keys=keys)
    copies, k = vr.expand(x, ctx)
    assert k == m and copies.shape == (m * 2, *x.shape[1:])
    noise = copies.view(m, 2, *x.shape[1:]) - x  # copy-major
    assert abs(noise.std().item() - 15 / 255) < 0.03 * 15 / 255
    assert abs(noise.mean().item()) < 0.03 * 15 / 255
    # the gradient is the mean of the copies' gradients (same per-image noise, replayed)
    attack = Attack([VarianceReduction(copies=8)], eps=EPS, alpha=ALPHA, steps=1)
    ctx = context(model, x, y, keys=keys, seed=5)
    got = attack.loss_gradient(x, y, ctx)
    replay = ImageStreams.for_keys(5, keys).randn(8, *x.shape[1:], dtype=x.dtype)  # (B, 8, ...)
    pts = (x[:, None] + 15 / 255 * replay).flatten(0, 1)
    want = ce_grad(model, pts, y.repeat_interleave(8)).view(2, 8, *x.shape[1:]).mean(1)
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------------------- DI
def test_di_size_probability_and_hand_resize_pad():
    """The 'resample' variant (the former default): every row on the ⌊1.1·H⌋ canvas."""
    model, (x, y) = TinyResNet(), tiny_batch(4)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    di = InputDiversity(variant="resample")
    ctx = context(model, x, y)
    rows = 4 * 500
    apply, height, width, top, left = di.draws(rows, 32, 32, context(model, x, y, seed=1))
    assert abs(apply.double().mean().item() - 0.5) < 0.04
    assert height[apply].min() == 32 and height[apply].max() == 34 and torch.equal(height, width)
    assert (height[~apply] == 35).all() and (top[~apply] == 0).all()
    assert (top[apply] >= 0).all() and (top[apply] + height[apply] <= 35).all()
    out = di.transform(x, ctx)
    assert out.shape == (4, 3, 35, 35)  # ⌊32·1.1⌋
    apply, height, width, top, left = di.draws(4, 32, 32, context(model, x, y))
    for b in range(4):
        h, t, lft = int(height[b]), int(top[b]), int(left[b])
        hand = F.interpolate(x[b : b + 1], size=(h, h), mode="nearest")
        hand = F.pad(hand, (lft, 35 - h - lft, t, 35 - h - t))
        assert torch.equal(out[b : b + 1], hand)


def test_di_per_image_independent_and_differentiable():
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(4, dtype=torch.long)
    di = InputDiversity(p=0.5)
    batch = di.transform(x, context(None, x, y, keys=list("abcd")))
    for b, key in enumerate("abcd"):
        alone = di.transform(x[b : b + 1], context(None, x[b : b + 1], y[:1], keys=[key]))
        assert torch.equal(alone[0], batch[b])
    batch.sum().backward()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


# ---------------------------------------------------------------------------------------------- TI
def test_ti_equals_hand_convolution():
    g = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    k, nsig = 5, 3.0
    ti = TranslationInvariance(kernel_size=k, nsig=nsig)
    ctx = context(None, g, torch.zeros(2, dtype=torch.long))
    ti.setup(ctx)
    got = ti.process(g, ctx)
    t = [-nsig + 2 * nsig * i / (k - 1) for i in range(k)]
    k1 = [math.exp(-0.5 * v * v) for v in t]
    kern = torch.tensor([[a * b for b in k1] for a in k1], dtype=torch.float64)
    kern /= kern.sum()
    torch.testing.assert_close(gaussian_kernel(k, nsig, torch.float64), kern)
    padded = F.pad(g, (2, 2, 2, 2))
    want = torch.zeros_like(g)
    for a in range(k):
        for b in range(k):
            want += kern[a, b] * padded[:, :, a : a + 12, b : b + 12]
    torch.testing.assert_close(got, want)
    assert default_kernel_size(224) == 15 and default_kernel_size(32) == 5 and default_kernel_size(299) == 17
    assert TranslationInvariance().size_for(16) >= 3
    with pytest.raises(ConfigError):
        TranslationInvariance(kernel_size=4)


# ---------------------------------------------------------------------------------------------- SGM
class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = Block(3)
        self.head = nn.Linear(3, 4)
        self.double().eval().requires_grad_(False)

    def forward(self, x):
        return self.head(self.block(x).mean((2, 3)))


def test_sgm_toy_block_hand_gradient_and_hook_removal():
    net = ToyNet()
    x, y = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.tensor([1, 2])
    gamma = 0.3
    # hand: separate leaves for the branch input and the skip input
    xb, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    blk = net.block
    out = torch.relu(blk.conv2(torch.relu(blk.conv1(xb))) + blk.shortcut(xs))
    loss = F.cross_entropy(net.head(out.mean((2, 3))), y, reduction="none").sum()
    gb, gs = torch.autograd.grad(loss, [xb, xs])
    attack = Attack([SkipGradient(gamma=gamma)], eps=EPS, alpha=ALPHA, steps=2)
    ctx = context(net, x, y)
    attack.components[0].setup(ctx)
    assert ctx.state["sgm:blocks"] == ["block"]
    hooked = attack.loss_gradient(x, y, ctx)
    attack.components[0].teardown(ctx)
    torch.testing.assert_close(hooked, gs + gamma * gb)
    torch.testing.assert_close(ce_grad(net, x, y), gs + gb)  # teardown restores the plain gradient
    attack.run(net, x, y)
    assert not blk.conv1._backward_hooks and not any(m._backward_hooks for m in net.modules())

    class Failing(ToyNet):  # hooks are removed also when the attack fails midway
        def forward(self, x):
            if self.block.conv1._backward_hooks:
                raise RuntimeError("boom")
            return super().forward(x)

    failing = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        attack.run(failing, x, y)
    assert not any(m._backward_hooks for m in failing.modules())


def test_sgm_rejects_models_without_residual_blocks():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3)).double()
    x, y = torch.rand(1, 3, 8, 8, dtype=torch.float64), torch.tensor([0])
    plain(x)
    with pytest.raises(ValueError, match="Sequential"):
        build_attack("sgm", eps=EPS, alpha=ALPHA, steps=1).run(plain, x, y)
    try:
        from transferlab.archs.cifar_shufflenet import cifar_shufflenetv2
    except ImportError:
        return
    with pytest.raises(ValueError, match="ShuffleNet"):
        build_attack("sgm", eps=EPS, alpha=ALPHA, steps=1).run(
            cifar_shufflenetv2().eval(), torch.rand(1, 3, 32, 32), torch.tensor([0])
        )


@pytest.mark.parametrize(
    "arch,blocks",
    [("resnet18", 5), ("tf_efficientnet_lite0", 9), ("cifar_resnet20_A", 7), ("cifar_resnet20_B", 7)],
)
def test_sgm_real_architectures(arch, blocks):
    import warnings

    if arch.startswith("cifar"):
        arch_mod = pytest.importorskip("transferlab.archs.cifar_resnet")
        model, size = arch_mod.cifar_resnet(20, arch[-1]), 32
    else:
        timm = pytest.importorskip("timm")
        kw = {"zero_init_last": False} if arch.startswith("resnet") else {}  # else the branches start at 0
        model, size = timm.create_model(arch, pretrained=False, **kw), 32
    model.eval()
    assert len(residual_entries(model)) == blocks
    x, y = torch.rand(2, 3, size, size), torch.tensor([1, 2])
    plain = ce_grad(model, x, y)
    attack = build_attack("sgm", eps=EPS, alpha=ALPHA, steps=1)
    ctx = context(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full backward hooks warn/raise on in-place misuse
        attack.components[0].setup(ctx)
        try:
            hooked = attack.loss_gradient(x, y, ctx)
        finally:
            attack.components[0].teardown(ctx)
        attack.run(model, x, y)
    assert (hooked - plain).abs().max() > 1e-3 * plain.abs().max()
    torch.testing.assert_close(ce_grad(model, x, y), plain)
    assert not any(m._backward_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------- IR
def margin_other(logits, y, other):
    return logits.gather(1, other[:, None])[:, 0] - logits.gather(1, y[:, None])[:, 0]


def cell_masks(size, grid, dtype=torch.float64):
    rows = torch.arange(size) * grid // size
    cells = rows[:, None] * grid + rows[None, :]
    return (cells[None] == torch.arange(grid * grid)[:, None, None]).to(dtype)  # (n, H, W)


def exact_pairwise(model, x, y, delta, grid):
    """E_{i≠j} I_ij by the identity 1/(n−1)·E_i[v(N) − v(N∖i) − v(i) + v(∅)], computed directly."""
    masks = cell_masks(x.shape[-1], grid)[:, None]  # (n, 1, H, W)
    n = masks.shape[0]
    out = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            full = model((x[b] + delta[b])[None])
            other = full.clone()
            other[0, y[b]] = -math.inf
            o = other.argmax(1)
            ins = torch.cat([x[b] + delta[b] * (1 - masks), x[b] + delta[b] * masks, x[b : b + 1]])
            s = margin_other(model(ins), y[b].repeat(2 * n + 1), o.repeat(2 * n + 1))
            vn = margin_other(full, y[b : b + 1], o)
            out.append(((vn - s[:n] - s[n : 2 * n] + s[-1]).mean() / (n - 1)).item())
    return torch.tensor(out, dtype=torch.float64)


def ir_context(model, x, y, ir, keys=None, seed=0):
    ctx = context(model, x, y, keys=keys, seed=seed)
    ir.setup(ctx)
    return ctx


@pytest.mark.parametrize("variant", ["official", "pairwise"])
def test_ir_every_image_gets_its_own_interaction_gradient(variant):
    model, (x, y) = TinyResNet(), tiny_batch(4)
    ir = InteractionReduction(variant=variant, grid=4, cells=4, masks=6, players=5)
    ctx = ir_context(model, x, y, ir)
    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype) * 2 - 1) * EPS
    point = ((x + delta).clamp(0, 1)).requires_grad_(True)
    value = ir.interaction(point, ctx)
    assert value.shape == (4,)
    jac = torch.stack([torch.autograd.grad(value[b], point, retain_graph=True)[0] for b in range(4)])
    norms = jac.flatten(2).abs().sum(-1)  # norms[b, b'] = |∂Î_b/∂point_b'|
    assert (norms.diagonal() > 0).all(), "an image gets no interaction gradient"
    assert torch.equal(norms - torch.diag(norms.diagonal()), torch.zeros_like(norms)), "cross-image leakage"
    # the regulariser is −λ·Î, and each image's value is the same alone (logits gathered per image)
    reg = ir.regulariser(point, None, ir_context(model, x, y, ir))  # fresh streams: the same masks
    ir.lam = 2.5
    torch.testing.assert_close(ir.regulariser(point, None, ir_context(model, x, y, ir)), 2.5 * reg)
    torch.testing.assert_close(reg, -value)
    ctx2 = ir_context(model, x, y, ir)
    v_batch = ir.interaction(point.detach(), ctx2)
    for b in range(4):
        ctx_b = ir_context(model, x[b : b + 1], y[b : b + 1], ir, keys=[b])
        torch.testing.assert_close(ir.interaction(point[b : b + 1].detach(), ctx_b)[0], v_batch[b])


def test_ir_official_matches_hand_formula_and_control_uses_the_same_masks():
    model, (x, y) = TinyResNet(), tiny_batch(3)
    ir = InteractionReduction(variant="official", grid=4, cells=3, masks=5)
    ctx = ir_context(model, x, y, ir, seed=9)
    point = (
        x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    ).clamp(0, 1)
    got = ir.interaction(point, ctx)
    # replay the draws: 5 masks of 3 cells (with replacement) per image
    idx = ImageStreams.for_keys(9, [0, 1, 2]).randint(16, 1, 5, 3)[:, 0]  # (B, K, m)
    cells = cell_masks(16, 4)
    with torch.no_grad():
        full = model(point)
        z0 = model(x)
        masked_other = full.clone().scatter(1, y[:, None], -math.inf)
        o = masked_other.argmax(1)
        want = []
        for b in range(3):
            vals = []
            for k in range(5):
                m = cells[idx[b, k]].amax(0)  # union of the drawn cells
                d = point[b] - x[b]
                zs = model(torch.stack([x[b] + d * (1 - m), x[b] + d * m]))
                s = margin_other(zs, y[b].repeat(2), o[b].repeat(2))
                s_full = margin_other(full[b : b + 1], y[b : b + 1], o[b : b + 1])
                s_clean = margin_other(z0[b : b + 1], y[b : b + 1], o[b : b + 1])
                vals.append(s_full - s[0] - s[1] + s_clean)
            want.append(torch.cat(vals).mean())
    torch.testing.assert_close(got, torch.stack(want))
    # the control variant: +λ·mean CE over the same masked inputs
    ctrl = InteractionReduction(variant="control", grid=4, cells=3, masks=5, lam=0.5)
    ctx = ir_context(model, x, y, ctrl, seed=9)
    reg = ctrl.regulariser(point, None, ctx)
    with torch.no_grad():
        want = []
        for b in range(3):
            d = point[b] - x[b]
            ms = torch.stack([cells[idx[b, k]].amax(0) for k in range(5)])[:, None]
            ins = torch.cat([x[b] + d * (1 - ms), x[b] + d * ms])
            want.append(F.cross_entropy(model(ins), y[b].repeat(10)))
    torch.testing.assert_close(reg, 0.5 * torch.stack(want))


def test_ir_pairwise_equals_brute_force_shapley_interaction():
    """All 2^9 coalitions of a 3×3 grid: E_{i≠j} I_ij with the Shapley interaction weights."""
    model, (x, y) = TinyResNet(), tiny_batch(2)
    x, y = x[:, :, :15, :15].contiguous(), y  # 15 px: 5-px cells
    point = (
        x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    ).clamp(0, 1)
    ir = InteractionReduction(variant="pairwise", grid=3)
    ctx = ir_context(model, x, y, ir)
    got = ir.interaction(point, ctx)
    n = 9
    cells = cell_masks(15, 3)
    coalitions = list(itertools.product([0, 1], repeat=n))
    index = {c: i for i, c in enumerate(coalitions)}
    coal = torch.tensor(coalitions, dtype=torch.float64)
    pix = (coal @ cells.flatten(1)).view(-1, 1, 15, 15)
    want = []
    with torch.no_grad():
        for b in range(2):
            full = model(point[b : b + 1])
            o = full.clone().scatter(1, y[b : b + 1, None], -math.inf).argmax(1)
            v = margin_other(
                model(x[b] + (point[b] - x[b]) * pix), y[b].repeat(len(coalitions)), o.repeat(len(pix))
            )
            total, pairs = 0.0, 0
            for i, j in itertools.permutations(range(n), 2):
                acc = 0.0
                rest = [p for p in range(n) if p not in (i, j)]
                for r in range(n - 1):
                    w = math.factorial(r) * math.factorial(n - r - 2) / math.factorial(n - 1)
                    for s in itertools.combinations(rest, r):
                        key = [0] * n
                        for p in s:
                            key[p] = 1
                        base = tuple(key)
                        ki, kj, kij = list(key), list(key), list(key)
                        ki[i] = kj[j] = kij[i] = kij[j] = 1
                        acc += w * (
                            v[index[tuple(kij)]] - v[index[tuple(ki)]] - v[index[tuple(kj)]] + v[index[base]]
                        )
                total, pairs = total + acc, pairs + 1
            want.append(total / pairs)
    torch.testing.assert_close(got, torch.stack(want).to(got.dtype), atol=1e-10, rtol=1e-8)
    # and the direct 2n+2 identity used below agrees
    torch.testing.assert_close(exact_pairwise(model, x, y, point - x, 3), got.detach(), atol=1e-10, rtol=1e-8)


def test_ir_reduces_interaction():
    model, (x, y) = TinyResNet(), tiny_batch(4)
    common = dict(eps=EPS, alpha=EPS / 5, steps=10, seed=0)
    pgd = build_attack("pgd", **common).run(model, x, y)
    ir = build_attack("ir", {"ir": {"variant": "pairwise", "grid": 4, "lam": 100.0}}, **common).run(
        model, x, y
    )
    before = exact_pairwise(model, x, y, pgd - x, 4)
    after = exact_pairwise(model, x, y, ir - x, 4)
    assert (after < before).all(), (before, after)  # measured: PGD ~ +1e-6 .. -1e-6, IR ~ -2e-5


class CountingModel(nn.Module):
    def __init__(self, model, clean):
        super().__init__()
        self.model, self.clean = model, clean
        self.calls, self.clean_rows = [], 0

    def forward(self, inputs):
        self.calls.append(inputs.shape[0])
        if inputs.shape[-2:] == self.clean.shape[-2:]:
            same = (inputs[:, None] == self.clean[None]).flatten(2).all(-1)
            self.clean_rows += int(same.sum())
        return self.model(inputs)


def test_ir_official_cost_and_clean_scores_once():
    model, (x, y) = TinyResNet(), tiny_batch(3)
    k, steps = 4, 3
    counting = CountingModel(model, x)
    attack = build_attack("ir", {"ir": {"masks": k}}, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)
    attack.run(counting, x, y)
    assert attack.components[0].extra_forwards() == 2 * k + 1
    assert attack.passes_per_step() == 1 + 2 * k + 1 and attack.inputs_per_image() == 2 * k + 1
    assert attack.forwards_per_step() == pytest.approx(2 * k + 1 + 1 / steps)  # + the one-off clean forward
    assert (
        counting.calls == ([1] + [1, 2 * k] * steps) * 3
    )  # clean, then per step: data term + one masked batch
    assert counting.clean_rows == 3  # s(x) is computed once, not per step
    # with a transform the data term's logits are not at the point: the full input joins the masked batch
    counting = CountingModel(model, x)
    attack = build_attack("di+ir", {"ir": {"masks": k}}, eps=EPS, alpha=ALPHA, steps=steps)
    attack.run(counting, x, y)
    assert counting.calls == ([1] + [1, 2 * k + 1] * steps) * 3  # one image per micro-batch
    pairwise = make_component("ir", {"variant": "pairwise", "grid": 4})
    assert pairwise.extra_forwards() == 2 * 16 + 1
    assert make_component("ir", {"variant": "pairwise", "players": 5}).extra_forwards() == 11
    assert not build_attack("mi+ir", eps=EPS, alpha=ALPHA, steps=1).random_start


def test_ir_defaults_follow_the_image_size():
    ir = InteractionReduction()
    assert (ir.grid_for(224), ir.cells_per_mask(16)) == (16, 32)
    assert (ir.grid_for(32), ir.cells_per_mask(8)) == (8, 16)
    with pytest.raises(ConfigError):
        InteractionReduction(variant="nope")
