"""Intermediate level attack (ILA; Huang et al., ICCV 2019, "Enhancing Adversarial Example Transferability
with an Intermediate Level Attack"), and the per-family layer defaults of the feature-level attacks.

Two stages. A baseline attack gives δ′ (run inside `setup` on the same images, ε, norm, α and per-image
streams, like `start`); then the main loop, starting again from x, maximises the projection of the feature
shift at layer l onto the baseline's shift:

    L(x′) = ⟨f_l(x′) − f_l(x), f_l(x+δ′) − f_l(x)⟩ / ‖f_l(x+δ′) − f_l(x)‖²   (per image; 1 at x′ = x+δ′)

Sources (official code github.com/CUAI/Intermediate-Level-Attack, commit 25271f8, ``attacks.py``):

- the loss: ``Proj_Loss`` (lines 730–740): y·x̂/‖x‖ with x = the baseline's shift, y = the current shift. It
  flattens the whole batch into one vector (``view(1, -1)``), so its normaliser is batch-wide; here each
  image is normalised by its own shift (an image's result must not depend on its batch-mates). A positive
  factor per image does not change a sign step, nor MI's ∇/mean|∇|, nor the L2 step.
- second stage from the clean image: ``ILA`` (lines 766–847) sets ``X_pert = X`` (lines 803–804) and only
  reads the baseline's features; so does the LinBP repository's ILA (github.com/qizhangli/linbp-attack,
  commit 7e1702f, ``attack/imagenet/attack_resnet50.py`` line 125). δ₀ = 0 here (no random start);
  composed with `start`, the second stage would start from that component's δ₀ instead (not the official).
- coefficient 1.0: ``ILA(..., coeff=1.0)`` (line 774). ``Proj_Loss`` ignores it; it enters only
  ``Mid_layer_target_Loss`` (lines 744–759: cos∠ + coeff·‖y‖/‖x‖, ``with_projection=False``), which the
  official configs never select (``use_projection = True`` in ``imagenet_config.py``/``cifar10_config.py``).
  It is ``variant: flexible`` here. At x′ = x its shift is 0 and its gradient too (CUAI sets ŷ = y = 0), so
  that variant needs a nonzero start (``random_start: true``).
- 10 iterations: ``niters=10`` (line 772 and ``ILA_params`` in both configs) — the loop's ``steps``.
  The baseline's 10: ``all_in_one_imagenet.py`` line 131 (``niters=10``, for each attack of
  ``attack_configs``, I-FGSM first) and ``demo.py`` line 60 (I-FGSM, ``niters_ila`` = 10) — ``baseline:
  pgd`` (the loop without random start is I-FGSM). The LinBP repository's ``ILAProjLoss`` (``utils.py``
  lines 202–211) is the unnormalised Σ y·x / n, the same sign step. TransferAttack
  (``advanced_objective/ila.py``, commit 2663e4a) runs its MI-FGSM base as the baseline (``baseline:
  mi``) and taps the middle of the flattened module list (ResNet-50: layer3.0).
- step sizes: CUAI uses its own learning rates (0.008 baseline, 0.01 ILA, in normalised units); here both
  stages take the loop's α (`start`'s convention).
- layer: CUAI sweeps every layer (``get_source_layers``); the LinBP repository fixes ResNet-50's
  ``--ila_layer 2_3`` (``attack_resnet50.py`` line 22: layer2's last block, i.e. layer2's output), the
  default of `default_feature_layer` below. The paper's text could not be read here (only the code).

Layer defaults (``layer: None``) are resolved from the model's module names (`model_stages`): ResNet-style
stages ``layer1`` … ``layerS`` (CIFAR ResNets, torchvision/timm ResNets) or timm-style ``blocks.0`` …
``blocks.{S−1}`` (EfficientNet/MobileNet). Feature taps (ILA, FIA, NAA) take the output of the middle stage,
number ⌈S/2⌉ of S: ResNet-50 → ``layer2`` (the official choice above; torchattack's FIA/NAA ``layer2.3``
is the same tensor), ResNet-152 → ``layer2`` (FIA/NAA's ``block2/unit_8``), ``cifar10_resnet20`` →
``layer2``, ``tf_efficientnet_lite0`` → ``blocks.3``. Without such stages (e.g. the battery's TinyResNet:
stem, block, head): the middle one, index ⌊m/2⌋, of the network's m top-level children with parameters, the
last (the classifier) left out — TinyResNet → ``block``; a model with fewer than two needs ``layer``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transferlab.attacks.base import AttackContext, Component
from transferlab.attacks.registry import register
from transferlab.attacks.taps import tap_module
from transferlab.attacks.warm_start import WarmStart
from transferlab.errors import ConfigError

_STAGE_PATTERNS = (re.compile(r"^layer(\d+)$"), re.compile(r"^blocks\.(\d+)$"))


def model_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """(stage, its blocks) in order for ResNet-style ``layerK`` or timm-style ``blocks.K`` stages (each an
    ``nn.Sequential`` of blocks); names relative to the network inside the wrapper. [] if neither."""
    root = getattr(model, "net", model)
    for pattern in _STAGE_PATTERNS:
        found = []
        for name, module in root.named_modules():
            match = pattern.match(name)
            if match and isinstance(module, nn.Sequential) and len(module):
                found.append((int(match.group(1)), name, [f"{name}.{c}" for c, _ in module.named_children()]))
        if found:
            return [(name, blocks) for _, name, blocks in sorted(found)]
    return []


def _fallback_layer(model: nn.Module, who: str) -> str:
    """Without stages: the middle one, index ⌊m/2⌋, of the network's m top-level children holding
    parameters, the last (the classifier) left out; ConfigError if there is none."""
    root = getattr(model, "net", model)
    children = [n for n, c in root.named_children() if any(True for _ in c.parameters())][:-1]
    if children:
        return children[len(children) // 2]
    label = getattr(model, "name", None) or type(root).__name__
    raise ConfigError(
        f"{who}: no default layer for model {label!r} (defaults are defined for ResNet-style stages "
        "`layer1..layerS`, timm-style stages `blocks.0..`, or two or more top-level modules with "
        f"parameters); give `layer` — `transferlab models --layers {label}` lists the names"
    )


def default_feature_layer(model: nn.Module, who: str) -> str:
    """The middle stage's output, stage ⌈S/2⌉ of S (module docstring); without stages `_fallback_layer`."""
    stages = model_stages(model)
    if not stages:
        return _fallback_layer(model, who)
    return stages[math.ceil(len(stages) / 2) - 1][0]


