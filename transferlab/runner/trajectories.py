"""Attacks that differ only in their step count share one trajectory.

A compute-matched table runs MI at 10, 22, 40, … 410 steps. With a fixed α, no random start and
prefix-stable components (`Component.prefix_stable`: MI, NI, SI, TI), the image after t steps of the
410-step attack is byte for byte the image a t-step attack ends with, so one run of the longest attack
that still lacks a block gives every shorter one its block at its step: 410 passes per image instead of
the sum of all (1,133 for the eight MI entries of the ImageNet-lite baselines).

Each job keeps its own key, PNGs, evaluation and accounting. Its seconds are those of the shared run up
to its last step (what it would cost alone) and its share of the counted forwards; the cost record names
the attack whose run produced it (`trajectory_of`). Runs recording per-step predictions
(`eval.record_every`) do not share: each job records its own steps.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from transferlab.data import Item
from transferlab.rundir import Job
from transferlab.runner.attacking import (
    cost_record,
    job_record,
    load_chunk,
    run_chunk,
    store_chunk,
    usable_adv,
)

if TYPE_CHECKING:
    from transferlab.runner.experiment import Experiment


def trajectory_groups(exp: Experiment, jobs: list[Job]) -> list[list[Job]]:
    """The jobs in config order, those that may share a trajectory grouped (ordered by steps, at the
    place of the group's first job); every other job is a group of its own."""
    groups: dict[object, list[Job]] = {}
    for job in jobs:
        key = share_key(exp.cfg, job.spec, exp.build(job))
        groups.setdefault(job if key is None else (job.source, key), []).append(job)
    return [sorted(group, key=lambda j: j.spec["steps"]) for group in groups.values()]


def share_key(cfg: dict, spec: dict, attack) -> str | None:
    """What entries sharing one trajectory have in common (their spec but `steps`, and their model inputs
    per call), or None for an entry that runs alone (not prefix-stable, no steps, or per-step predictions
    recorded)."""
    if cfg["eval"]["record_every"] or spec["steps"] < 1 or not attack.prefix_stable():
        return None
    shared = {k: v for k, v in spec.items() if k != "steps"}
    shared["max_forward"] = attack.max_forward  # a recorded one may differ from the rule
    return json.dumps(shared, sort_keys=True, default=str)


def attack_group(exp: Experiment, group: list[Job], blocks: list[list[Item]]) -> None:
    """Attack every job of a shared-trajectory group on the blocks it lacks: per block, one run of the
    longest job lacking it, read off at each shorter job's last step."""
    for job in group:
        job_record(exp, job)
    lacking = {
        job: {b for b, block in enumerate(blocks) if not all(usable_adv(exp, job, i) for i in block)}
        for job in group
    }
    todo = [b for b in range(len(blocks)) if any(b in lacking[job] for job in group)]
    if not todo:
        return
    attacks = {job: exp.build(job) for job in group}
    costs = {job: cost_record(exp, job) for job in group}
    names = ", ".join(job.attack for job in group if lacking[job])
    bar = tqdm(
        total=sum(len(blocks[b]) for b in todo), desc=f"{names} on {group[0].source} (one trajectory)",
        unit="img", disable=not exp.progress,
    )
    for b in todo:
        members = [job for job in group if b in lacking[job]]
        longest = members[-1]
        chunk = blocks[b]
        x, y = load_chunk(exp, longest, chunk)
        for job in members[:-1]:
            exp.run_dir.eval_file(job.attack, job.source, chunk[0].image_id).unlink(missing_ok=True)
        reader = StepReader(x, {job.spec["steps"] for job in members[:-1]})
        adv = run_chunk(exp, longest, attacks[longest], chunk, x, y, reader)
        reader.close()
        for job in members:
            steps, cost = job.spec["steps"], costs[job]
            wall, cpu = reader.until(steps)
            cost["seconds"] += wall
            cost["cpu_seconds"] += cpu
            # a prefix-stable attack sends the same inputs every step: the counted forwards pro rata
            cost["forwards"] += attacks[longest].forwards_total * steps / longest.spec["steps"]
            if job is not longest:
                cost["trajectory_of"] = longest.attack
            image = adv if job is longest else reader.images[steps]
            store_chunk(exp, job, attacks[job], chunk, x, image, cost)
        bar.update(len(chunk))
    bar.close()


class StepReader:
    """A step hook keeping the batch's images after the wanted steps and the (wall, CPU) seconds spent
    per step (a step's time includes the set-up of the micro-batch it starts)."""

    def __init__(self, x: torch.Tensor, steps: set[int]):
        self.images = {t: torch.empty_like(x) for t in steps}
        self.spent: dict[int, tuple[float, float]] = {}
        self.last = (time.perf_counter(), time.process_time())

    def __call__(self, t: int, x_adv: torch.Tensor, index: torch.Tensor) -> None:
        self._charge(t)
        if t in self.images:
            self.images[t][index] = x_adv
        self.last = (time.perf_counter(), time.process_time())  # the copy is not the attack's time

    def close(self) -> None:
        """Charge what followed the last step (the last micro-batch's teardown) to the last step."""
        self._charge(max(self.spent, default=0))

    def _charge(self, t: int) -> None:
        wall, cpu = self.spent.get(t, (0.0, 0.0))
        self.spent[t] = (wall + time.perf_counter() - self.last[0], cpu + time.process_time() - self.last[1])

    def until(self, steps: int) -> tuple[float, float]:
        """(wall, CPU) seconds of the steps up to `steps`."""
        spent = [v for t, v in self.spent.items() if t <= steps]
        return sum(w for w, _ in spent), sum(c for _, c in spent)
