"""Registry of attack components and the one factory, `build_attack`.

An attack is the base loop (PGD / I-FGSM) plus a list of components, written as a string
``"mi+sgm+ir"`` or a list ``["pgd", "mi", "sgm", "ir"]``; presets name common combinations.
A component outside the package is registered with ``@register("name")`` on import, or named by
its import path ``"my_pkg.my_attack:MyComponent"`` in a config.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from transferlab.attacks.base import Attack, Component
from transferlab.attacks.scaled import resolve_relative
from transferlab.errors import ConfigError

COMPONENTS: dict[str, type[Component]] = {}

#: the base loop: naming it adds nothing (kept so "pgd+ir" reads naturally)
BASE_NAMES = ("pgd", "ifgsm", "i-fgsm", "bim")

PRESETS: dict[str, list[str]] = {
    "hybrid_ir": ["mi", "vr", "sgm", "ir"],
    "vmi": ["mi", "vt"],
    "vni": ["ni", "vt"],
}


def register(name: str):
    """Class decorator: register a Component subclass under `name`."""

    def deco(cls: type[Component]) -> type[Component]:
        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise TypeError(f"@register({name!r}) needs a Component subclass, got {cls!r}")
        existing = COMPONENTS.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"component name {name!r} already registered by {existing.__module__}")
        cls.name = name
        COMPONENTS[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    importlib.import_module("transferlab.attacks.components")


def resolve_component(name: str) -> type[Component]:
    """Component class for a registered name or an import path ``module:Class``."""
    _load_builtins()
    if name in COMPONENTS:
        return COMPONENTS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a plug-in may fail on import in any way: say which one, no traceback
            raise ConfigError(
                f"cannot import plug-in module {module_name!r} for component {name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        cls = getattr(module, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise ConfigError(f"{name!r} does not name a transferlab Component subclass")
        if cls.name in ("component", None) or COMPONENTS.get(cls.name) is not cls:
            register(name)(cls)
        return cls
    close = difflib.get_close_matches(name, [*COMPONENTS, *PRESETS, *BASE_NAMES], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown attack component {name!r}{hint}; `transferlab attacks` lists them")


def parse_method(method: str | Sequence[str]) -> list[str]:
    """Component names from ``"mi+sgm+ir"`` or a list, presets expanded, base names dropped, order kept."""
    parts = method.split("+") if isinstance(method, str) else list(method)
    names: list[str] = []
    for raw in parts:
        part = str(raw).strip()
        if not part:
            raise ConfigError(f"empty component in method {method!r}")
        expanded = PRESETS.get(part, [part])
        for n in expanded:
            if n.lower() in BASE_NAMES:
                continue
            if n in names:
                raise ConfigError(f"component {n!r} appears twice in method {method!r}")
            names.append(n)
    return names


def make_component(name: str, params: Mapping[str, Any] | None = None, where: str = "") -> Component:
    """Instantiate a component, rejecting unknown parameters by name."""
    cls = resolve_component(name)
    params = dict(params or {})
    if dataclasses.is_dataclass(cls):
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in params:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{where}unknown parameter {key!r} for component {name!r}{hint}; "
                    f"allowed: {sorted(fields)}"
                )
    elif params:
        raise ConfigError(f"{where}component {name!r} takes no parameters, got {sorted(params)}")
    return cls(**params)


def build_attack(
    method: str | Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool | None = None,
    seed: int = 0,
    max_forward: int = 256,
    name: str | None = None,
    where: str = "",
    targeted: bool = False,
    budget: float | None = None,
) -> Attack:
    """The one factory. eps and alpha in [0,1] pixel units; `params` maps component name -> parameters.

    budget: ε in 1/255 units per pixel, against which pixel parameters given as ``'<k>eps'`` resolve
    (`transferlab.attacks.scaled`); default ε·255 for L∞ (an L2 attack must pass it)."""
    names = parse_method(method)
    params = dict(params or {})
    for key in params:
        if key not in names:
            raise ConfigError(f"{where}parameters given for {key!r}, which is not in method {method!r}")
    if budget is None and norm == "linf":
        budget = eps * 255.0
    components = [
        make_component(n, resolve_relative(resolve_component(n), n, params.get(n), budget, where), where)
        for n in names
    ]
    return Attack(
        components,
        eps=eps,
        alpha=alpha,
        steps=steps,
        norm=norm,
        random_start=random_start,
        seed=seed,
        max_forward=max_forward,
        name=name or "+".join(["pgd", *names]),
        targeted=targeted,
    )


def describe_components() -> list[dict[str, Any]]:
    """Every registered component with its parameters and defaults (for `transferlab attacks`)."""
    _load_builtins()
    rows = []
    for name, cls in sorted(COMPONENTS.items()):
        defaults = {}
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                if f.default is not dataclasses.MISSING:
                    defaults[f.name] = f.default
                elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                    defaults[f.name] = f.default_factory()  # type: ignore[misc]
        paragraph = (cls.__doc__ or "").strip().split("\n\n")[0]
        doc = " ".join(line.strip() for line in paragraph.splitlines())
        rows.append({"name": name, "params": defaults, "doc": doc, "module": cls.__module__,
                     "passes": default_passes(cls), "ensemble": cls.needs_ensemble})
    return rows


#: ensemble size at which `transferlab attacks` shows the cost of ensemble-only components
ENSEMBLE_SHOWN = 4


def default_passes(cls: type[Component], resolution: int = 224) -> float | None:
    """Forward+backward passes per image per step of PGD with this component at its defaults (at
    `resolution` px, for components whose cost depends on the image size); None if it cannot be built
    without parameters."""
    try:
        attack = Attack([cls()], eps=16 / 255, alpha=2 / 255, steps=1)
        if cls.needs_ensemble:  # member passes with a 4-model ensemble
            return attack.bind_source(ENSEMBLE_SHOWN).passes_per_step() * ENSEMBLE_SHOWN
        return attack.passes_per_step()
    except Exception:  # a component with required parameters: its cost depends on them
        return None
