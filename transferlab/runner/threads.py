"""How many torch threads a process uses: processes × threads must not exceed the cores it was given.

Two torch processes with the default thread count on 2 cores slow each other far more than 2×
(`bench/threads.py` measures it). The rule, in order:

1. `--threads T` on the command line;
2. `OMP_NUM_THREADS` when the user set it;
3. the cores this process may run on (its CPU affinity, which `taskset`, SLURM and containers
   restrict), divided by the processes torchrun started beside it (`LOCAL_WORLD_SIZE`, which share
   that affinity), at most SLURM's `SLURM_CPUS_PER_TASK` (for clusters that do not bind tasks to
   cores), at least 1.

Independent `--shard` processes started by hand on one machine cannot see each other: give each
`--threads` (cores ÷ processes).
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int | None = None) -> dict:
    """The thread count by the rule above, and why."""
    cores = available_cores()
    if requested is not None and (isinstance(requested, bool) or int(requested) < 1):
        from transferlab.errors import ConfigError

        raise ConfigError(f"--threads {requested}: the number of torch threads must be at least 1")
    if requested is not None:
        threads, rule = int(requested), "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads, rule = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        threads = max(1, cores // max(1, processes))
        rule = f"{cores} cores / {processes} torchrun processes" if processes > 1 else f"{cores} cores"
        per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if per_task.isdigit() and 0 < int(per_task) < threads:
            threads, rule = int(per_task), f"SLURM_CPUS_PER_TASK={per_task} (of {cores} cores)"
    return {"threads": max(1, threads), "cores": cores, "rule": rule}


def apply_threads(requested: int | None = None) -> dict:
    """Set torch's intra-op threads by the rule (before any parallel work) and return the decision."""
    decision = choose_threads(requested)
    torch.set_num_threads(decision["threads"])
    decision["torch_threads"] = torch.get_num_threads()
    return decision
