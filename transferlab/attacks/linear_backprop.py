"""Linear backpropagation (LinBP; Guo, Li & Chen, NeurIPS 2020, "Backpropagating Linearly Improves
Transferability of Adversarial Examples"): the forward pass is the model's, but from a chosen layer on every
ReLU backpropagates as the identity (its derivative taken as 1 everywhere); in residual units the branch's
gradient is then renormalised to the norm the nonlinear backward would give it.

Defining step, per activation r = relu(u) after the position: ∂r/∂u := I (the official ``linbp_relu``,
``u + relu(−u).detach()``: value relu(u), gradient 1). Per residual unit y = relu(F(a) + S(a)) after the
position, with g the gradient reaching F's output and J_lin / J the branch's Jacobians with linear / true
ReLUs, the gradient at the unit's input is  S′(a)ᵀg + λ·(‖Jᵀg‖/‖J_linᵀg‖)·J_linᵀg  (norms per image,
λ = ``sgm_lambda``); the unit's final ReLU (after the addition) keeps its true backward.

Sources (official code github.com/qizhangli/linbp-attack, commit 7e1702f, PyTorch; the paper's text could
not be read here):

- position: ``--linbp_layer 3_1`` (``attack/imagenet/attack_resnet50.py`` line 21): ResNet-50's
  layer3[1] and every later block (``utils.py`` lines 82–108, ``kk_now >= kk``). Default here
  (``layer: None``): the middle block of the model's stage blocks, index ⌊n/2⌋ of n
  (`transferlab.attacks.intermediate_level.default_middle_block`; module names ``layerK.J`` or
  ``blocks.K.J``), which is layer3.1 on ResNet-50 (16 blocks); ``cifar10_resnet20`` → ``layer2.1``,
  ``tf_efficientnet_lite0`` → ``blocks.4.0``; without stages the fallback of the feature layers (the
  battery's TinyResNet → ``block``).
- which ReLUs: ``block_func`` (``utils.py`` lines 114–147) linearises the two branch ReLUs of each
  Bottleneck (``linbp_relu``, lines 150–153) and keeps ``block.relu`` after the addition (line 145). For
  VGG-19 (``attack/cifar10/utils.py`` lines 85–99) every ReLU of ``features`` from ``--linbp_layer 23``
  (``attack_vgg19.py`` line 16) on; its CIFAR classifier has none. Here: every
  ReLU-type call (``relu``, ``relu6``, ``hardtanh`` with min 0, i.e. ReLU6) executed after the position's
  forward starts and until the network's forward ends, except a residual unit's final ReLU (an activation
  whose output is the unit's output). ReLU6 is linearised like ReLU (its derivative taken as 1 on both
  sides); the official code has ReLU networks only.
- renormalisation: ``linbp_backw_resnet50`` (``utils.py`` lines 155–169): per block, the branch gradient
  with linear ReLUs (``main_grad``) is rescaled to the per-image L2 norm of the branch gradient with the true
  ReLU masks (``normal_grad_0``), times ``--sgm_lambda`` (1.0, ``attack_resnet50.py`` line 16; SGM's
  residual factor). ``renorm: true`` and ``sgm_lambda: 1.0`` here; ``renorm: false`` is plain linear
  backward. Computed per unit with two extra backward passes through its branch (no extra forwards).
- base attack: the official runs 300 iterations (line 17) of step 1/255 with a fresh U(−ε, ε) offset at
  every iteration for ``pgd`` (lines 88–89, 119), ε = 0.03; TransferAttack (``model_related/linbp.py``,
  commit 2663e4a, lines 32–36, a copy of the official functions) uses MI (decay 1.0), α = 1.6/255, 300
  epochs and the same ``3_1`` / ``sgm_lambda`` 1.0. Those are the loop's settings (``mi+linbp``,
  ``steps: 300``), not this component's. torchattack has no LinBP.

Mechanism: the official code rewrites ResNet-50's forward; here the model is untouched. A forward pre-hook on
the position's module enters a `torch.overrides.TorchFunctionMode` that swaps ReLU-type calls for a custom
autograd function with an identity backward, and wraps each residual unit's branch at its addition in a
function whose backward rescales the branch gradient; a forward hook on the network leaves the mode. Calls,
not modules: hooks on ReLU modules would miss functional ReLUs (the battery's TinyResNet has only
``torch.relu``) and cannot tell torchvision's one shared ``relu`` module's branch calls from its
post-addition call. It acts in every forward of the model during the batch, also other components' setup
forwards (FIA's Δ, a `start` stage). A region without any ReLU-type call is refused. Residual units:
modules with ``conv1`` and a ``shortcut`` or ``downsample`` attribute (CIFAR and torchvision/timm ResNets),
and timm EfficientNet blocks with ``has_skip``; the branch is the addend that is not the unit's input or its
shortcut's output. In-place activations and in-place residual additions are computed out of place in the
region. All hooks and the mode are removed in `teardown` (also on error). In an ensemble the region ends
with the member that holds the position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.intermediate_level import default_middle_block
from transferlab.attacks.registry import register
from transferlab.attacks.skip_gradient import _TIMM_ENTRIES, _TIMM_MODULE
from transferlab.attacks.taps import tap_module
from transferlab.errors import ConfigError

_RELUS = {"relu": None, "relu_": None, "relu6": 6.0}  # name -> upper clip (ReLU6)
_HARDTANH = {"hardtanh", "hardtanh_"}
_ADDS = {"add", "add_", "__add__", "__radd__", "__iadd__"}


class _Shared:
    """State shared by one batch's autograd nodes."""

    def __init__(self) -> None:
        self.masked = False  # True while a renormalisation computes a branch's true (masked) gradient


