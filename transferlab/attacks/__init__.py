"""Attacks: one template-method loop (`Attack`) plus composable components, built by `build_attack`."""

from transferlab.attacks.base import Attack, AttackContext, Component
from transferlab.attacks.registry import (
    COMPONENTS,
    PRESETS,
    build_attack,
    describe_components,
    parse_method,
    register,
)

__all__ = [
    "Attack",
    "AttackContext",
    "Component",
    "COMPONENTS",
    "PRESETS",
    "build_attack",
    "describe_components",
    "parse_method",
    "register",
]
