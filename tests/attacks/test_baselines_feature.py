"""Feature-level baselines: LinBP (`linbp`), ILA (`ila`), FIA (`fia`), NAA (`naa`).

The shared battery for each (the tiny model's layers: stem, block, head), then each defining step against a
hand computation on small float64 models: LinBP's input gradient against the model with those ReLUs written
as identity-backward (and the official per-unit renormalisation), on functional (TinyResNet) and module
(CIFAR ResNet) ReLUs; ILA's objective against the projection; FIA's Δ against the mean over the dropped
copies, masks redrawn from the images' streams; NAA's weights against the path gradients and its
attribution sum against the integrated-gradient completeness on an affine layer. Then hooks and the mode
removed (also on error), per-family layer defaults, and the taps error for an unknown layer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transferlab.archs.cifar_resnet import cifar_resnet
from transferlab.attacks.base import AttackContext
from transferlab.attacks.intermediate_level import default_feature_layer, default_middle_block, model_stages
from transferlab.attacks.registry import build_attack
from transferlab.errors import ConfigError
from transferlab.rng import ImageStreams
from transferlab.testing import TinyResNet, check_attack, tiny_batch

EPS, ALPHA = 8 / 255, 2 / 255
KEYS = ["a", "b", "c"]


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: one torch thread


def prepared(method: str, params: dict, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
             steps: int = 3):
    """(attack, ctx, close): the loop's state before the first step — taps registered, every setup run."""
    attack = build_attack(method, params, eps=EPS, alpha=ALPHA, steps=steps, seed=seed)
    ctx = AttackContext(model, x, y, EPS, ALPHA, "linf", steps, ImageStreams.for_keys(seed, KEYS[: len(x)]),
                        attack=attack)
    taps = attack._tap(ctx)
    for c in attack.components:
        ctx.caller = c.name
        c.setup(ctx)
    ctx.caller = None

    def close() -> None:
        for c in reversed(attack.components):
            c.teardown(ctx)
        for handle in taps:
            handle.remove()

    return attack, ctx, close