@dataclass
class _Record:
    shared: _Shared
    linear: bool = True  # False for a residual unit's final ReLU (set once the unit's forward ends)


class _LinearActivation(torch.autograd.Function):
    """clamp(u, lo, hi) forward; identity backward (the true mask when the record says so)."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, lo: float, hi: float | None, record: _Record) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.lo, ctx.hi, ctx.record = lo, hi, record
        return u.clamp(min=lo) if hi is None else u.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        record = ctx.record
        if record.linear and not record.shared.masked:
            return grad, None, None, None
        (u,) = ctx.saved_tensors
        keep = u > ctx.lo
        if ctx.hi is not None:
            keep = keep & (u < ctx.hi)
        return grad * keep.to(grad.dtype), None, None, None


def _per_image_norm(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if t is None:
        return torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    return t.flatten(1).norm(dim=1)


class _Renormalise(torch.autograd.Function):
    """Identity forward on a residual branch's output b (computed from the unit's input a); backward scales
    the incoming gradient g per image by λ·‖J_trueᵀg‖ / ‖J_linᵀg‖ (two nested backward passes b → a)."""

    @staticmethod
    def forward(ctx: Any, branch: torch.Tensor, source: torch.Tensor, shared: _Shared, scale: float
                ) -> torch.Tensor:
        ctx.save_for_backward(branch, source)
        ctx.shared, ctx.scale = shared, scale
        return branch.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        branch, source = ctx.saved_tensors
        shared = ctx.shared
        with torch.enable_grad():
            shared.masked = True
            try:
                (true,) = torch.autograd.grad(branch, source, grad, retain_graph=True, allow_unused=True)
            finally:
                shared.masked = False
            (linear,) = torch.autograd.grad(branch, source, grad, retain_graph=True, allow_unused=True)
        true_norm, linear_norm = _per_image_norm(true, grad), _per_image_norm(linear, grad)
        ratio = torch.where(linear_norm > 0, true_norm / linear_norm.clamp_min(torch.finfo(grad.dtype).tiny),
                            torch.ones_like(linear_norm))
        return grad * (ctx.scale * ratio).view(-1, *([1] * (grad.ndim - 1))), None, None, None


@dataclass
class _Frame:
    """One residual unit's forward in progress."""

    module: nn.Module
    name: str
    source: torch.Tensor | None  # the unit's input
    active: bool  # the region was on when the unit started
    skip: torch.Tensor | None = None  # its shortcut's output
    renormalised: bool = False
    last: tuple[torch.Tensor, _Record] | None = None  # the last linearised activation inside it


