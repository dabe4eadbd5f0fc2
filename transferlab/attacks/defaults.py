"""Defaults that changed after results were recorded with them, kept in each run's identity.

A component lists such parameters in `Component.former_defaults` (name -> the value it had before). A
config entry that leaves one unset records the current default in its resolved spec (`spec["defaults"]`),
so the job key differs from that of a run made under the former default (whose directory is then never
resumed as the new one), and tables label the value that ran: the recorded one, or for a spec recorded
before the change (no record) the former default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transferlab.attacks.registry import parse_method, resolve_component


def _default(cls: type, field: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == field:
            return f.default
    raise KeyError(f"{cls.__name__} has no parameter {field!r} (listed in former_defaults)")


def _unset(method: str | list, params: dict, value) -> dict[str, dict[str, Any]]:
    """component -> {parameter: value(cls, parameter)} for the changed defaults an entry leaves unset."""
    out: dict[str, dict[str, Any]] = {}
    for name in parse_method(method):
        cls = resolve_component(name)
        given = params.get(name) or {}
        unset = {k: value(cls, k) for k in getattr(cls, "former_defaults", {}) if k not in given}
        if unset:
            out[name] = unset
    return out


def recorded_defaults(method: str | list, params: dict) -> dict[str, dict[str, Any]]:
    """component -> {parameter: current default} for the changed defaults an entry leaves unset."""
    return _unset(method, params, _default)


def defaults_that_ran(spec: dict) -> tuple[dict[str, dict[str, Any]], bool]:
    """(component -> {parameter: value}, recorded) for the changed defaults a resolved spec left unset:
    its record, or for a spec made before the change (no record) the former values (recorded False)."""
    if "defaults" in spec:
        return spec["defaults"], True
    return _unset(spec["method"], spec["params"], lambda cls, k: cls.former_defaults[k]), False
