"""torchrun: each rank is one shard of the run, on its own device; ranks meet only at the end.

Under `torchrun --nproc_per_node G [--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT]` every
process sees RANK, WORLD_SIZE and LOCAL_RANK. Rank r of a world of W takes shard r/W and the device
`cuda:LOCAL_RANK` where CUDA exists (CPU otherwise). The ranks share `--out` (on a shared filesystem for
several nodes): the clean predictions are decided once under the directory's `select` lock, each rank
attacks and evaluates its own blocks, then the ranks meet at one barrier (NCCL on GPUs, gloo on CPU)
and rank 0 writes the reports.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch

#: how long a rank waits at the final barrier for the slowest rank (their shares differ by a block)
BARRIER_TIMEOUT = datetime.timedelta(hours=int(os.environ.get("TRANSFERLAB_BARRIER_HOURS", "72")))


@dataclass
class World:
    rank: int
    size: int
    local_rank: int
    backend: str
    launcher: str = "torchrun"

    def device(self, configured: str) -> str:
        """This rank's device: its local GPU when the config allows CUDA and CUDA exists, else CPU."""
        if configured in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return "cpu" if configured in ("auto", "cuda") else configured

    def info(self) -> dict:
        return {
            "launcher": self.launcher,
            "rank": self.rank,
            "world_size": self.size,
            "local_rank": self.local_rank,
            "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
            "backend": self.backend,
            "host": socket.gethostname(),
        }


def launched() -> bool:
    """Whether this process was started by torchrun (or torch.distributed.run) in a world of > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def join_world() -> World:
    """Join the process group torchrun set up (NCCL with CUDA, gloo otherwise)."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def leave_world() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
