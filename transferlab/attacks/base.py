"""The attack loop as a template method, and the component interface.

Pixels are in [0,1]; ε and α are in the same units (the configs give them in 1/255 steps and the
registry divides by 255). One loop serves every method: each component overrides only the hook it
changes, and the loop calls the hooks of all components in a fixed order.

Per step, for the current adversarial image x' = x + δ:

1. ``lookahead``   point = x' (+ NI's look-ahead)
2. ``expand``      points to differentiate at (VR: Gaussian copies), batched
3. ``transform``   model inputs from points (DI: random resize-and-pad)
4. ``loss``        per-image objective: mean cross-entropy over copies, plus each ``regulariser``
                   term evaluated at the point (IR: −λ·interaction), one backward for all
5. ``refine``      gradient correction needing extra gradients (VMI: variance tuning)
6. ``process``     gradient post-processing (TI: smoothing, then MI: momentum)
7. ``update``      sign step (L∞) or normalised step (L2), projection onto the ε-ball and [0,1]

Each image's result depends only on that image: randomness comes from per-image streams
(`transferlab.rng.ImageStreams`) and every reduction is per image. The one residue is the micro-batch
shape, which may change the kernels' rounding; see `Attack` and `Component.per_image`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.rng import ImageStreams

NORMS = ("linf", "l2")


@dataclass
class AttackContext:
    """Everything a component may read during one attack on one (micro-)batch."""

    model: nn.Module
    x: torch.Tensor  # clean images (B,C,H,W) in [0,1]
    y: torch.Tensor  # true labels (B,)
    eps: float  # radius in [0,1] pixel units (L∞) or L2 norm in [0,1] pixel units
    alpha: float  # step size in the same units
    norm: str
    steps: int
    streams: ImageStreams
    step: int = 0
    forwards: int = 0  # images passed through the model so far (cost accounting)
    x_adv: torch.Tensor | None = None  # the current adversarial image x + δ (before any look-ahead)
    state: dict[str, Any] = field(default_factory=dict)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits; counts the images forwarded."""
        self.forwards += inputs.shape[0]
        return self.model(inputs)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def draw_rows(
        self, kind: str, rows: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Per-image random draws for a copy-major batch of rows = k·B: (rows, *shape), row c·B + b from
        image b's own stream, so no row depends on another image. kind: 'rand' or 'randn'."""
        k = rows_per_image(rows, self)
        draw = self.streams.randn if kind == "randn" else self.streams.rand
        return draw(k, *shape, dtype=dtype).transpose(0, 1).reshape(rows, *shape)


class Component:
    """One composable piece of an attack. Subclasses are dataclasses whose fields are their parameters.

    Override only the hooks the method changes; the defaults do nothing.
    """

    name: ClassVar[str] = "component"
    #: order among components when several override the same hook (lower runs first)
    order: ClassVar[int] = 50
    #: the attack runs without random start unless configured (IR's convention)
    default_random_start: ClassVar[bool | None] = None
    #: attack one image per micro-batch, so that every model call holds only that image's inputs and
    #: its floats cannot depend on batch-mates through batch-shape-dependent kernels (IR)
    per_image: ClassVar[bool] = False

    def batch_multiplier(self) -> int:
        """Factor on the data term's model batch (VR: copies; VT: its neighbour call). Sizes micro-batches."""
        return 1

    def cost_multiplier(self) -> float:
        """Factor on the data term's forward+backward passes per step (VT: 1 + N neighbours)."""
        return float(self.batch_multiplier())

    def extra_forwards(self) -> int:
        """Model inputs per image per step sent outside the data term (IR: its masked batch)."""
        return 0


    def setup(self, ctx: AttackContext) -> None:
        """Once per batch, before the first step (register hooks, cache constants)."""

    def teardown(self, ctx: AttackContext) -> None:
        """Once per batch, after the last step, also on error (remove hooks)."""

    def lookahead(self, point: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return point

    def expand(self, points: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, int]:
        """Return (copies·B points, copies), copy-major: points[c·B + b] belongs to image b."""
        return points, 1

    def transform(self, inputs: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return inputs

    def regulariser(
        self, point: torch.Tensor, logits: torch.Tensor | None, ctx: AttackContext
    ) -> torch.Tensor | None:
        """A per-image term (B,) added to the maximised objective at the step's point.

        `logits` are the model's logits at exactly `point` when the data term computed them
        (no copies, no transform), so a component can reuse that forward; otherwise None.
        """
        return None

    def refine(
        self, grad: torch.Tensor, point: torch.Tensor, attack: Attack, ctx: AttackContext
    ) -> torch.Tensor:
        return grad

    def process(self, grad: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return grad

    def params(self) -> dict[str, Any]:
        from dataclasses import asdict, is_dataclass

        return asdict(self) if is_dataclass(self) else {}


StepHook = Callable[[int, torch.Tensor, torch.Tensor], None]


class Attack:
    """Iterative gradient attack on the cross-entropy of a source model, composed of components.

    eps, alpha: in [0,1] pixel units. For ``norm='l2'`` they are L2 norms of δ in [0,1] units.
    max_forward: largest number of images sent through the model in one call; batches larger than
    that (after components' multipliers) are attacked in independent micro-batches. No image's inputs
    enter another's arithmetic, but CPU kernels may round differently for another batch shape, so the
    micro-batch size can change the last bits (README, "Evaluation protocol"); attacks with a
    `per_image` component (IR) use micro-batches of one image, so their floats never depend on the batch.
    """

    def __init__(
        self,
        components: Sequence[Component] = (),
        *,
        eps: float,
        alpha: float,
        steps: int,
        norm: str = "linf",
        random_start: bool | None = None,
        seed: int = 0,
        max_forward: int = 256,
        name: str | None = None,
    ):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if eps < 0 or alpha <= 0 or steps < 0:
            raise ValueError(
                f"need eps >= 0, alpha > 0, steps >= 0; got eps={eps}, alpha={alpha}, steps={steps}"
            )
        self.components = sorted(components, key=lambda c: c.order)
        self.eps, self.alpha, self.steps, self.norm = float(eps), float(alpha), int(steps), norm
        if random_start is None:
            defaults = [c.default_random_start for c in self.components if c.default_random_start is not None]
            random_start = all(defaults) if defaults else False
        self.random_start = bool(random_start)
        self.seed = int(seed)
        self.max_forward = int(max_forward)
        self.name = name or "+".join(["pgd", *[c.name for c in self.components]])

    def __repr__(self) -> str:
        return (
            f"Attack({self.name}, norm={self.norm}, eps={self.eps:.5g}, alpha={self.alpha:.5g}, "
            f"steps={self.steps}, random_start={self.random_start}, components={self.components})"
        )

    # ------------------------------------------------------------------ driver
    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        keys: Sequence[object] | None = None,
        on_step: StepHook | None = None,
        scope: Sequence[object] = (),
    ) -> torch.Tensor:
        """Adversarial images (float, in [0,1], inside the ε-ball) for clean images x with labels y.

        keys: one stable identifier per image (its id); seeds that image's random stream together
        with the attack seed and `scope` (e.g. attack and source names). Defaults to positions.
        on_step(t, x_adv, index): called after every step t = 1..steps with the current images of
        the micro-batch holding `index` (positions in x).
        """
        if x.ndim != 4 or y.shape != (x.shape[0],):
            raise ValueError(f"expected x (B,C,H,W) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
        keys = list(range(x.shape[0])) if keys is None else list(keys)
        streams = ImageStreams.for_keys(self.seed, keys, *scope, device=x.device)
        micro = self.images_per_forward()
        out = torch.empty_like(x)
        self.forwards_total = 0
        for start in range(0, x.shape[0], micro):
            index = torch.arange(start, min(start + micro, x.shape[0]), device=x.device)
            sub = streams.subset(index.tolist())
            out[index] = self._run_batch(model, x[index], y[index], sub, index, on_step)
        return out

    def _run_batch(self, model, x, y, streams, index, on_step) -> torch.Tensor:
        ctx = AttackContext(model, x, y, self.eps, self.alpha, self.norm, self.steps, streams)
        done: list[Component] = []
        try:
            for c in self.components:
                c.setup(ctx)
                done.append(c)
            delta = self.init_delta(ctx)
            for t in range(self.steps):
                ctx.step = t
                delta = self.step(delta, ctx)
                if on_step is not None:
                    on_step(t + 1, (x + delta).detach(), index)
        finally:
            for c in reversed(done):
                c.teardown(ctx)
            self.forwards_total += ctx.forwards
            self.last_context = ctx
        return (x + delta).detach()

    # ------------------------------------------------------------------ template steps
    def step(self, delta: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        point = ctx.x_adv = ctx.x + delta
        for c in self.components:
            point = c.lookahead(point, ctx)
        grad = self.gradient(point, ctx)
        for c in self.components:
            grad = c.process(grad, ctx)
        return self.update(delta, grad, ctx)

    def gradient(self, point: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        grad = self.loss_gradient(point, ctx.y, ctx)
        for c in self.components:
            grad = c.refine(grad, point, self, ctx)
        return grad

    def loss_gradient(
        self, point: torch.Tensor, y: torch.Tensor, ctx: AttackContext, regularise: bool = True
    ) -> torch.Tensor:
        """Gradient of the per-image objective at `point` (B',C,H,W); B' may differ from the batch.

        The data term is the cross-entropy averaged over the components' copies and transforms;
        regularisers (evaluated at the point, once) are added when `regularise`.
        """
        point = point.detach().requires_grad_(True)
        with torch.enable_grad():
            inputs, copies = point, 1
            for c in self.components:
                inputs, k = c.expand(inputs, ctx)
                copies *= k
            exact = copies == 1
            for c in self.components:
                transformed = c.transform(inputs, ctx)
                exact = exact and transformed is inputs
                inputs = transformed
            logits = ctx.forward(inputs)
            loss = self.data_loss(logits, y.repeat(copies)).view(copies, -1).mean(0)
            if regularise:
                for c in self.components:
                    term = c.regulariser(point, logits if exact else None, ctx)
                    if term is not None:
                        loss = loss + term
            (grad,) = torch.autograd.grad(loss.sum(), point)
        return grad.detach()

    def data_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-input loss to maximise: cross-entropy."""
        return F.cross_entropy(logits, y, reduction="none")

    def init_delta(self, ctx: AttackContext) -> torch.Tensor:
        x = ctx.x
        if not self.random_start or self.eps == 0:
            return torch.zeros_like(x)
        if self.norm == "linf":
            delta = (ctx.streams.rand(*x.shape[1:], dtype=x.dtype) * 2 - 1) * self.eps
        else:
            direction = ctx.streams.randn(*x.shape[1:], dtype=x.dtype)
            radius = ctx.streams.rand(1, dtype=x.dtype).view(-1, 1, 1, 1) * self.eps
            delta = direction / _l2(direction) * radius
        return self.project(delta, ctx)

    def update(self, delta: torch.Tensor, grad: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        if self.norm == "linf":
            step = grad.sign()
        else:
            step = grad / _l2(grad).clamp_min(1e-12)
        return self.project(delta + self.alpha * step, ctx)

    def project(self, delta: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """Onto the ε-ball, then into the image domain [0,1]."""
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = delta * (self.eps / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (ctx.x + delta).clamp(0, 1) - ctx.x

    # ------------------------------------------------------------------ introspection
    def inputs_per_image(self) -> int:
        """Peak model inputs per image in one forward: the data term's copies or a component's extra batch."""
        data = math.prod(c.batch_multiplier() for c in self.components)
        return max(1, data, *(c.extra_forwards() for c in self.components))

    def images_per_forward(self) -> int:
        """Images per micro-batch: as many as fit `max_forward` model inputs (at least one); one if a
        component is `per_image`."""
        if any(c.per_image for c in self.components):
            return 1
        return max(1, self.max_forward // self.inputs_per_image())

    def passes_per_step(self) -> float:
        """Planned forward(+backward) passes per image per step."""
        data = math.prod(c.cost_multiplier() for c in self.components)
        return data + sum(c.extra_forwards() for c in self.components)

    def forwards_per_step(self) -> float | None:
        """Images forwarded per image per step in the last micro-batch (cost accounting, includes
        one-off forwards such as IR's clean logits spread over the steps)."""
        ctx = getattr(self, "last_context", None)
        if ctx is None or self.steps == 0:
            return None
        return ctx.forwards / (ctx.batch * self.steps)


def rows_per_image(rows: int, ctx: AttackContext) -> int:
    """k for a copy-major batch of k·B rows (row c·B + b belongs to image b)."""
    if rows % ctx.batch:
        raise ValueError(f"{rows} rows is not a multiple of the batch of {ctx.batch} images")
    return rows // ctx.batch


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm, shaped (B,1,1,1) for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))
