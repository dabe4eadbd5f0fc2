"""records.csv from a run directory: one row per image × attack × source × target.

Read from the files alone (clean.csv, eligible.csv, the PNGs and the block evaluations), so the table
is the same whichever process, shard or machine produced them. `missing_work` lists what a run still
lacks, per job and per shard, before anything is assembled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from transferlab.eval.quantize import perturbation_norms
from transferlab.rundir import Job, RunDir, jobs_of
from transferlab.rundir.jobs import white_box
from transferlab.rundir.shards import all_blocks


@dataclass
class Missing:
    job: Job
    first_id: str
    images: int  # adversarial PNGs missing in the block
    evaluated: bool  # whether its target evaluation is current
    block: int


def missing_work(runs: list[RunDir], cfg: dict, keys: dict[str, str]) -> list[Missing]:
    """Blocks of any job whose PNGs or evaluations none of `runs` holds (`keys`: 'attack/source' -> job
    key)."""
    eligible = runs[0].eligible_ids()
    targets = cfg["models"]["targets"]
    missing = []
    for job in jobs_of(cfg):
        key = keys[f"{job.attack}/{job.source}"]
        for b, ids in enumerate(all_blocks(eligible[job.source], job.spec["batch_size"])):
            absent = [i for i in ids if not any(r.adv_png(job.attack, job.source, i).exists() for r in runs)]
            evaluated = any(r.eval_current(job.attack, job.source, ids, key, targets) for r in runs)
            if absent or not evaluated:
                missing.append(Missing(job, ids[0], len(absent), evaluated, b))
    return missing


def assemble_records(run: RunDir, cfg: dict) -> pd.DataFrame:
    """One row per image × attack × source × target, with clean and adversarial predictions."""
    clean = run.read_clean().set_index(["image_id", "model"])
    eligible = run.eligible_ids()
    targets = run.eligible_targets() if cfg.get("targeted") else {}
    frames = []
    for job in jobs_of(cfg):
        ids = eligible[job.source]
        x = torch.from_numpy(run.load_clean(ids))
        a = torch.from_numpy(run.load_adv(job.attack, job.source, ids))
        linf, l2 = perturbation_norms(x.float() / 255, a.float() / 255)
        blocks = all_blocks(ids, job.spec["batch_size"])
        evals = pd.concat([run.read_eval(job.attack, job.source, b[0]) for b in blocks], ignore_index=True)
        for target in cfg["models"]["targets"]:
            ev = evals[evals.target == target].set_index("image_id").loc[ids]
            c = clean.loc[[(i, target) for i in ids]]
            frame = pd.DataFrame(
                {
                    "image_id": ids,
                    "label": c.label.to_numpy(),
                    "attack": job.attack,
                    "method": "+".join(str(m) for m in np.atleast_1d(job.spec["method"])),
                    "source": job.source,
                    "target": target,
                    "white_box": white_box(cfg, job.source, target),
                    "clean_pred": c.pred.to_numpy(),
                    "adv_pred": ev.adv_pred.to_numpy(),
                    "target_clean_correct": (c.pred.to_numpy() == c.label.to_numpy()),
                    "clean_loss": c.loss.to_numpy(),
                    "adv_loss": ev.adv_loss.to_numpy(),
                    "clean_margin": c.margin.to_numpy(),
                    "adv_margin": ev.adv_margin.to_numpy(),
                    "linf": linf.numpy(),
                    "l2": l2.numpy(),
                }
            )
            frame["fooled"] = frame.adv_pred != frame.label
            frame["transfer_utility"] = frame.adv_loss - frame.clean_loss
            if cfg.get("targeted"):  # (columns absent when untargeted: earlier records stay byte-equal)
                frame["target_class"] = [targets[job.source][i] for i in ids]
                frame["hit"] = frame.adv_pred == frame.target_class
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)
