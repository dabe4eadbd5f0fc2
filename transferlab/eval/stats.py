"""Interval estimates for rates."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (nan, nan) when n = 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # clamp: float rounding can put the bound a hair inside p at k = 0 or k = n
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def format_rate(successes: int, n: int) -> str:
    """'0.853 [0.801, 0.893]' style text for tables."""
    if n == 0:
        return "n/a (n=0)"
    lo, hi = wilson_interval(successes, n)
    return f"{successes / n:.3f} [{lo:.3f}, {hi:.3f}]"
