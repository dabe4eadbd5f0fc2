"""Feature taps: intermediate layers of a model, named as in `model.named_modules()`.

Names are relative to the network inside a model wrapper (`layer2`, `blocks.3`, `features.16`); the
wrapper's own prefix (`net.`) may be given or left out. An ensemble's members are `members.<k>.`.
"""

from __future__ import annotations

import difflib

from torch import nn

from transferlab.errors import ConfigError


def _root(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)


def tap_points(model: nn.Module) -> list[tuple[str, str]]:
    """(name, module type) of every layer of the model that a component can tap."""
    return [(name, type(m).__name__) for name, m in _root(model).named_modules() if name]


def tap_module(model: nn.Module, name: str) -> nn.Module:
    """The layer `name` of `model`; an unknown name is refused with the closest tap points."""
    for root, prefix in ((_root(model), ""), (model, "")):
        stripped = name[4:] if name.startswith("net.") and root is not model else name
        try:
            return root.get_submodule(prefix + stripped)
        except AttributeError:
            continue
    names = [n for n, _ in tap_points(model)]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    label = getattr(model, "name", None) or type(model).__name__
    raise ConfigError(
        f"model {label!r} has no layer {name!r} to tap{hint}; `transferlab models --layers {label}` "
        "lists them"
    )
