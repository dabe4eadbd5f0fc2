"""Pixel-scale parameters given relative to the budget: ``sigma: 0.9375eps`` means 0.9375·ε.

A published absolute scale (VR's σ = 15/255) was set for one budget (ε = 16/255); at ε = 4/255 it is four
times the perturbation. A component lists such parameters in ``Component.pixel_params`` (1/255 units); a
config may then give them as ``<k>eps`` (or ``<k>*eps``, ``eps``), resolved against the attack entry's ε in
1/255 units (for L2 the RMS per pixel) before the component is built. The component holds the resolved
value and the dry run prints it beside the expression; job keys hold the config entry as written (with its
ε), so `3.75` and `0.9375eps` at ε = 4 are computed once each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from transferlab.errors import ConfigError

_RELATIVE = re.compile(r"^\s*(?:(\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*\*?\s*)?eps\s*$")


def relative_factor(value: Any) -> float | None:
    """k for a string ``'<k>eps'`` / ``'<k>*eps'`` / ``'eps'``; None for anything else."""
    if not isinstance(value, str):
        return None
    match = _RELATIVE.match(value)
    if match is None:
        return None
    number = value.strip()[: -len("eps")].rstrip().rstrip("*").strip()
    return float(number) if number else 1.0


def resolve_relative(cls: type, name: str, params: Mapping[str, Any] | None, budget: float | None,
                     where: str = "") -> dict[str, Any]:
    """``params`` with every ``<k>eps`` value of a pixel parameter replaced by k·budget (1/255 units).

    A relative value for a parameter that is not in pixel units, a malformed one, or one without a known
    budget is a ConfigError naming the component and the parameter."""
    out = dict(params or {})
    allowed = tuple(getattr(cls, "pixel_params", ()))
    for key, value in out.items():
        factor = relative_factor(value)
        if factor is None:
            if isinstance(value, str) and "eps" in value:
                raise ConfigError(f"{where}{name}.{key}: {value!r} is not a budget-relative value; "
                                  "write it as '<k>eps', e.g. '0.25eps'")
            continue
        if key not in allowed:
            which = f"only {', '.join(allowed)} can" if allowed else "none of its parameters can"
            raise ConfigError(f"{where}{name}.{key}: {value!r} — {key} is not in pixel units, so it cannot "
                              f"be given relative to ε ({which})")
        if budget is None:
            raise ConfigError(f"{where}{name}.{key}: {value!r} needs the budget ε in 1/255 units "
                              "(build_attack(..., budget=ε))")
        out[key] = factor * float(budget)
    return out
