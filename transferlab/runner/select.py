"""Stage 1: clean predictions of every model, and the images each source attacks (decided once).

The dataset is scanned in order, predicting with every model, until each source has `data.limit` images
it classifies correctly (with eligibility 'all': every model in the run does), after leaving out the first
`data.skip` such images (a long run in parts: `skip=0 limit=50`, then `skip=50 limit=50`; per-image streams
make each image's result the same in either part). Predictions are cached in
clean.csv, so the decision is a function of the cached predictions: every shard that reads them reaches
the same eligible lists, written to eligible.csv.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from transferlab.data import Item, to_float
from transferlab.interaction.scores import margin
from transferlab.io import atomic_write_csv, atomic_write_png, try_read_png
from transferlab.rng import stable_seed
from transferlab.runner.resolve import RunError, prediction_batch

if TYPE_CHECKING:
    from transferlab.runner.experiment import Experiment

CLEAN_COLUMNS = ["image_id", "label", "model", "pred", "loss", "margin"]


def select_images(exp: Experiment) -> dict[str, list[Item]]:
    """{source: eligible items in attack order}; writes clean.csv, clean/ PNGs and eligible.csv."""
    t0 = time.time()
    limit = exp.cfg["data"]["limit"]
    skip = exp.cfg["data"].get("skip") or 0
    rule = exp.cfg["data"]["eligibility"]
    sources = exp.cfg["models"]["sources"]
    known = exp.run_dir.read_clean()
    if known is not None and exp.legacy:
        verify_cached_clean(exp, known)
    rows: list[pd.DataFrame] = [] if known is None else [known]
    done = set() if known is None else set(zip(known.image_id, known.model))
    eligible: dict[str, list[Item]] = {s: [] for s in sources}
    skipped: dict[str, int] = dict.fromkeys(sources, 0)
    batch = prediction_batch(exp.resolution)
    bar = tqdm(
        total=limit or len(exp.dataset),
        desc="clean predictions",
        disable=not exp.progress,
        unit="img",
        leave=False,
    )
    for start in range(0, len(exp.dataset), batch):
        if limit and all(len(v) >= limit for v in eligible.values()):
            break
        items, images = exp.dataset.load(exp.dataset.items[start : start + batch])
        if not items:
            continue
        new = clean_predictions(exp, items, images, done)
        if new is not None:
            rows.append(new)
            done.update(zip(new.image_id, new.model))
        table = pd.concat(rows, ignore_index=True)
        ok = _correct(table, [i.image_id for i in items])
        for item, image in zip(items, images):
            _save_clean(exp, item, image)
        for item in items:
            assign_target(exp, item)
        for s in sources:
            need = exp.model_names if rule == "all" else [s]
            for item in items:
                if (not limit or len(eligible[s]) < limit) and all(
                    ok.get((item.image_id, m), False) for m in need
                ) and item.target != item.label:
                    if skipped[s] < skip:
                        skipped[s] += 1
                    else:
                        eligible[s].append(item)
        bar.update(len(items) if not limit else min(limit, min(len(v) for v in eligible.values())) - bar.n)
    bar.close()
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=CLEAN_COLUMNS)
    table = table.drop_duplicates(["image_id", "model"]).reset_index(drop=True)
    atomic_write_csv(exp.run_dir.clean_csv, table[CLEAN_COLUMNS])
    exp.timings["clean_predictions_s"] = time.time() - t0
    exp.scanned = int(table.image_id.nunique())
    if exp.dataset.skipped:
        exp.timings["skipped_files"] = len(exp.dataset.skipped)
    for s, items in eligible.items():
        left_out = f" after data.skip={skip}" if skip else ""
        if not items:
            hint = "labels, weights and data.skip" if skip else "labels and weights"
            raise RunError(f"no image is eligible for source {s} (rule '{rule}'){left_out}; check {hint}")
        if limit and len(items) < limit:
            exp.notice(
                f"data.limit={limit} but only {len(items)} of the {exp.scanned} images in the dataset "
                f"are eligible for source {s} (rule '{rule}'){left_out}: the run attacks {len(items)}"
            )
    exp.run_dir.write_eligible({s: [(i.image_id, i.label, i.target) for i in v] for s, v in eligible.items()})
    return eligible


def assign_target(exp: Experiment, item: Item) -> None:
    """The target class of a targeted run's image (`target_class`): the dataset's (NIPS'17 TargetClass
    − 1), a fixed class, or one drawn from the image's own stream among the classes but its label.
    Untargeted runs leave it None. An image whose target is its label is never eligible."""
    if not exp.cfg["targeted"]:
        item.target = None
        return
    choice = exp.cfg["target_class"]
    classes = getattr(exp.model(exp.cfg["models"]["sources"][0]), "num_classes", None) or 1000
    if choice == "dataset":
        if item.target is None:
            raise RunError(
                f"targeted: true with target_class: dataset, but the {exp.dataset.name} dataset gives no "
                f"target class for {item.path} (only NIPS'17 images.csv has TargetClass); set target_class "
                "to 'random' or a class index"
            )
        return
    if choice == "random":
        g = torch.Generator().manual_seed(stable_seed(exp.cfg["seed"], "target", item.image_id))
        item.target = int((item.label + 1 + torch.randint(classes - 1, (1,), generator=g)) % classes)
        return
    if not 0 <= int(choice) < classes:
        raise RunError(f"target_class {choice} is out of range for the source's {classes} classes")
    item.target = int(choice)


def verify_cached_clean(exp: Experiment, known: pd.DataFrame, count: int = 16) -> None:
    """A run made before weights digests were recorded: recompute the clean predictions of its first
    images with this invocation's weights and refuse when they differ from the cached ones (the
    cache then belongs to other weights). When they agree, the digests now recorded stand for them."""
    ids = list(dict.fromkeys(known.image_id))[:count]
    by_id = {i.image_id: i for i in exp.dataset.items}
    items = [by_id[i] for i in ids if i in by_id]
    if not items:
        return
    items, images = exp.dataset.load(items)
    fresh = clean_predictions(exp, items, images, done=set())
    merged = fresh.merge(known, on=["image_id", "model"], suffixes=("", "_cached"))
    tol = 1e-3 * (1 + merged.loss.abs())
    bad = merged[(merged.pred != merged.pred_cached) | ((merged.loss - merged.loss_cached).abs() > tol)]
    if len(bad):
        row = bad.iloc[0]
        raise RunError(
            f"{exp.out} holds clean predictions of {row.model} that this invocation's weights do not "
            f"reproduce (image {row.image_id}: loss {row.loss_cached:.6g} cached, {row.loss:.6g} now): "
            "the run was made with other weights. Use another --out, or --fresh to start over"
        )
    exp.notice(
        f"{exp.out} was made before weights digests were recorded; the cached clean predictions of "
        f"{len(items)} images agree with this invocation's weights for every model, so its digests are "
        "recorded for the run from now on"
    )


def clean_predictions(exp: Experiment, items: list[Item], images, done: set) -> pd.DataFrame | None:
    """Predictions of every model on the items not yet in `done` ((image_id, model) pairs)."""
    frames = []
    labels = torch.tensor([i.label for i in items])
    _check_labels(exp, items)
    x = to_float(images).to(exp.device)
    for name in exp.model_names:
        todo = [k for k, i in enumerate(items) if (i.image_id, name) not in done]
        if not todo:
            continue
        with torch.no_grad():
            logits = exp.model(name)(x[todo]).float().cpu()
        y = labels[todo]
        frames.append(
            pd.DataFrame(
                {
                    "image_id": [items[k].image_id for k in todo],
                    "label": y.numpy(),
                    "model": name,
                    "pred": logits.argmax(1).numpy(),
                    "loss": F.cross_entropy(logits, y, reduction="none").numpy(),
                    "margin": margin(logits, y).numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else None


def _check_labels(exp: Experiment, items: list[Item]) -> None:
    for name in exp.model_names:
        classes = getattr(exp.model(name), "num_classes", None)
        for item in items:
            if classes is not None and not 0 <= item.label < classes:
                raise RunError(
                    f"label {item.label} of {item.path} is out of range for {name} ({classes} classes)"
                )


def _correct(table: pd.DataFrame, ids: list[str]) -> dict[tuple[str, str], bool]:
    sub = table[table.image_id.isin(ids)]
    return {(i, m): bool(p == y) for i, m, p, y in zip(sub.image_id, sub.model, sub.pred, sub.label)}


def _save_clean(exp: Experiment, item: Item, image: torch.Tensor) -> None:
    path = exp.run_dir.clean_png(item.image_id)
    array = image.permute(1, 2, 0).numpy()
    if not path.exists():
        atomic_write_png(path, array)
    elif not np.array_equal(try_read_png(path), array):
        exp.notice(f"cached clean image {path} is damaged or stale: rewriting it from {item.path}")
        atomic_write_png(path, array)