def default_middle_block(model: nn.Module, who: str) -> str:
    """The middle block, index ⌊n/2⌋ of the n blocks in stage order (LinBP's position: ResNet-50 →
    layer3.1, the official ``3_1``); without stages `_fallback_layer`."""
    blocks = [b for _, stage in model_stages(model) for b in stage]
    if not blocks:
        return _fallback_layer(model, who)
    return blocks[len(blocks) // 2]


def open_tap(component: Component, ctx: AttackContext, layer: str | None) -> str:
    """The `ctx.features` key of the component's layer. An explicit layer is tapped by the loop
    (`Component.taps`); a default one is resolved from the model here and tapped by a forward hook that
    `close_tap` removes."""
    if layer is not None:
        return layer
    name = default_feature_layer(ctx.model, component.name)
    module = tap_module(ctx.model, name)

    def store(_module, _inputs, output):
        ctx.features[name] = output

    ctx.state[f"{component.name}:tap"] = module.register_forward_hook(store)
    return name


def close_tap(component: Component, ctx: AttackContext) -> None:
    handle = ctx.state.pop(f"{component.name}:tap", None)
    if handle is not None:
        handle.remove()


def per_row(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A per-image tensor (B, …) repeated to `rows` = k·B copy-major rows."""
    if rows % weight.shape[0]:
        raise ValueError(f"{rows} feature rows is not a multiple of the batch of {weight.shape[0]} images")
    return weight.repeat(rows // weight.shape[0], *([1] * (weight.ndim - 1)))


VARIANTS = ("projection", "flexible")


@register("ila")
@dataclass
class IntermediateLevel(Component):
    """ILA: maximise ⟨f_l(x′)−f_l(x), f_l(x+δ′)−f_l(x)⟩/‖f_l(x+δ′)−f_l(x)‖², δ′ from `baseline` (pgd, i.e.
    I-FGSM, 10 steps) run in setup; then from x. layer: None = the middle stage; variant projection |
    flexible (cos + coeff·‖shift‖/‖δ′ shift‖, coeff 1.0)."""

    layer: str | None = None
    baseline: str = "pgd"
    baseline_steps: int = 10
    baseline_params: dict[str, Any] = field(default_factory=dict)
    variant: str = "projection"
    coeff: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"{self.name}: variant must be one of {VARIANTS}, got {self.variant!r}")
        if not isinstance(self.baseline_steps, int) or self.baseline_steps < 1:
            raise ConfigError(f"{self.name}: baseline_steps must be a positive integer, got "
                              f"{self.baseline_steps!r}")
        self._stage = WarmStart(method=self.baseline, steps=self.baseline_steps,
                                params=dict(self.baseline_params))
        if any(isinstance(c, IntermediateLevel) for c in self._stage._first.components):
            raise ConfigError(f"{self.name}: the baseline cannot itself be an ILA")

    def taps(self) -> tuple[str, ...]:
        return () if self.layer is None else (self.layer,)

    def setup_forwards(self) -> int:
        """The baseline's forwards, then x and x+δ′ once (their features)."""
        return self._stage.setup_forwards() + 2

    def setup_inputs(self) -> int:
        return max(self._stage.setup_inputs(), 2)

    def _key(self, what: str) -> str:
        return f"{self.name}:{what}"

    def setup(self, ctx: AttackContext) -> None:
        key = ctx.state[self._key("layer")] = open_tap(self, ctx, self.layer)
        try:
            self._prepare(ctx, key)
        except BaseException:
            close_tap(self, ctx)  # the loop tears down only components whose setup completed
            raise

    def _prepare(self, ctx: AttackContext, key: str) -> None:
        caller = ctx.caller
        delta = self._stage.init(ctx)  # the baseline: same model, images, ε, α, norm and streams
        ctx.caller = caller
        with torch.no_grad():
            ctx.forward(torch.cat([ctx.x, ctx.x + delta]))
            feats = ctx.features[key].detach()
        base, shifted = feats[: ctx.batch], feats[ctx.batch:]
        guide = (shifted - base).flatten(1)
        ctx.state[self._key("baseline")] = delta.detach()
        ctx.state[self._key("base")] = base.flatten(1)
        ctx.state[self._key("guide")] = guide
        ctx.state[self._key("guide_sq")] = guide.square().sum(1)

    def teardown(self, ctx: AttackContext) -> None:
        close_tap(self, ctx)

    def objective(self, logits, y, target, ctx: AttackContext) -> torch.Tensor:
        feature = ctx.features[ctx.state[self._key("layer")]].flatten(1)
        rows = feature.shape[0]
        shift = feature - per_row(ctx.state[self._key("base")], rows)
        guide = per_row(ctx.state[self._key("guide")], rows)
        guide_sq = per_row(ctx.state[self._key("guide_sq")], rows)
        tiny = torch.finfo(feature.dtype).tiny
        dot = (shift * guide).sum(1)
        if self.variant == "projection":
            return dot / guide_sq.clamp_min(tiny)
        guide_norm = guide_sq.sqrt().clamp_min(tiny)
        shift_norm = shift.norm(dim=1)
        cos = torch.where(shift_norm > 0, dot / (guide_norm * shift_norm.clamp_min(tiny)),
                          torch.zeros_like(dot))
        return cos + self.coeff * shift_norm / guide_norm
