"""Stage 3: target predictions on the saved (quantised) adversarial images, one cached file per block.

A block is evaluated as the batch it was attacked in, so its floats do not depend on which process or
shard evaluated it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F

from transferlab.data import Item, to_float
from transferlab.interaction.scores import margin
from transferlab.io import atomic_write_csv
from transferlab.rundir import Job
from transferlab.rundir.layout import EVAL_COLUMNS
from transferlab.runner.resolve import prediction_batch

if TYPE_CHECKING:
    from transferlab.runner.experiment import Experiment


def evaluate_job(exp: Experiment, job: Job, blocks: list[list[Item]]) -> None:
    """Evaluate every target on each block of the job whose cached evaluation is missing or stale."""
    run = exp.run_dir
    key = exp.job_key(job)
    targets = exp.cfg["models"]["targets"]
    for block in blocks:
        ids = [i.image_id for i in block]
        if run.eval_current(job.attack, job.source, ids, key, targets):
            continue
        adv = torch.from_numpy(run.load_adv(job.attack, job.source, ids)).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor([i.label for i in block])
        frames = [_predict(exp, target, adv, y, ids) for target in targets]
        frame = pd.concat(frames, ignore_index=True)
        frame.insert(0, "job_key", key)
        atomic_write_csv(run.eval_file(job.attack, job.source, ids[0]), frame[EVAL_COLUMNS])


def _predict(
    exp: Experiment, target: str, adv: torch.Tensor, y: torch.Tensor, ids: list[str]
) -> pd.DataFrame:
    model = exp.model(target)
    size = prediction_batch(exp.resolution)
    logits = []
    for start in range(0, len(ids), size):
        x = to_float(adv[start : start + size]).to(exp.device)
        with torch.no_grad():
            logits.append(model(x).float().cpu())
    out = torch.cat(logits)
    return pd.DataFrame(
        {
            "image_id": ids,
            "target": target,
            "adv_pred": out.argmax(1).numpy(),
            "adv_loss": F.cross_entropy(out, y, reduction="none").numpy(),
            "adv_margin": margin(out, y).numpy(),
        }
    )
