"""The attack loop as a template method, and the component interface.

Pixels are in [0,1]; ε and α are in the same units (the configs give them in 1/255 steps and the
registry divides by 255). One loop serves every method: each component overrides only the hooks it
changes, and the loop calls the hooks of all components in a fixed order (by `Component.order`, then
as composed).

Once per (micro-)batch: ``setup`` (register feature taps and hooks, cache constants), then the initial
perturbation, ``init`` (one owner; default zero, or uniform in the ball with random start).
Per step, for the current adversarial image x' = x + δ, inside every ``outer`` (nested in component
order; RAP's inner maximisation and late start):

1. ``lookahead``   point = x' (+ NI's look-ahead)
2. ``expand``      points to differentiate at (VR: Gaussian copies; Admix: mixes with pool images), batched
3. ``transform``   model inputs from points (DI: random resize-and-pad)
4. ``objective``   per-input quantity to maximise (one owner; default cross-entropy, or −CE to the target
                   class when targeted), averaged over copies, plus each ``regulariser`` term evaluated at
                   the point (IR: −λ·interaction); one backward for all
5. ``refine``      gradient correction needing extra gradients (VMI: variance tuning)
6. ``process``     gradient post-processing (TI: smoothing, then MI: momentum)
7. ``update``      the step rule (one owner; default sign step for L∞, normalised step for L2), then the
                   loop projects onto the ε-ball and [0,1]

Hooks with one owner (``init``, ``objective``, ``update``) are claimed by overriding them; two components
that claim one are refused by name. Each image's result depends only on that image: randomness comes from
per-image streams (`transferlab.rng.ImageStreams`), pool images are drawn by the image's own stream, and
every reduction is per image. The one residue is the micro-batch shape, which may change the kernels'
rounding; see `Attack` and `Component.per_image`.
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
    forwards: float = 0  # images passed through the model so far, in full forwards (cost accounting)
    x_adv: torch.Tensor | None = None  # the current adversarial image x + δ (before any look-ahead)
    state: dict[str, Any] = field(default_factory=dict)
    attack: Attack | None = None  # the attack running (for hooks that need its gradient or objective)
    target: torch.Tensor | None = None  # target classes (B,) of a targeted attack, else None
    pool: torch.Tensor | None = None  # (B, k, C, H, W) other images per image (`Component.pool_size`)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # feature taps of the last forward
    caller: str | None = None  # the component whose hook is running (forward accounting)
    forwards_by: dict[str, int] = field(default_factory=dict)
    max_rows: int | None = None  # model inputs one forward may hold (None: unchecked)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits; counts the images forwarded (per calling component) and refuses a batch
        larger than the micro-batch was sized for (a component that sends more inputs than it declares)."""
        rows = inputs.shape[0]
        if self.max_rows is not None and rows > self.max_rows:
            who = self.caller or "the data term"
            raise ValueError(
                f"{who} sent {rows} model inputs in one forward, but the micro-batch of {self.batch} "
                f"images was sized for {self.max_rows}: a component makes copies or extra inputs it does "
                "not declare (batch_multiplier / extra_forwards)"
            )
        # inputs count in full forwards of the source: a single ensemble member's count 1/K (SVRE)
        counted = rows * getattr(self.model, "call_share", 1.0)
        self.forwards += counted
        key = self.caller or "data"
        self.forwards_by[key] = self.forwards_by.get(key, 0) + counted
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
    #: parameters in 1/255 pixel units that a config may give relative to the budget, `sigma: 0.9375eps`
    #: (`transferlab.attacks.scaled`): absolute scales set for ε=16/255 do not carry over to other budgets
    pixel_params: ClassVar[tuple[str, ...]] = ()
    #: attacks an ensemble source only (SVRE); the battery then attacks two tiny models
    needs_ensemble: ClassVar[bool] = False
    #: parameters whose default changed after results were recorded, with their former value
    #: (`transferlab.attacks.defaults`): entries leaving them unset record the current default in the
    #: run's identity, and tables made before the change are labelled with the former value
    former_defaults: ClassVar[dict[str, Any]] = {}
    #: the iterate after t steps depends neither on the total step count nor on random draws, so an
    #: attack of fewer steps is a prefix of a longer one and the runner may read it off the longer run
    #: (`transferlab.runner.trajectories`); declare it only when that holds byte for byte (tested)
    prefix_stable: ClassVar[bool] = False

    def batch_multiplier(self) -> int:
        """Factor on the data term's model batch (VR: copies; VT: its neighbour call). Sizes micro-batches."""
        return 1

    def cost_multiplier(self) -> float:
        """Factor on the data term's forward+backward passes per step (VT: 1 + N neighbours)."""
        return float(self.batch_multiplier())

    def extra_forwards(self) -> int:
        """Model inputs per image per step sent outside the data term (IR: its masked batch); the peak,
        which sizes micro-batches."""
        return 0

    def extra_forwards_total(self, steps: int) -> float:
        """Model inputs per image over a `steps`-step attack outside the data term: `steps` times
        `extra_forwards()` unless only some steps send them (RAP's late start)."""
        return steps * self.extra_forwards()

    def setup_forwards(self) -> int:
        """Model inputs per image sent once per batch, before the steps (IR: its clean logits)."""
        return 0

    def setup_inputs(self) -> int:
        """Peak model inputs per image in one of those setup forwards (sizes micro-batches)."""
        return self.setup_forwards()

    def bind_source(self, members: int, attack: Attack) -> None:
        """Told before costs are declared and before every run: how many members the source model has
        (1, or K for an ensemble; SVRE's inner loop costs depend on it) and the attack it is part of."""

    def pool_size(self) -> int:
        """Other images per image this component mixes with (Admix); the loop provides them as
        `ctx.pool`, drawn from the dataset by each image's own stream, never from its batch-mates."""
        return 0

    def taps(self) -> tuple[str, ...]:
        """Names of model layers whose outputs the component reads as `ctx.features[name]` (FIA, NAA,
        ILA): registered before `setup`, refreshed by every forward, removed after the batch."""
        return ()

    def setup(self, ctx: AttackContext) -> None:
        """Once per batch, before the first step (register hooks, cache constants)."""

    def teardown(self, ctx: AttackContext) -> None:
        """Once per batch, after the last step, also on error (remove hooks)."""

    def init(self, ctx: AttackContext) -> torch.Tensor:
        """One owner: the initial perturbation δ₀ (B,C,H,W) before projection (ILA: another attack's)."""
        raise NotImplementedError

    def outer(self, delta: torch.Tensor, ctx: AttackContext, step: Callable[[torch.Tensor], torch.Tensor]
              ) -> torch.Tensor:
        """Wraps the whole step: return the next δ, normally `step(delta)` (RAP: an inner maximisation
        before it, or a late start)."""
        return step(delta)

    def lookahead(self, point: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return point

    def expand(self, points: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, int]:
        """Return (copies·B points, copies), copy-major: points[c·B + b] belongs to image b."""
        return points, 1

    def transform(self, inputs: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return inputs

    def objective(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, ctx: AttackContext
    ) -> torch.Tensor:
        """One owner: the per-input quantity (R,) to maximise from logits (R, classes); y and target
        (None unless targeted) are repeated to the R rows. Replaces cross-entropy."""
        raise NotImplementedError

    def update(self, delta: torch.Tensor, grad: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """One owner: the step rule; return the next δ before projection (the loop projects)."""
        raise NotImplementedError

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
#: hooks a single component may own: claimed by overriding them
OWNED_HOOKS = ("init", "objective", "update")


def owns(component: Component, hook: str) -> bool:
    """Whether the component overrides a single-owner hook."""
    return getattr(type(component), hook) is not getattr(Component, hook)


def hook_owners(components: Sequence[Component]) -> dict[str, Component]:
    """hook -> the component owning it; two claimants of one hook are refused, naming both."""
    owners: dict[str, Component] = {}
    for hook in OWNED_HOOKS:
        claim = [c for c in components if owns(c, hook)]
        if len(claim) > 1:
            from transferlab.errors import ConfigError

            raise ConfigError(
                f"components {claim[0].name!r} and {claim[1].name!r} both define the '{hook}' hook, which "
                "one component may own; compose only one of them"
            )
        if claim:
            owners[hook] = claim[0]
    return owners


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
        targeted: bool = False,
    ):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if eps < 0 or alpha <= 0 or steps < 0:
            raise ValueError(
                f"need eps >= 0, alpha > 0, steps >= 0; got eps={eps}, alpha={alpha}, steps={steps}"
            )
        self.components = sorted(components, key=lambda c: c.order)
        self.owners = hook_owners(self.components)
        self.targeted = bool(targeted)
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
        target: torch.Tensor | None = None,
        pool: Any = None,
    ) -> torch.Tensor:
        """Adversarial images (float, in [0,1], inside the ε-ball) for clean images x with labels y.

        keys: one stable identifier per image (its id); seeds that image's random stream together
        with the attack seed and `scope` (e.g. attack and source names). Defaults to positions.
        on_step(t, x_adv, index): called after every step t = 1..steps with the current images of
        the micro-batch holding `index` (positions in x).
        target: target classes (B,) of a targeted attack (required when `targeted`).
        pool: where components with a `pool_size` draw other images from: a tensor (N,C,H,W) of images
        not in the batch, or an object with ``draw(keys, k, streams) -> (B,k,C,H,W)``; each image draws
        with its own stream (seeded by its key), so its pool never depends on its batch-mates.
        """
        if x.ndim != 4 or y.shape != (x.shape[0],):
            raise ValueError(f"expected x (B,C,H,W) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if self.targeted and (target is None or target.shape != y.shape):
            raise ValueError(f"{self.name} is targeted: pass target classes (B,) with the images")
        keys = list(range(x.shape[0])) if keys is None else list(keys)
        self.bind_source(source_members(model))
        streams = ImageStreams.for_keys(self.seed, keys, *scope, device=x.device)
        pools = self._draw_pools(keys, scope, pool, x)
        micro = self.images_per_forward()
        out = torch.empty_like(x)
        self.forwards_total = 0
        self.forwards_by: dict[str, int] = {}
        for start in range(0, x.shape[0], micro):
            index = torch.arange(start, min(start + micro, x.shape[0]), device=x.device)
            sub = streams.subset(index.tolist())
            extra = {
                "target": None if not self.targeted else target[index],
                "pool": None if pools is None else pools[index],
            }
            out[index] = self._run_batch(model, x[index], y[index], sub, index, on_step, **extra)
        return out

    def prefix_stable(self) -> bool:
        """Whether this attack after t steps equals, byte for byte, the same attack of t steps: no random
        start and only `Component.prefix_stable` components (MI, NI, SI, TI)."""
        return not self.random_start and all(c.prefix_stable for c in self.components)

    def bind_source(self, members: int) -> Attack:
        """Tell the components the source's member count (`Component.bind_source`); returns self."""
        for c in self.components:
            c.bind_source(int(members), self)
        return self

    def pool_size(self) -> int:
        return max([0, *(c.pool_size() for c in self.components)])

    def _draw_pools(self, keys, scope, pool, x) -> torch.Tensor | None:
        """(B, k, C, H, W) pool images per image, drawn by per-image streams of their own."""
        k = self.pool_size()
        if not k:
            return None
        if pool is None:
            who = [c.name for c in self.components if c.pool_size()]
            raise ValueError(f"{', '.join(who)} mixes with other images: pass pool= (images not in the "
                             "batch)")
        streams = ImageStreams.for_keys(self.seed, keys, *scope, "pool")
        if isinstance(pool, torch.Tensor):
            index = streams.randint(pool.shape[0], k)
            return pool[index.flatten()].view(len(keys), k, *pool.shape[1:]).to(x)
        return pool.draw(keys, k, streams).to(x)

    def _run_batch(self, model, x, y, streams, index, on_step, target=None, pool=None) -> torch.Tensor:
        ctx = AttackContext(model, x, y, self.eps, self.alpha, self.norm, self.steps, streams,
                            attack=self, target=target, pool=pool)
        ctx.max_rows = max(self.max_forward, self.inputs_per_image()) if ctx.batch > 1 else None
        done: list[Component] = []
        taps = self._tap(ctx)
        try:
            for c in self.components:
                ctx.caller = c.name
                c.setup(ctx)
                done.append(c)
            ctx.caller = None
            delta = self.init_delta(ctx)
            select = getattr(model, "select_step", None)  # a weight collection (LGV): sets per step
            for t in range(self.steps):
                ctx.step = t
                if select is not None:
                    select(t)
                delta = self.outer_step(delta, ctx)
                if on_step is not None:
                    on_step(t + 1, (x + delta).detach(), index)
        finally:
            if getattr(model, "select_step", None) is not None:
                model.select_step(None)
            for c in reversed(done):
                c.teardown(ctx)
            for handle in taps:
                handle.remove()
            ctx.features.clear()
            self.forwards_total += ctx.forwards
            for key, n in ctx.forwards_by.items():
                self.forwards_by[key] = self.forwards_by.get(key, 0) + n
            self.last_context = ctx
        self.check_forwards(ctx)
        return (x + delta).detach()

    def _tap(self, ctx: AttackContext) -> list:
        """Forward hooks storing the outputs of every layer a component taps in `ctx.features`."""
        from transferlab.attacks.taps import tap_module

        handles = []
        for name in dict.fromkeys(n for c in self.components for n in c.taps()):
            module = tap_module(ctx.model, name)

            def store(_module, _inputs, output, name=name):
                ctx.features[name] = output

            handles.append(module.register_forward_hook(store))
        return handles

    def declared_forwards(self, images: int) -> float:
        """Model inputs the components declare for `images` images over the whole attack."""
        return images * self.passes_total()

    def passes_total(self) -> float:
        """Declared forward(+backward) passes per image over the whole attack: the data term every step,
        each component's extra inputs over the steps, and one-off setup inputs."""
        data = math.prod(c.cost_multiplier() for c in self.components)
        extra = sum(c.extra_forwards_total(self.steps) for c in self.components)
        setup = sum(c.setup_forwards() for c in self.components)
        return self.steps * data + extra + setup

    def check_forwards(self, ctx: AttackContext) -> None:
        """Refuse an attack whose components sent more model inputs than they declare (the cost tables
        and the micro-batch sizes rest on the declarations), naming who sent them."""
        declared = self.declared_forwards(ctx.batch)
        if ctx.forwards <= declared + 1e-9:
            return
        sent = ", ".join(f"{k}: {v}" for k, v in ctx.forwards_by.items())
        raise ValueError(
            f"attack {self.name!r} sent {ctx.forwards} model inputs for {ctx.batch} images over {self.steps} "
            f"steps, but its components declare {declared:g} (passes per step {self.passes_per_step():g}, "
            f"setup {sum(c.setup_forwards() for c in self.components)} per image); sent by {sent}. Declare "
            "them with batch_multiplier / cost_multiplier / extra_forwards / setup_forwards"
        )

    # ------------------------------------------------------------------ template steps
    def outer_step(self, delta: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """One step, wrapped by every component's `outer` (the first component outermost)."""

        def wrap(inner, component):
            return lambda d: component.outer(d, ctx, inner)

        step = lambda d: self.step(d, ctx)  # noqa: E731
        for c in reversed(self.components):
            if type(c).outer is not Component.outer:
                step = wrap(step, c)
        return step(delta)

    def step(self, delta: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        point = ctx.x_adv = ctx.x + delta
        for c in self.components:
            ctx.caller = c.name
            point = c.lookahead(point, ctx)
        ctx.caller = None
        grad = self.gradient(point, ctx)
        for c in self.components:
            ctx.caller = c.name
            grad = c.process(grad, ctx)
        ctx.caller = None
        return self.update(delta, grad, ctx)

    def gradient(self, point: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        grad = self.loss_gradient(point, ctx.y, ctx)
        for c in self.components:
            ctx.caller = c.name
            grad = c.refine(grad, point, self, ctx)
        ctx.caller = None
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
                if k > c.batch_multiplier():
                    raise ValueError(
                        f"component {c.name!r} makes {k} copies per image in expand but declares "
                        f"batch_multiplier() = {c.batch_multiplier()}: declare them, so micro-batches and "
                        "costs count them"
                    )
                copies *= k
            exact = copies == 1
            for c in self.components:
                transformed = c.transform(inputs, ctx)
                exact = exact and transformed is inputs
                inputs = transformed
            logits = ctx.forward(inputs)
            target = None
            if ctx.target is not None:
                target = ctx.target.repeat(inputs.shape[0] // ctx.batch)
            rows_y = y.repeat(copies)
            members = getattr(ctx.model, "member_logits", None)
            if members and getattr(ctx.model, "fusion", None) == "loss":  # an ensemble fusing losses
                value = torch.stack([self.objective(z, rows_y, target, ctx) for z in members]).mean(0)
            else:
                value = self.objective(logits, rows_y, target, ctx)
            loss = value.view(copies, -1).mean(0)
            if regularise:
                caller = ctx.caller
                for c in self.components:
                    ctx.caller = c.name
                    term = c.regulariser(point, logits if exact else None, ctx)
                    if term is not None:
                        loss = loss + term
                ctx.caller = caller
            (grad,) = torch.autograd.grad(loss.sum(), point)
        return grad.detach()

    def objective(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, ctx: AttackContext
    ) -> torch.Tensor:
        """Per-input quantity to maximise: the owner's, else cross-entropy (−CE to the target class)."""
        owner = self.owners.get("objective")
        if owner is not None:
            return owner.objective(logits, y, target, ctx)
        if target is not None:
            return -F.cross_entropy(logits, target, reduction="none")
        return F.cross_entropy(logits, y, reduction="none")

    def init_delta(self, ctx: AttackContext) -> torch.Tensor:
        owner = self.owners.get("init")
        if owner is not None:
            ctx.caller = owner.name
            delta = owner.init(ctx)
            ctx.caller = None
            return self.project(delta, ctx)
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
        owner = self.owners.get("update")
        if owner is not None:
            return self.project(owner.update(delta, grad, ctx), ctx)
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
        return max(1, data, *(c.extra_forwards() for c in self.components),
                   *(c.setup_inputs() for c in self.components))

    def images_per_forward(self) -> int:
        """Images per micro-batch: as many as fit `max_forward` model inputs (at least one); one if a
        component is `per_image`."""
        if any(c.per_image for c in self.components):
            return 1
        return max(1, self.max_forward // self.inputs_per_image())

    def passes_per_step(self) -> float:
        """Planned forward(+backward) passes per image per step (at the peak: every component's extras;
        `passes_total` is the whole attack's)."""
        data = math.prod(c.cost_multiplier() for c in self.components)
        steps = max(1, self.steps)
        return data + sum(max(c.extra_forwards(), c.extra_forwards_total(steps) / steps)
                          for c in self.components)

    def forwards_per_step(self) -> float | None:
        """Images forwarded per image per step in the last micro-batch (cost accounting, includes
        one-off forwards such as IR's clean logits spread over the steps)."""
        ctx = getattr(self, "last_context", None)
        if ctx is None or self.steps == 0:
            return None
        return ctx.forwards / (ctx.batch * self.steps)


def source_members(model: nn.Module) -> int:
    """Members of a source model: an ensemble's (a collection's sets), else 1."""
    members = getattr(model, "members", None)
    return len(members) if members is not None else 1


def rows_per_image(rows: int, ctx: AttackContext) -> int:
    """k for a copy-major batch of k·B rows (row c·B + b belongs to image b)."""
    if rows % ctx.batch:
        raise ValueError(f"{rows} rows is not a multiple of the batch of {ctx.batch} images")
    return rows // ctx.batch


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm, shaped (B,1,1,1) for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))
