"""Stage 2: attack jobs. Each block of eligible images is attacked as one batch and cached as PNGs.

A block with any image lacking a usable PNG is attacked whole: kernels may round differently for another
batch shape, so a block that a kill or a smaller `data.limit` left incomplete is redone as the batch a
fresh run attacks, and a resumed or extended run ends with a fresh run's bytes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from transferlab.attacks.base import source_members
from transferlab.data import Item, to_float
from transferlab.ensemble import passes_per_call
from transferlab.eval.quantize import perturbation_norms, quantize
from transferlab.io import atomic_write_csv, atomic_write_json, atomic_write_png, try_read_png
from transferlab.rundir import KEY_FORMAT, Job, job_key
from transferlab.rundir.layout import COST_FIELDS, legacy_cost
from transferlab.runner.resolve import RunError, loop_units

if TYPE_CHECKING:
    from transferlab.runner.experiment import Experiment

def job_record(exp: Experiment, job: Job) -> dict:
    """The job's identity record (job.json), checked against this invocation's settings; an older run's
    job.json is adopted (its accounting moves to cost/run.json)."""
    run = exp.run_dir
    path = run.job_file(job.attack, job.source)
    key = exp.job_key(job)
    meta = run.read_job(job.attack, job.source)
    on_disk = dict(meta) if meta is not None else None
    if meta is not None and meta.get("key_format") != KEY_FORMAT:
        if meta["key"] != job_key(exp.cfg, job, None):
            raise RunError(
                f"{path.parent} holds attack '{job.attack}' on {job.source} with other settings "
                f"(key {meta['key']}); use a new --out directory or --fresh"
            )
        if any(c.per_image for c in exp.build(job).components):
            raise RunError(
                f"{path.parent} holds '{job.attack}' attacked before IR ran one image per micro-batch: its "
                "images would not match the ones attacked now; use a new --out directory or --fresh"
            )
        meta.update(key=key, key_format=KEY_FORMAT)  # a job of a run adopted by verify_cached_clean
    if meta is not None and meta["key"] != key:
        raise RunError(
            f"{path.parent} holds attack '{job.attack}' on {job.source} with other settings "
            f"(key {meta['key']} != {key}); use a new --out directory or --fresh"
        )
    if meta is not None and "seconds" in meta:  # accounting of an older run: one writer, the whole run
        cost_path = run.cost_file(job.attack, job.source, "run")
        if not cost_path.exists():
            atomic_write_json(cost_path, legacy_cost(meta))
    model = exp.model(job.source)
    attack = exp.build(job).bind_source(source_members(model))
    total = attack.passes_total() * passes_per_call(model)
    record = {
        "key": key,
        "key_format": KEY_FORMAT,
        "attack": job.attack,
        "source": job.source,
        "spec": job.spec,
        "steps": attack.steps,
        "eps_unit": attack.eps,
        "max_forward": attack.max_forward,  # inputs per model call: a resume keeps it (job_max_forward)
        # forward+backward passes of the source per image, as declared (the loop refuses more)
        "passes_per_step": total / max(1, attack.steps),
        "passes": total,
    }
    if on_disk != record:
        atomic_write_json(path, record)
    return record


def attack_job(exp: Experiment, job: Job, blocks: list[list[Item]]) -> None:
    """Attack the blocks of `job` that lack usable PNGs; account the work to this writer's scope."""
    job_record(exp, job)
    todo = [block for block in blocks if not all(usable_adv(exp, job, i) for i in block)]
    if not todo:
        return
    cost = cost_record(exp, job)
    attack = exp.build(job)
    every = exp.cfg["eval"]["record_every"]
    bar = tqdm(
        total=sum(map(len, todo)), desc=f"{job.attack} on {job.source}", unit="img",
        disable=not exp.progress,
    )
    for chunk in todo:
        x, y = load_chunk(exp, job, chunk)
        hook, step_rows = step_recorder(exp, x, y, chunk, attack) if every else (None, None)
        t0, c0 = time.perf_counter(), time.process_time()
        adv = run_chunk(exp, job, attack, chunk, x, y, hook)
        cost["seconds"] += time.perf_counter() - t0 - (hook.seconds if hook else 0.0)
        cost["cpu_seconds"] += time.process_time() - c0 - (hook.cpu_seconds if hook else 0.0)
        if step_rows is not None:
            path = exp.run_dir.steps_file(job.attack, job.source, chunk[0].image_id)
            atomic_write_csv(path, pd.DataFrame(step_rows))
        cost["forwards"] += attack.forwards_total
        store_chunk(exp, job, attack, chunk, x, adv, cost)
        bar.update(len(chunk))
    bar.close()


