"""Per-image random streams.

Every random draw in an attack (random start, noise copies, masks, input diversity) comes from a
generator seeded by (run seed, attack, source, image id), so an image's result never depends on
its batch-mates or on its position in the batch, and the same seed gives the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, stable across processes and platforms."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ImageStreams:
    """One CPU `torch.Generator` per image; draws are stacked into a batch on the target device."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.generators = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(s))
            self.generators.append(g)
        self.device = torch.device(device)

    @classmethod
    def for_keys(cls, seed: int, keys: Sequence[object], *scope: object, device="cpu") -> ImageStreams:
        return cls([stable_seed(seed, *scope, k) for k in keys], device=device)

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, index: Sequence[int]) -> ImageStreams:
        out = ImageStreams([], self.device)
        out.generators = [self.generators[i] for i in index]
        return out

    def _stack(self, draw, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        parts = [draw(tuple(shape), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(parts).to(self.device)

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0,1) draws of shape (B, *shape)."""
        return self._stack(torch.rand, shape, dtype)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws of shape (B, *shape)."""
        return self._stack(torch.randn, shape, dtype)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """Integers in [0, high) of shape (B, *shape)."""
        parts = [torch.randint(high, tuple(shape), generator=g) for g in self.generators]
        return torch.stack(parts).to(self.device)