def residual_units(net: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """(name, unit, shortcut module or None) for every residual unit LinBP renormalises (module docstring)."""
    found = []
    for name, module in net.named_modules():
        cls = type(module)
        if any(k.__module__ == _TIMM_MODULE and k.__name__ in _TIMM_ENTRIES for k in cls.__mro__):
            if getattr(module, "has_skip", False):
                found.append((name, module, None))
            continue
        if isinstance(getattr(module, "conv1", None), nn.Module) and (
                hasattr(module, "shortcut") or hasattr(module, "downsample")):
            skip = getattr(module, "shortcut", None) or getattr(module, "downsample", None)
            found.append((name, module, skip if isinstance(skip, nn.Module) else None))
    return found


class _Mode(TorchFunctionMode):
    def __init__(self, run: _Run) -> None:
        super().__init__()
        self.run = run

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        out = None
        if name in _RELUS or name in _HARDTANH:
            out = self.run.activation(name, args, kwargs)
        elif name in _ADDS:
            out = self.run.addition(args, kwargs)
        return func(*args, **kwargs) if out is None else out


def _arg(args: tuple, kwargs: dict, index: int, key: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(key, default)


@dataclass
class _Run:
    """One batch's hooks, mode and residual-unit stack."""

    renorm: bool
    scale: float
    position: str
    shared: _Shared = field(default_factory=_Shared)
    frames: list[_Frame] = field(default_factory=list)
    handles: list = field(default_factory=list)
    on: bool = False
    seen: int = 0  # ReLU-type calls in the current region

    def __post_init__(self) -> None:
        self.mode = _Mode(self)

    # ------------------------------------------------------------------ the region
    def start(self, *_: Any) -> None:
        if not self.on:
            self.mode.__enter__()
            self.on, self.seen = True, 0

    def stop(self, *_: Any) -> None:
        if self.on:
            self.on = False
            self.mode.__exit__(None, None, None)

    def finish(self, *_: Any) -> None:
        """The network's forward ended: leave the region; refuse one without any ReLU."""
        was_on = self.on
        self.stop()
        if was_on and not self.seen:
            raise ValueError(f"linbp: no ReLU-type activation (relu, relu6, hardtanh from 0) runs after "
                             f"layer {self.position!r}: linear backpropagation would change nothing; choose "
                             "an earlier layer")

    def reset(self, *_: Any) -> None:
        """A new forward of the network: nothing of an interrupted one is kept."""
        self.stop()
        self.frames.clear()

    # ------------------------------------------------------------------ residual units
    def hooks_for(self, name: str, unit: nn.Module, skip: nn.Module | None) -> None:
        def enter(module, args):
            source = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.frames.append(_Frame(module, name, source, self.on))

        def shortcut(_module, _args, output):
            if self.frames and self.frames[-1].module is unit:
                self.frames[-1].skip = output

        def leave(module, _args, output):
            if not self.frames or self.frames[-1].module is not module:
                return
            frame = self.frames.pop()
            if frame.last is not None and output is frame.last[0]:
                frame.last[1].linear = False  # the unit's final ReLU, after the addition: true backward
            if (self.renorm and self.on and frame.active and not frame.renormalised
                    and torch.is_grad_enabled() and frame.source is not None and frame.source.requires_grad):
                raise ValueError(f"linbp: found no residual addition in unit {frame.name!r} (its input or "
                                 "shortcut output plus the branch); set renorm: false for this model")

        self.handles.append(unit.register_forward_pre_hook(enter))
        self.handles.append(unit.register_forward_hook(leave))
        if skip is not None:
            self.handles.append(skip.register_forward_hook(shortcut))

    # ------------------------------------------------------------------ intercepted calls
    def activation(self, name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
        u = _arg(args, kwargs, 0, "input", None)
        if name in _HARDTANH:
            lo, hi = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
            if lo != 0:
                return None  # a hardtanh, not a (clipped) ReLU
        else:
            lo, hi = 0.0, _RELUS[name]
        self.seen += 1
        if not isinstance(u, torch.Tensor) or not (torch.is_grad_enabled() and u.requires_grad):
            return None
        record = _Record(self.shared)
        out = _LinearActivation.apply(u, float(lo), None if hi is None else float(hi), record)
        if self.frames:
            self.frames[-1].last = (out, record)
        return out

    def addition(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if not self.frames:
            return None
        frame = self.frames[-1]
        left, right = _arg(args, kwargs, 0, "input", None), _arg(args, kwargs, 1, "other", None)
        if (frame.renormalised or kwargs.get("alpha", 1) != 1 or not isinstance(left, torch.Tensor)
                or not isinstance(right, torch.Tensor) or left.shape != right.shape):
            return None
        ends = [t for t in (frame.source, frame.skip) if t is not None]
        if any(right is t for t in ends):
            branch, skip = left, right
        elif any(left is t for t in ends):
            branch, skip = right, left
        else:
            return None
        frame.renormalised = True
        source = frame.source
        if not (self.renorm and torch.is_grad_enabled() and branch.requires_grad and source is not None
                and source.requires_grad):
            return None
        return _Renormalise.apply(branch, source, self.shared, self.scale) + skip

    def close(self) -> None:
        self.stop()
        self.frames.clear()
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def region_root(model: nn.Module, layer: str) -> nn.Module:
    """The network whose forward ends the region: an ensemble's member for ``members.K.…``, else the model."""
    match = re.match(r"^(?:net\.)?(members\.\d+)\.", layer)
    return tap_module(model, match.group(1)) if match else model


@register("linbp")
@dataclass
class LinearBackprop(Component):
    """LinBP: from `layer` on (None: the middle one of the stages' blocks, on ResNet-50 layer3.1, the
    official 3_1), ReLU's backward is the identity, a residual unit's final ReLU excepted; renorm (true):
    each residual branch's gradient rescaled per image to its norm with the true ReLUs, times sgm_lambda
    (1.0)."""

    layer: str | None = None
    renorm: bool = True
    sgm_lambda: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.renorm, bool):
            raise ConfigError(f"{self.name}: renorm must be true or false, got {self.renorm!r}")
        if self.sgm_lambda < 0:
            raise ConfigError(f"{self.name}: sgm_lambda must be >= 0, got {self.sgm_lambda}")
        if not self.renorm and self.sgm_lambda != 1.0:
            raise ConfigError(f"{self.name}: sgm_lambda scales the renormalised branch: it needs renorm: "
                              "true (or compose sgm for a plain branch factor)")

    def _key(self) -> str:
        return f"{self.name}:run"

    def setup(self, ctx: AttackContext) -> None:
        name = self.layer if self.layer is not None else default_middle_block(ctx.model, self.name)
        position = tap_module(ctx.model, name)  # an unknown name: the taps error with the closest names
        root = region_root(ctx.model, name)
        run = _Run(self.renorm, float(self.sgm_lambda), name)
        try:
            run.handles.append(root.register_forward_pre_hook(run.reset))
            run.handles.append(position.register_forward_pre_hook(run.start))
            run.handles.append(root.register_forward_hook(run.finish))
            for unit_name, unit, skip in residual_units(getattr(ctx.model, "net", ctx.model)):
                run.hooks_for(unit_name, unit, skip)
        except Exception:
            run.close()
            raise
        ctx.state[self._key()] = run
        ctx.state[f"{self.name}:layer"] = name

    def teardown(self, ctx: AttackContext) -> None:
        run = ctx.state.pop(self._key(), None)
        if run is not None:
            run.close()