def load_chunk(exp: Experiment, job: Job, chunk: list[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's clean images (float, [0,1]) and labels on the run's device; its evaluation, about to
    become stale, is removed, and the source is warmed up before its first timed attack."""
    exp.run_dir.eval_file(job.attack, job.source, chunk[0].image_id).unlink(missing_ok=True)
    _, images = exp.dataset.load(chunk)
    x = to_float(images).to(exp.device)
    y = torch.tensor([i.label for i in chunk], device=exp.device)
    warm_up(exp, job.source, x)
    return x, y


def run_chunk(exp: Experiment, job: Job, attack, chunk: list[Item], x: torch.Tensor, y: torch.Tensor,
              hook=None) -> torch.Tensor:
    """The attack on one block, each image seeded by its id within the job's scope."""
    target = None
    if attack.targeted:
        target = torch.tensor([i.target for i in chunk], device=exp.device)
    pool = exp.pool() if attack.pool_size() else None
    return attack.run(
        exp.model(job.source), x, y, keys=[i.image_id for i in chunk], scope=(job.attack, job.source),
        on_step=hook, target=target, pool=pool,
    )


def store_chunk(exp: Experiment, job: Job, attack, chunk: list[Item], x: torch.Tensor, adv: torch.Tensor,
                cost: dict) -> None:
    """Quantise the block's adversarial images into the ε-ball, write their PNGs (dropping what was
    computed from changed ones) and the job's accounting (`cost`, images added here)."""
    run = exp.run_dir
    cost["images"] += len(chunk)
    cost["cpu_images"] += len(chunk)
    q = (quantize(x, adv, attack.eps, attack.norm) * 255).round().to(torch.uint8).cpu()
    changed = []
    for item, image in zip(chunk, q):
        path, array = run.adv_png(job.attack, job.source, item.image_id), image.permute(1, 2, 0).numpy()
        old = try_read_png(path) if path.exists() else None
        if old is not None and not np.array_equal(old, array):
            changed.append(item.image_id)
        atomic_write_png(path, array)
    if changed:
        forget_derived(exp, job, changed)
    run.write_cost(job.attack, job.source, exp.shard.scope, cost)


def cost_record(exp: Experiment, job: Job) -> dict:
    """This writer's accounting of the job (time, forwards, images), with the commit and machine."""
    cost = exp.run_dir.read_costs(job.attack, job.source).get(exp.shard.scope) or {}
    for field in COST_FIELDS:
        cost.setdefault(field, 0.0 if "seconds" in field else 0)
    commits = cost.setdefault("git", [])
    if exp.provenance["git"] not in commits:
        commits.append(exp.provenance["git"])
    # what decides the last bits of the floats (README: what reproduces across machines)
    machine = exp.provenance["machine"]
    where = {
        "device": str(exp.device),
        "torch": exp.provenance["versions"]["torch"],
        "threads": torch.get_num_threads(),
        "cpu": machine.get("cpu_id") or machine.get("cpu_model"),
        "kernels": machine.get("torch_cpu_capability"),
    }
    if where not in cost.setdefault("machines", []):
        cost["machines"].append(where)
    return cost


def forget_derived(exp: Experiment, job: Job, ids: list[str]) -> None:
    """Cached PNGs of an incomplete batch changed when it was redone whole: drop what was computed
    from them (their rows in interaction.csv; the block's evaluation is already gone) and say so."""
    path = exp.run_dir.interaction_csv
    dropped = 0
    if path.exists():
        table = pd.read_csv(path, dtype={"image_id": str})
        hit = (table.attack == job.attack) & (table.source == job.source) & table.image_id.isin(ids)
        dropped = int(hit.sum())
        if dropped:
            atomic_write_csv(path, table[~hit])
    exp.notice(
        f"{job.attack} on {job.source}: redoing an incomplete batch as a whole (as a fresh run attacks "
        f"it) changed the cached PNGs of {len(ids)} images (the batch's shape changes the floats' last "
        "bits)"
        + (f"; removed their {dropped} rows from interaction.csv (measure again)" if dropped else "")
    )


def usable_adv(exp: Experiment, job: Job, item: Item) -> bool:
    """Whether the cached adversarial PNG of `item` exists, reads, has the run's size and lies in the
    ε-ball of its clean image. A damaged one is reported and removed (its block is attacked again)."""
    path = exp.run_dir.adv_png(job.attack, job.source, item.image_id)
    if not path.exists():
        return False
    adv = try_read_png(path)
    clean = try_read_png(exp.run_dir.clean_png(item.image_id))
    problem = None
    if adv is None:
        problem = "is not a readable PNG"
    elif clean is None or adv.shape != clean.shape:
        problem = f"has shape {adv.shape}, the clean image {None if clean is None else clean.shape}"
    else:
        eps, _ = loop_units(job.spec, exp.resolution)
        pair = (torch.from_numpy(a)[None].float() / 255 for a in (clean, adv))
        linf, l2 = perturbation_norms(*pair)
        size = float(linf if job.spec["norm"] == "linf" else l2)
        if size > eps * 255 + 1e-3:
            problem = f"lies outside the ε-ball ({job.spec['norm']} {size:.4g} levels > {eps * 255:.4g})"
    if problem is None:
        return True
    exp.notice(f"cached adversarial image {path} {problem}: recomputing it")
    path.unlink()
    return False


def warm_up(exp: Experiment, source: str, x: torch.Tensor) -> None:
    """One untimed forward+backward of the source on a batch before its first timed attack, so that
    one-off allocator and kernel set-up is not charged to whichever job happens to run first."""
    if source in exp.warm:
        return
    exp.warm.add(source)
    x = x.clone().requires_grad_(True)
    torch.autograd.grad(exp.model(source)(x).sum(), x)


def step_recorder(exp: Experiment, x: torch.Tensor, y: torch.Tensor, chunk: list[Item], attack):
    """A per-step hook recording, every `eval.record_every` steps, whether each target misclassifies
    the quantised intermediate image (for the target-informed best-step metric). Kept in memory and
    written once per batch; its target forwards are not counted in the attack's time."""
    every = exp.cfg["eval"]["record_every"]
    rows: list[dict] = []
    targets = exp.cfg["models"]["targets"]

    def hook(t: int, x_adv: torch.Tensor, index: torch.Tensor) -> None:
        if t % every and t != attack.steps:
            return
        t0, c0 = time.perf_counter(), time.process_time()
        record(t, x_adv, index)
        hook.seconds += time.perf_counter() - t0
        hook.cpu_seconds += time.process_time() - c0

    def record(t: int, x_adv: torch.Tensor, index: torch.Tensor) -> None:
        q = quantize(x[index], x_adv, attack.eps, attack.norm)
        with torch.no_grad():
            for name in targets:
                fooled = (exp.model(name)(q).argmax(1) != y[index]).cpu().tolist()
                rows.extend(
                    {"image_id": chunk[i].image_id, "step": t, "target": name, "fooled": f}
                    for i, f in zip(index.tolist(), fooled)
                )

    hook.seconds = hook.cpu_seconds = 0.0
    return hook, rows
