"""Skip gradient method (SGM; Wu et al., ICLR 2020): less gradient through residual branches.

Every residual block's input gradient becomes skip gradient + γ·branch gradient. This is done with a full
backward hook on the FIRST module of each residual branch that scales its input gradient (grad_input)
by γ; the skip path is untouched. For two-ReLU blocks (ResNet-18/34 BasicBlock) this equals the reference
SGM's γ^0.5 on each ReLU gradient up to the post-addition ReLU: the reference also scales that ReLU,
i.e. the whole block's gradient by γ^0.5, a per-block factor on skip and branch alike.

Blocks recognised (in ``ctx.model.net`` if the model has ``.net``, else in the model):

- timm EfficientNet/MobileNet blocks with ``has_skip`` True: ``DepthwiseSeparableConv`` (entry ``conv_dw``),
  ``InvertedResidual`` and ``CondConvResidual`` (entry ``conv_pw``), ``EdgeResidual`` (``conv_exp``),
  ``ConvBnAct`` (``conv``); ``conv_s2d`` instead when a block has one. Blocks without a skip are left alone.
- any other block with a ``conv1`` module and an identity skip (a ``shortcut`` or ``downsample``
  attribute that is None or ``nn.Identity``: timm and torchvision ``BasicBlock``/``Bottleneck``, the CIFAR
  ResNets of `transferlab.archs.cifar_resnet`, both options): entry ``conv1``. Blocks whose skip is a
  projection or a zero-padding subsample (the first block of a stage) are left alone, as the reference
  implementation leaves each stage's first block alone: SGM's decomposition assumes an identity skip.

A model with none of these (e.g. ShuffleNet) raises a ValueError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.errors import ConfigError

#: timm efficientnet block class name -> attribute of the branch's first module
_TIMM_ENTRIES = {
    "DepthwiseSeparableConv": "conv_dw",
    "InvertedResidual": "conv_pw",
    "CondConvResidual": "conv_pw",
    "EdgeResidual": "conv_exp",
    "ConvBnAct": "conv",
}
_TIMM_MODULE = "timm.models._efficientnet_blocks"


def branch_entry(block: nn.Module) -> nn.Module | None:
    """The first module of `block`'s residual branch; None if `block` is not a recognised residual block."""
    cls = type(block)
    timm_name = next(
        (k.__name__ for k in cls.__mro__ if k.__module__ == _TIMM_MODULE and k.__name__ in _TIMM_ENTRIES),
        None,
    )
    if timm_name is not None:
        if not getattr(block, "has_skip", False):
            return None
        s2d = getattr(block, "conv_s2d", None)
        entry = s2d if isinstance(s2d, nn.Module) else getattr(block, _TIMM_ENTRIES[timm_name], None)
        return entry if isinstance(entry, nn.Module) else None
    conv1 = getattr(block, "conv1", None)
    if isinstance(conv1, nn.Module) and (hasattr(block, "shortcut") or hasattr(block, "downsample")):
        skip = getattr(block, "shortcut", None) or getattr(block, "downsample", None)
        if skip is None or isinstance(skip, nn.Identity):
            return conv1
    return None


def residual_entries(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(block name, branch entry) for every recognised residual block in `net`."""
    found = []
    for name, module in net.named_modules():
        entry = branch_entry(module)
        if entry is not None:
            found.append((name, entry))
    return found


@register("sgm")
@dataclass
class SkipGradient(Component):
    """SGM: gradient through every residual branch scaled by gamma (0.2); the skip path unchanged."""

    gamma: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"{self.name}: gamma must be in [0, 1], got {self.gamma}")

    def _hook(self, module, grad_input, grad_output):
        return tuple(None if g is None else g * self.gamma for g in grad_input)

    def setup(self, ctx: AttackContext) -> None:
        net = getattr(ctx.model, "net", ctx.model)
        entries = residual_entries(net)
        if not entries:
            label = getattr(ctx.model, "name", None) or type(net).__name__
            raise ValueError(
                f"sgm: no residual block recognised in model {label!r} ({type(net).__name__}); SGM needs "
                "ResNet-style blocks (conv1 + shortcut/downsample) or timm EfficientNet blocks with a skip"
            )
        ctx.state[f"{self.name}:handles"] = [e.register_full_backward_hook(self._hook) for _, e in entries]
        ctx.state[f"{self.name}:blocks"] = [n for n, _ in entries]

    def teardown(self, ctx: AttackContext) -> None:
        for handle in ctx.state.pop(f"{self.name}:handles", []):
            handle.remove()
