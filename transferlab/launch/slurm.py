"""`transferlab submit`: one run as SLURM tasks through submitit (`pip install "transferlab[slurm]"`).

The run is split into N = nodes × tasks-per-node shards (one task per GPU by default). Task r runs
`transferlab run CONFIG --out DIR --shard r/N` on its node's GPU `cuda:<local rank>` (CPU without
CUDA); the tasks share `--out`, which must be on a filesystem every node sees. The last task to finish
writes the tables (`transferlab report DIR` writes them at any time later). A preempted or timed-out
task is requeued by submitit and resumes from the finished blocks, so resubmitting never repeats work.

`--array` submits N one-task jobs (a job array, which the scheduler can start as nodes come free)
instead of one job of N tasks. Without SLURM, `--cluster local` runs the same tasks as local processes
(what the tests use). The equivalent plain sbatch script is scripts/slurm/shards.sbatch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError

try:
    import submitit
    from submitit.helpers import Checkpointable
except ModuleNotFoundError:  # an optional extra: the error says how to install it when used
    submitit = None
    Checkpointable = object


class SubmitError(TransferlabError):
    """The submission cannot be made (submitit missing, bad sizes)."""


class ShardTask(Checkpointable):
    """One shard of a run inside a SLURM task; requeued as is on preemption or timeout (it resumes)."""

    def __init__(self, argv: list[str], shards: int | None = None, index: int | None = None):
        self.argv = list(argv)
        self.shards = shards  # None: one job of several tasks (the task's rank says which shard)
        self.index = index

    def shard(self) -> tuple[int, int, int]:
        """(shard, shards, local rank) of this task."""
        if self.shards is not None:
            return int(self.index or 0), self.shards, 0
        env = submitit.JobEnvironment()
        return env.global_rank, env.num_tasks, env.local_rank

    def __call__(self) -> int:
        import os

        import torch

        from transferlab import cli

        index, count, local = self.shard()
        if self.shards is None and "SLURM_CPUS_PER_TASK" not in os.environ:
            # tasks that share a node without being bound to cores (submitit's local executor, SLURM
            # without --cpus-per-task): the thread rule divides the cores among them
            env = submitit.JobEnvironment()
            os.environ["LOCAL_WORLD_SIZE"] = str(max(1, env.num_tasks // max(1, env.num_nodes)))
        argv = list(self.argv)
        if count > 1:
            argv += ["--shard", f"{index}/{count}"]
        if torch.cuda.is_available() and "--device" not in argv:
            argv += ["--device", f"cuda:{local}"]
        code = cli.main(argv)
        if code:
            raise SubmitError(f"shard {index}/{count} failed (exit {code}); see this task's log")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Requeue this task unchanged: its finished blocks are cached, so it resumes."""
        return submitit.helpers.DelayedSubmission(ShardTask(self.argv, self.shards, self.index))


def submit(
    config: str,
    overrides: list[str],
    out: str,
    *,
    nodes: int = 1,
    tasks_per_node: int | None = None,
    gpus_per_node: int = 0,
    cpus_per_task: int | None = None,
    partition: str | None = None,
    time_min: int = 240,
    mem_gb: float | None = None,
    array: bool = False,
    cluster: str | None = None,
    logs: str | None = None,
    only: str | None = None,
    plugins: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> list:
    """Submit the run's shards; returns the submitit jobs."""
    if submitit is None:
        raise SubmitError('transferlab submit needs submitit: pip install "transferlab[slurm]" (or use the '
                          "sbatch script in scripts/slurm/shards.sbatch)")
    tasks = tasks_per_node or max(1, gpus_per_node)
    for name, value in (("--nodes", nodes), ("--tasks-per-node", tasks)):
        if value < 1:
            raise SubmitError(f"{name} must be at least 1, got {value}")
    shards = nodes * tasks
    argv = ["run", config, "--out", out, "--quiet", *overrides]
    if only:
        argv += ["--only", only]
    for module in plugins or []:
        argv += ["--plugin", module]
    folder = Path(logs or Path(out).parent / f"{Path(out).name}.slurm-logs") / "%j"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": time_min, "name": f"transferlab-{Path(out).name}"}
    if cpus_per_task:
        params["cpus_per_task"] = cpus_per_task
    if mem_gb:
        params["mem_gb"] = mem_gb
    if partition:
        params["slurm_partition"] = partition
    if array:
        params.update(nodes=1, tasks_per_node=1, gpus_per_node=min(gpus_per_node, 1) if gpus_per_node else 0)
        params["slurm_array_parallelism"] = shards
    else:
        params.update(nodes=nodes, tasks_per_node=tasks, gpus_per_node=gpus_per_node)
    params.update(extra or {})
    executor.update_parameters(**{k: v for k, v in params.items() if _accepts(executor, k)})
    if array:
        with executor.batch():
            jobs = [executor.submit(ShardTask(argv, shards, k)) for k in range(shards)]
    else:
        jobs = [executor.submit(ShardTask(argv))]
    print(f"transferlab: submitted {shards} shard(s) of {config} into {out} as "
          f"{'a job array of ' + str(shards) if array else 'one job of ' + str(shards) + ' task(s)'} "
          f"({', '.join(str(j.job_id) for j in jobs)}); logs in {folder.parent}", file=sys.stderr)
    return jobs


def _accepts(executor, key: str) -> bool:
    """Whether the chosen cluster takes a parameter (the local executor has no partition, no GPUs)."""
    if key.startswith("slurm_"):
        return executor.cluster == "slurm"
    return True