def input_grad(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(fn(x), x)
    return g


def lin_relu(u: torch.Tensor) -> torch.Tensor:
    """The official `linbp_relu`: relu(u) forward, identity backward."""
    return u + F.relu(-u).detach()


def per_image(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


# ------------------------------------------------------------------------------------------ battery
BATTERY = [
    ("linbp", {"linbp": {"layer": "block"}}, ("linf", "l2")),
    ("mi+linbp", {"linbp": {"layer": "block", "renorm": False}}, ("linf",)),
    ("ila", {"ila": {"layer": "block"}}, ("linf", "l2")),
    ("mi+ila", {"ila": {"layer": "stem", "baseline": "mi", "baseline_steps": 2}}, ("linf",)),
    ("fia", {"fia": {"layer": "block", "copies": 6}}, ("linf",)),
    ("mi+fia", {"fia": {"layer": "block"}}, ("linf", "l2")),
    ("mi+fia", {"fia": {"layer": "stem", "variant": "ports"}}, ("linf",)),
    ("naa", {"naa": {"layer": "block", "copies": 6}}, ("linf",)),
    ("mi+naa", {"naa": {"layer": "block"}}, ("linf", "l2")),
    ("mi+naa", {"naa": {"layer": "block", "variant": "ports", "gamma": 0.5}}, ("linf",)),
]


@pytest.mark.parametrize("method,params,norms", BATTERY, ids=[f"{b[0]}-{i}" for i, b in enumerate(BATTERY)])
def test_battery(method: str, params: dict, norms: tuple[str, ...]) -> None:
    for norm in norms:
        check_attack(method, norm, params)


def test_compositions_pass_the_battery() -> None:
    """LinBP inside ILA's baseline (the official linbp_ila) and LinBP with SGM."""
    check_attack("ila", params={"ila": {"layer": "block", "baseline": "linbp", "baseline_steps": 2,
                                        "baseline_params": {"linbp": {"layer": "block"}}}})
    check_attack("sgm+linbp", params={"linbp": {"layer": "block"}})


@pytest.mark.parametrize("method,setup", [("linbp", 0), ("ila", 12), ("fia", 30), ("naa", 31)])
def test_declared_setup_forwards(method: str, setup: int) -> None:
    attack = build_attack(method, {method: {"layer": "block"}}, eps=EPS, alpha=ALPHA, steps=3)
    x, y = tiny_batch(2)
    attack.run(TinyResNet(), x, y)
    assert attack.declared_forwards(2) == 2 * (3 + setup)
    assert attack.forwards_total == attack.declared_forwards(2)


# ------------------------------------------------------------------------------------------ LinBP
def tiny_linbp_loss(model: TinyResNet, y: torch.Tensor, renorm: bool, scale: float = 1.0):
    """CE of TinyResNet with LinBP from `block` by hand: conv1's ReLU identity-backward, the ReLU after the
    addition true; with renorm, the official `linbp_backw_resnet50` rescaling of the branch gradient."""
    blk = model.block

    def head(z):
        return F.cross_entropy(model.head(torch.relu(z).mean((2, 3))) * 4, y, reduction="sum")

    if not renorm:
        def loss(x):
            h = torch.relu(model.stem(x))
            return head(blk.conv2(lin_relu(blk.conv1(h))) + h)

        return loss

    def grad(x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            h = torch.relu(model.stem(x))
            branch_lin = blk.conv2(lin_relu(blk.conv1(h)))
            branch_true = blk.conv2(torch.relu(blk.conv1(h)))
            z = (branch_lin + h).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(head(z), z)  # through the true final ReLU
            (main,) = torch.autograd.grad(branch_lin, h, g, retain_graph=True)
            (normal,) = torch.autograd.grad(branch_true, h, g, retain_graph=True)
            g_h = g + scale * per_image(normal) / per_image(main) * main
            (gx,) = torch.autograd.grad(h, x, g_h)
        return gx

    return grad


@pytest.mark.parametrize("renorm,scale", [(False, 1.0), (True, 1.0), (True, 0.5)])
def test_linbp_gradient_equals_the_hand_linearised_model(renorm: bool, scale: float) -> None:
    model = TinyResNet()
    x, y = tiny_batch(3)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    point = (x + 0.02 * noise).clamp(0, 1)
    params = {"linbp": {"layer": "block", "renorm": renorm, "sgm_lambda": scale}}
    attack, ctx, close = prepared("linbp", params, model, x, y)
    try:
        got = attack.loss_gradient(point, y, ctx)
    finally:
        close()
    hand = tiny_linbp_loss(model, y, renorm, scale)
    want = hand(point) if renorm else input_grad(hand, point)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    plain = input_grad(lambda p: F.cross_entropy(model(p), y, reduction="sum"), point)
    assert (got - plain).abs().max() > 1e-3 * plain.abs().max()  # LinBP changed the gradient
    after = build_attack("pgd", eps=EPS, alpha=ALPHA, steps=1)  # hooks gone: the plain gradient again
    ctx2 = AttackContext(model, x, y, EPS, ALPHA, "linf", 1, ImageStreams.for_keys(0, KEYS), attack=after)
    torch.testing.assert_close(after.loss_gradient(point, y, ctx2), plain, rtol=1e-12, atol=1e-15)


def cifar_forward(net, x: torch.Tensor, linear: set[str]) -> torch.Tensor:
    """CifarResNet's forward by hand, relu1 of the blocks in `linear` identity-backward."""
    out = net.relu(net.bn1(net.conv1(x)))
    for stage in ("layer1", "layer2", "layer3"):
        for j, block in enumerate(getattr(net, stage)):
            act = lin_relu if f"{stage}.{j}" in linear else torch.relu
            branch = block.bn2(block.conv2(act(block.bn1(block.conv1(out)))))
            out = torch.relu(branch + block.shortcut(out))  # option A
    return net.linear(torch.flatten(net.pool(out), 1))


def test_linbp_module_relus_default_position_and_final_relu_kept() -> None:
    """CIFAR ResNet-8 (nn.ReLU modules, option-A zero-pad shortcuts): the default position is the middle
    block layer2.0; relu1 of layer2.0 and layer3.0 become identity-backward, every relu2 stays true."""
    torch.manual_seed(0)
    net = cifar_resnet(8).double().eval().requires_grad_(False)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([1, 4])
    assert default_middle_block(net, "linbp") == "layer2.0"
    attack, ctx, close = prepared("linbp", {"linbp": {"renorm": False}}, net, x, y)
    try:
        got = attack.loss_gradient(x, y, ctx)
        assert ctx.state["linbp:layer"] == "layer2.0"
    finally:
        close()
    want = input_grad(lambda p: F.cross_entropy(cifar_forward(net, p, {"layer2.0", "layer3.0"}), y,
                                                reduction="sum"), x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    # the renormalised version runs through the zero-pad shortcut of layer2.0 (an identified addition)
    attack, ctx, close = prepared("linbp", {}, net, x, y)
    try:
        assert torch.isfinite(attack.loss_gradient(x, y, ctx)).all()
    finally:
        close()


def test_linbp_on_efficientnet_lite_relu6_modules() -> None:
    """timm tf_efficientnet_lite0 (untrained; in-place ReLU6 modules, inverted residuals without a final
    activation): from the default position blocks.4.0 on, every ReLU6 backpropagates as the identity —
    the gradient of the network with those modules' forwards replaced by u + (relu6(u) − u).detach(); the
    renormalised run finds every residual addition; the modules are unchanged afterwards."""
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).double().eval().requires_grad_(False)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([3, 7])
    assert default_middle_block(net, "linbp") == "blocks.4.0"
    grads = {}
    for renorm in (False, True):
        attack, ctx, close = prepared("linbp", {"linbp": {"renorm": renorm}}, net, x, y)
        try:
            grads[renorm] = attack.loss_gradient(x, y, ctx)
        finally:
            close()
    names = [n for n, _ in net.named_modules()]
    after = names[names.index("blocks.4.0"):]
    acts = [m for n, m in net.named_modules() if isinstance(m, nn.ReLU6)]
    linear = [m for n, m in net.named_modules() if isinstance(m, nn.ReLU6) and n in after]
    assert 0 < len(linear) < len(acts) and all(m.inplace for m in acts)
    for m in linear:
        m.forward = lambda u: u + (u.clamp(0, 6) - u).detach()
    try:
        want = input_grad(lambda p: F.cross_entropy(net(p), y, reduction="sum"), x)
    finally:
        for m in linear:
            del m.forward
    torch.testing.assert_close(grads[False], want, rtol=1e-10, atol=1e-13)
    assert (grads[True] - grads[False]).abs().max() > 1e-3 * grads[False].abs().max()
    assert hook_count(net) == 0


def test_linbp_refuses_a_position_without_relus_after_it() -> None:
    x, y = tiny_batch(2)
    attack = build_attack("linbp", {"linbp": {"layer": "head"}}, eps=EPS, alpha=ALPHA, steps=1)
    with pytest.raises(ValueError, match="no ReLU-type activation"):
        attack.run(TinyResNet(), x, y)
    with pytest.raises(ConfigError, match="sgm_lambda"):
        build_attack("linbp", {"linbp": {"renorm": False, "sgm_lambda": 0.5}}, eps=EPS, alpha=ALPHA, steps=1)


class Failing(nn.Module):
    """TinyResNet whose head raises on a chosen forward (after the LinBP region started)."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.inner, self.calls, self.fail_at = TinyResNet(), 0, fail_at

    def forward(self, x):
        self.calls += 1
        h = self.inner.block(torch.relu(self.inner.stem(x)))
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.inner.head(h.mean((2, 3))) * 4


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.mark.parametrize("method", ["linbp", "ila", "fia", "naa"])
def test_hooks_and_mode_removed_also_on_error(method: str) -> None:
    x, y = tiny_batch(2)
    for layer in ("inner.block", None):
        if layer is None and method == "linbp":
            continue
        model = Failing(fail_at=0)
        params = {method: {"layer": layer}} if layer else {}
        if layer is None:  # a default layer: the tiny model has none
            with pytest.raises(ConfigError, match="no default layer"):
                build_attack(method, params, eps=EPS, alpha=ALPHA, steps=2).run(model, x, y)
        else:
            build_attack(method, params, eps=EPS, alpha=ALPHA, steps=2).run(model, x, y)
        assert hook_count(model) == 0 and torch._C._len_torch_function_stack() == 0
    model = Failing(fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        attack = build_attack(method, {method: {"layer": "inner.block"}}, eps=EPS, alpha=ALPHA, steps=20)
        attack.run(model, x, y)
    assert hook_count(model) == 0 and torch._C._len_torch_function_stack() == 0


# ------------------------------------------------------------------------------------------ ILA
@pytest.mark.parametrize("variant", ["projection", "flexible"])
def test_ila_objective_equals_the_projection_by_hand(variant: str) -> None:
    model = TinyResNet()
    x, y = tiny_batch(3)
    attack, ctx, close = prepared("ila", {"ila": {"layer": "block", "variant": variant, "coeff": 0.7}},
                                  model, x, y)
    feats = {}
    handle = model.block.register_forward_hook(lambda m, i, o: feats.__setitem__("f", o))
    try:
        baseline = build_attack("pgd", eps=EPS, alpha=ALPHA, steps=10).run(model, x, y, keys=KEYS)
        torch.testing.assert_close(ctx.state["ila:baseline"], baseline - x, rtol=0, atol=1e-12)
        jitter = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
        point = (x + 0.5 * (baseline - x) + 0.01 * jitter).clamp(0, 1)
        with torch.no_grad():
            model(x)
            f0 = feats["f"].flatten(1)
            model(baseline)
            guide = feats["f"].flatten(1) - f0
            logits = ctx.forward(point)
            got = attack.objective(logits, y, None, ctx)
            shift = feats["f"].flatten(1) - f0
            ends = attack.objective(ctx.forward(torch.cat([baseline, x])), y.repeat(2), None, ctx)
    finally:
        handle.remove()
        close()
    dot = (shift * guide).sum(1)
    if variant == "projection":
        want = dot / guide.square().sum(1)
        # 1 at the baseline's point, 0 at x (two copies per image, copy-major)
        torch.testing.assert_close(ends, torch.cat([torch.ones(3), torch.zeros(3)]).double(), rtol=0,
                                   atol=1e-10)
    else:
        want = dot / (guide.norm(dim=1) * shift.norm(dim=1)) + 0.7 * shift.norm(dim=1) / guide.norm(dim=1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_ila_second_stage_starts_from_the_clean_image() -> None:
    """One ILA step from x: δ₁ = Π(α·sign ∇L(x)), whatever the baseline reached."""
    model = TinyResNet()
    x, y = tiny_batch(3)
    attack = build_attack("ila", {"ila": {"layer": "block"}}, eps=EPS, alpha=ALPHA, steps=1)
    adv = attack.run(model, x, y, keys=KEYS)
    assert (adv - x).abs().max() <= ALPHA + 1e-12


def test_ila_rejects_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="variant"):
        build_attack("ila", {"ila": {"variant": "angle"}}, eps=EPS, alpha=ALPHA, steps=1)
    with pytest.raises(ConfigError, match="baseline_steps"):
        build_attack("ila", {"ila": {"baseline_steps": 0}}, eps=EPS, alpha=ALPHA, steps=1)
    with pytest.raises(ConfigError, match="cannot itself be an ILA"):
        build_attack("ila", {"ila": {"baseline": "ila"}}, eps=EPS, alpha=ALPHA, steps=1)


# ------------------------------------------------------------------------------------------ FIA
def layer_grad(model: TinyResNet, module: nn.Module, inputs: torch.Tensor, score) -> torch.Tensor:
    """d score(logits).sum() / d module output, per row."""
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("f", o))
    try:
        with torch.enable_grad():
            logits = model(inputs.detach().requires_grad_(True))
            (g,) = torch.autograd.grad(score(logits).sum(), store["f"])
    finally:
        handle.remove()
    return g


def test_fia_delta_is_the_mean_over_the_dropped_copies() -> None:
    model = TinyResNet()
    x, y = tiny_batch(3)
    n = 7
    attack, ctx, close = prepared("fia", {"fia": {"layer": "block", "copies": n}}, model, x, y, seed=5)
    close()
    fia = attack.components[0]
    fresh = AttackContext(model, x, y, EPS, ALPHA, "linf", 3, ImageStreams.for_keys(5, KEYS))
    masks = fia.masks(fresh).view(n, 3, *x.shape[1:])
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(masks[0, 0], masks[1, 0]) and not torch.equal(masks[0, 0], masks[0, 1])
    assert 0.85 < float(masks.mean()) < 0.95  # keep 0.9, elementwise
    logit = lambda z: z.gather(1, y[:, None])  # noqa: E731
    mean = torch.stack([layer_grad(model, model.block, x * masks[k], logit) for k in range(n)]).mean(0)
    torch.testing.assert_close(ctx.state["fia:mean"], mean, rtol=1e-10, atol=1e-14)
    delta = mean / per_image(mean)
    torch.testing.assert_close(ctx.state["fia:delta"], delta, rtol=1e-10, atol=1e-14)
    # the objective: −Σ Δ ⊙ f(x′)
    feats = {}
    handle = model.block.register_forward_hook(lambda m, i, o: feats.__setitem__("f", o))
    try:
        attack, ctx, close = prepared("fia", {"fia": {"layer": "block", "copies": n}}, model, x, y, seed=5)
        with torch.no_grad():
            got = attack.objective(ctx.forward(x), y, None, ctx)
        close()
    finally:
        handle.remove()
    torch.testing.assert_close(got, -(feats["f"] * delta).flatten(1).sum(1), rtol=1e-10, atol=1e-13)


def test_fia_variants_and_refusals() -> None:
    make = build_attack
    official = make("fia", eps=EPS, alpha=ALPHA, steps=1).components[0]
    ports = make("fia", {"fia": {"variant": "ports"}}, eps=EPS, alpha=ALPHA, steps=1).components[0]
    mixed = make("fia", {"fia": {"variant": "ports", "keep": 0.5}}, eps=EPS, alpha=ALPHA,
                 steps=1).components[0]
    assert (official.keep, official.score, ports.keep, ports.score) == (0.9, "logit", 0.7, "softmax")
    assert (mixed.keep, mixed.score) == (0.5, "softmax")
    for bad in ({"keep": 0.0}, {"score": "prob"}, {"copies": 0}, {"variant": "tf"}):
        with pytest.raises(ConfigError):
            make("fia", {"fia": bad}, eps=EPS, alpha=ALPHA, steps=1)
    x, y = tiny_batch(2)
    attack = make("fia", {"fia": {"layer": "block"}}, eps=EPS, alpha=ALPHA, steps=1, targeted=True)
    with pytest.raises(ConfigError, match="untargeted"):
        attack.run(TinyResNet(), x, y, target=(y + 1) % 5)


# ------------------------------------------------------------------------------------------ NAA
def softmax_score(y):
    return lambda z: torch.softmax(z, 1).gather(1, y[:, None])


def test_naa_weights_are_the_mean_path_gradient() -> None:
    model = TinyResNet()
    x, y = tiny_batch(3)
    n, noise = 5, 25.5
    attack, ctx, close = prepared("naa", {"naa": {"layer": "block", "copies": n}}, model, x, y, seed=4)
    close()
    fresh = AttackContext(model, x, y, EPS, ALPHA, "linf", 3, ImageStreams.for_keys(4, KEYS))
    draws = fresh.draw_rows("randn", n * 3, tuple(x.shape[1:]), x.dtype).view(n, 3, *x.shape[1:])
    points = [(x + noise / 255 * draws[k]) * (1 - k / n) for k in range(n)]
    mean = torch.stack([layer_grad(model, model.block, p, softmax_score(y)) for p in points]).mean(0)
    torch.testing.assert_close(ctx.state["naa:mean"], mean, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(ctx.state["naa:weights"], mean / per_image(mean), rtol=1e-10, atol=1e-14)
    with torch.no_grad():
        base = model.block(torch.relu(model.stem(torch.zeros_like(x))))
    torch.testing.assert_close(ctx.state["naa:base"], base, rtol=1e-12, atol=1e-14)
    # ports: the path x·k/N from black, no noise, weights unnormalised
    attack, ctx, close = prepared("naa", {"naa": {"layer": "block", "copies": n, "variant": "ports"}},
                                  model, x, y, seed=4)
    close()
    mean = torch.stack([layer_grad(model, model.block, x * k / n, softmax_score(y))
                        for k in range(n)]).mean(0)
    torch.testing.assert_close(ctx.state["naa:weights"], mean, rtol=1e-10, atol=1e-14)


def test_naa_attribution_sum_follows_integrated_gradients_on_an_affine_layer() -> None:
    """`stem` is a convolution (affine in the input), so the path (1−k/N)·x maps to a straight line from
    f(0) to f(x): Σ (f(x) − f(0)) ⊙ mean-gradient is the Riemann sum of ∫ ∂p_y along it, = p_y(x) − p_y(0)
    up to O(1/N)."""
    model = TinyResNet()
    x, y = tiny_batch(3)
    with torch.no_grad():
        gain = softmax_score(y)(model(x)).squeeze(1) - softmax_score(y)(model(torch.zeros_like(x))).squeeze(1)
    errors = []
    for n in (10, 160):
        params = {"naa": {"layer": "stem", "copies": n, "noise": 0.0}}
        attack, ctx, close = prepared("naa", params, model, x, y)
        naa = attack.components[0]
        with torch.no_grad():
            ctx.forward(x)
            feature = ctx.features["stem"]
            raw = ((feature - ctx.state["naa:base"]) * ctx.state["naa:mean"]).flatten(1).sum(1)
            # the objective: −Σ A with A = (f − f(0)) ⊙ W, W the normalised weights (γ = 1)
            got = attack.objective(None, y, None, ctx)
            attribution = naa.attribution(feature, ctx).flatten(1)
        close()
        torch.testing.assert_close(got, -attribution.sum(1), rtol=1e-12, atol=1e-14)
        errors.append((raw - gain).abs())
    assert (gain.abs() > 1e-3).all()
    assert (errors[1] < 0.02 * gain.abs()).all() and (errors[1] < errors[0] / 4).all()


def test_naa_gamma_weighs_the_positive_attribution() -> None:
    model = TinyResNet()
    x, y = tiny_batch(2)
    attack, ctx, close = prepared("naa", {"naa": {"layer": "block", "copies": 4, "gamma": 0.5}}, model,
                                  x[:2], y[:2])
    point = (x + 0.03).clamp(0, 1)
    with torch.no_grad():
        ctx.forward(point)
        got = attack.objective(None, y, None, ctx)
        a = attack.components[0].attribution(ctx.features["block"], ctx).flatten(1)
    close()
    want = (-a).clamp_min(0).sum(1) - 0.5 * a.clamp_min(0).sum(1)  # negative − γ·positive attribution
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert (a > 0).any() and (a < 0).any()


# ------------------------------------------------------------------------------------------ layers
def test_layer_defaults_per_family() -> None:
    net = cifar_resnet(20)
    assert [s for s, _ in model_stages(net)] == ["layer1", "layer2", "layer3"]
    assert default_feature_layer(net, "fia") == "layer2"
    assert default_middle_block(net, "linbp") == "layer2.1"
    timm = pytest.importorskip("timm")
    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert [s for s, _ in model_stages(lite)] == [f"blocks.{i}" for i in range(7)]
    assert default_feature_layer(lite, "fia") == "blocks.3"
    assert default_middle_block(lite, "linbp") == "blocks.4.0"
    # no stages: the middle of the top-level children with parameters, the classifier left out
    tiny = TinyResNet()
    assert default_feature_layer(tiny, "naa") == default_middle_block(tiny, "linbp") == "block"
    with pytest.raises(ConfigError, match="no default layer"):
        default_feature_layer(nn.Sequential(nn.Linear(2, 2)), "naa")


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["linbp", "ila", "fia", "naa"])
def test_battery_at_defaults(name: str, norm: str) -> None:
    """As `tests/attacks/test_attack_battery.py` runs every component: no parameters at all."""
    check_attack(name, norm)


class Wrapped(nn.Module):
    """A wrapper with `.net`, as the zoo's Classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.name = net, "cifar10_resnet8"

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("method", ["fia", "naa", "ila"])
def test_default_layer_is_resolved_from_the_wrapped_model(method: str) -> None:
    torch.manual_seed(0)
    model = Wrapped(cifar_resnet(8).double().eval().requires_grad_(False))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([1, 4])
    attack, ctx, close = prepared(method, {method: {"copies": 2}} if method != "ila" else {}, model, x, y)
    try:
        assert ctx.state[f"{method}:layer"] == "layer2"
        with torch.no_grad():
            logits = ctx.forward(x)
        assert torch.isfinite(attack.objective(logits, y, None, ctx)).all()
    finally:
        close()
    assert hook_count(model) == 0


@pytest.mark.parametrize("method", ["linbp", "ila", "fia", "naa"])
def test_unknown_layer_gives_the_taps_error(method: str) -> None:
    x, y = tiny_batch(2)
    attack = build_attack(method, {method: {"layer": "blok"}}, eps=EPS, alpha=ALPHA, steps=1)
    with pytest.raises(ConfigError, match=r"no layer 'blok' to tap \(did you mean block"):
        attack.run(TinyResNet(), x, y)
