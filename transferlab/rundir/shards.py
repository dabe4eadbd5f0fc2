"""How a run is split over processes: shard K of N attacks every N-th block of eligible images.

The eligible images of a source are cut into blocks of `batch_size` consecutive positions (positions
0..B−1, B..2B−1, ...), the batches a one-process run attacks. Shard K of N takes the blocks whose index
is ≡ K (mod N). With `batch_size: 1` this is the images whose position is ≡ K (mod N); for larger
batches whole blocks move together, because an image's floats depend (in their last bits) on the shape
of the batch it is attacked in: each image is attacked in the same batch as in a one-process run, so
the shards together write a one-process run's bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from transferlab.errors import TransferlabError
from transferlab.rundir.marker import WHOLE_RUN

T = TypeVar("T")


class ShardError(TransferlabError):
    """A `--shard` value or a launcher environment that does not describe a shard."""


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def scope(self) -> str:
        """The lock and record name of this shard (`run` for a one-process run)."""
        return f"shard-{self.index}-of-{self.count}" if self.sharded else WHOLE_RUN

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, block: int) -> bool:
        return block % self.count == self.index

    def blocks(self, items: Sequence[T], size: int) -> list[list[T]]:
        """This shard's blocks of `items` (blocks of `size` consecutive items, every `count`-th)."""
        return [
            list(items[start : start + size])
            for b, start in enumerate(range(0, len(items), size))
            if self.owns(b)
        ]


WHOLE = Shard()


def all_blocks(items: Sequence[T], size: int) -> list[list[T]]:
    return WHOLE.blocks(items, size)


def parse_shard(text: str) -> Shard:
    """'K/N' with 0 <= K < N (shards are numbered from 0, as SLURM array task ids and torchrun ranks)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ShardError(f"--shard {text!r} must look like K/N (shard K of N, K = 0..N-1), e.g. --shard 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ShardError(f"--shard {text}: the number of shards N must be at least 1")
    if not 0 <= index < count:
        raise ShardError(
            f"--shard {text}: shard K must be in 0..{count - 1} for N = {count} (shards count from 0)"
        )
    return Shard(index, count)


def launcher_shard() -> Shard | None:
    """The shard a launcher gives this process: torchrun's RANK/WORLD_SIZE when the world has more than
    one process, else None."""
    world = os.environ.get("WORLD_SIZE")
    rank = os.environ.get("RANK")
    if world is None or rank is None or int(world) <= 1:
        return None
    return parse_shard(f"{rank}/{world}")
