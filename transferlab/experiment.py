"""A config becomes jobs; each job's output is cached on disk so a killed run resumes.

Layout of a run directory (the output contract):

    clean/<image_id>.png                 clean image at attack resolution, 8-bit
    run.json                             marker and identity: data settings, every model's weights sha256
    .locks/                              the writer lock (transferlab.rundir)
    clean.csv                            clean prediction of every model on every scanned image
    adv/<attack>/<source>/<image_id>.png quantised adversarial image
    adv/<attack>/<source>/job.json       the job's settings key, timings, cost per step
    evals/<attack>__<source>__<target>.csv  target predictions on the adversarial images
    records.csv                          one row per image x attack x source x target
    results.csv                          one row per attack x source x target x metric
    table.md, transfer.png, manifest.json

Every file is written atomically; a finished image or job is never recomputed, and because each
image's result depends only on itself, a resumed run ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from transferlab.attacks.registry import build_attack
from transferlab.data import Dataset, Item, open_dataset, to_float
from transferlab.errors import TransferlabError
from transferlab.eval.quantize import perturbation_norms, quantize
from transferlab.interaction.scores import margin
from transferlab.io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_png,
    read_png,
    remove_stale_temporaries,
    try_read_png,
)
from transferlab.provenance import provenance
from transferlab.rundir import (
    LOCKS,
    RunLock,
    check_identity,
    check_output_dir,
    describe_fresh,
    fresh_plan,
    make_dir,
    model_digest,
    remove_entries,
)

CLEAN_COLUMNS = ["image_id", "label", "model", "pred", "loss", "margin"]


class RunError(TransferlabError):
    """The run directory conflicts with the config, or a job cannot run."""


@dataclass
class Job:
    attack: str
    source: str
    spec: dict

    @property
    def dir_parts(self) -> tuple[str, str]:
        return self.attack, self.source


KEY_FORMAT = 2  # job keys include the source's weights digest


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when present, else CPU; an explicit device that this machine lacks is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(name.split(":")[0], False):
        raise RunError(f"device {name!r} (config key 'device') is not available on this machine; use 'auto'")
    return torch.device(name)


def loop_units(spec: dict, resolution: int) -> tuple[float, float]:
    """(eps, alpha) in [0,1] pixel units from config values in 1/255 steps (L2: RMS per pixel)."""
    scale = 1 / 255
    if spec["norm"] == "l2":
        scale *= math.sqrt(3 * resolution * resolution)
    return float(spec["eps"]) * scale, float(spec["alpha"]) * scale


def auto_max_forward(resolution: int) -> int:
    """Largest model batch, about 1M input pixels (20 images at 224 px, 256 at 32 px): measured on 2 CPU
    cores, larger batches are slower per image (EfficientNet-Lite0 forward+backward: 43 ms/image at 16,
    76 ms at 32; CIFAR ResNet-20: 1.3 ms at 256, 2.5 ms at 1024)."""
    return int(max(8, min(256, 2**20 // (resolution * resolution))))


def attack_from_spec(name: str, spec: dict, resolution: int, seed: int):
    """The attack a validated config entry describes, at the run's attack resolution."""
    eps, alpha = loop_units(spec, resolution)
    return build_attack(
        spec["method"],
        spec["params"],
        eps=eps,
        alpha=alpha,
        steps=spec["steps"],
        norm=spec["norm"],
        random_start=spec["random_start"],
        seed=seed,
        max_forward=spec["max_forward"] or auto_max_forward(resolution),
        name=name,
    )


class Experiment:
    """Runs a validated config into `out_dir`."""

    def __init__(
        self,
        cfg: dict,
        out_dir: str | Path,
        progress: bool = True,
        config_path: str | None = None,
        overrides: list[str] | tuple[str, ...] = (),
    ):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        self.config_path = config_path
        self.overrides = list(overrides)
        self.device = resolve_device(cfg["device"])
        self.dataset: Dataset = open_dataset(cfg["data"])
        self.resolution = self.dataset.resolution
        self._models: dict[str, torch.nn.Module] = {}
        self._warm: set[str] = set()
        self.timings: dict[str, float] = {}
        self.notices: list[str] = []
        self.digests: dict[str, str] = {}
        self.legacy = False  # set by run(): a run made before run.json, adopted after a check
        # the code that runs is the code at the start of this invocation, not at the report
        self.provenance = provenance()

    def notice(self, text: str) -> None:
        """Tell the user something they must know about this run (stderr), and keep it for the manifest."""
        self.notices.append(text)
        print(f"transferlab: note: {text}", file=sys.stderr)

    # ------------------------------------------------------------------ models
    @property
    def model_names(self) -> list[str]:
        names = [*self.cfg["models"]["sources"], *self.cfg["models"]["targets"]]
        return list(dict.fromkeys(names))

    def model(self, name: str) -> torch.nn.Module:
        if name not in self._models:
            from transferlab.models import load_model

            weights = (self.cfg["models"].get("weights") or {}).get(name)
            self._models[name] = load_model(
                name, weights=weights, weights_dir=self.cfg["models"]["weights_dir"], device=self.device
            )
        return self._models[name]

    # ------------------------------------------------------------------ jobs
    def jobs(self) -> list[Job]:
        return [
            Job(attack, source, spec)
            for attack, spec in self.cfg["attacks"].items()
            for source in self.cfg["models"]["sources"]
        ]

    def data_identity(self) -> dict:
        """The data settings that decide which clean images a run holds (`data.limit` only extends)."""
        return {k: v for k, v in self.cfg["data"].items() if k not in ("limit", "on_error")}

    def job_key(self, job: Job, legacy: bool = False) -> str:
        """Everything that determines a job's images: attack settings, seed, data and the source's weights
        (by digest); `data.limit` is not part of it (more images extend). `legacy`: the key runs made
        before weights digests were recorded used."""
        payload = {
            "attack": job.spec,
            "source": job.source,
            "seed": self.cfg["seed"],
            "data": self.data_identity(),
            "weights": (self.cfg["models"].get("weights") or {}).get(job.source),
        }
        if not legacy:
            payload["weights_digest"] = self.digests[job.source]
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def load_models(self) -> dict[str, str]:
        """Load every model of the run (this validates weights before anything is written) and return
        name -> weights digest."""
        for name in self.model_names:
            self.digests[name] = model_digest(self.model(name))
        return dict(self.digests)

    def model_files(self) -> dict[str, dict]:
        """Every loaded model's weights file and digest, for the manifest."""
        return {
            name: {"path": getattr(self._models.get(name), "weights_path", None), "digest": digest}
            for name, digest in self.digests.items()
        }

    def build(self, job: Job):
        return attack_from_spec(job.attack, job.spec, self.resolution, self.cfg["seed"])

    # ------------------------------------------------------------------ run
    def run(self, fresh: bool = False) -> dict[str, Any]:
        """Run every job into the output directory, holding its writer lock.

        fresh: first remove the run already in the directory (only a transferlab run, only the files
        transferlab writes, and only after the config, the data and every model's weights loaded).
        """
        started = time.time()
        if fresh:
            remove, keep = fresh_plan(self.out)
        else:
            check_output_dir(self.out)
        self.load_models()
        make_dir(self.out)
        with RunLock(self.out):
            if fresh and remove:
                print(f"transferlab: {describe_fresh(self.out, remove, keep)}", file=sys.stderr)
                remove_entries(remove)
            swept = remove_stale_temporaries(self.out, skip=(LOCKS,))  # a lock being created elsewhere
            if swept:
                self.notice(f"removed {len(swept)} temporary files a killed run left in {self.out}")
            _, self.legacy = check_identity(self.out, self.data_identity(), self.digests)
            eligible = self.select_images()
            for job in self.jobs():
                self.attack_job(job, eligible[job.source])
            for job in self.jobs():
                for target in self.cfg["models"]["targets"]:
                    self.evaluate(job, target, eligible[job.source])
            from transferlab.eval.report import write_reports

            records = self.records(eligible)
            self.timings["total_s"] = time.time() - started
            return write_reports(self, records)

    # ------------------------------------------------------------------ clean predictions
    def select_images(self) -> dict[str, list[Item]]:
        """Scan the dataset in order, predicting with every model, until each source has `limit` images
        it classifies correctly (with eligibility 'all': every model in the run does)."""
        t0 = time.time()
        limit = self.cfg["data"]["limit"]
        rule = self.cfg["data"]["eligibility"]
        sources = self.cfg["models"]["sources"]
        clean_path = self.out / "clean.csv"
        known = pd.read_csv(clean_path, dtype={"image_id": str}) if clean_path.exists() else None
        if known is not None and self.legacy:
            self._verify_cached_clean(known)
        rows: list[pd.DataFrame] = [] if known is None else [known]
        done = set() if known is None else set(zip(known.image_id, known.model))
        eligible: dict[str, list[Item]] = {s: [] for s in sources}
        batch = max(1, min(64, auto_max_forward(self.resolution)))
        bar = tqdm(
            total=limit or len(self.dataset),
            desc="clean predictions",
            disable=not self.progress,
            unit="img",
            leave=False,
        )
        for start in range(0, len(self.dataset), batch):
            if limit and all(len(v) >= limit for v in eligible.values()):
                break
            items, images = self.dataset.load(self.dataset.items[start : start + batch])
            if not items:
                continue
            new = self._clean_predictions(items, images, done)
            if new is not None:
                rows.append(new)
                done.update(zip(new.image_id, new.model))
            table = pd.concat(rows, ignore_index=True)
            ok = self._correct(table, [i.image_id for i in items])
            for item in items:
                self._save_clean(item, images[items.index(item)])
            for s in sources:
                need = self.model_names if rule == "all" else [s]
                for item in items:
                    if (not limit or len(eligible[s]) < limit) and all(
                        ok.get((item.image_id, m), False) for m in need
                    ):
                        eligible[s].append(item)
            bar.update(
                len(items) if not limit else min(limit, min(len(v) for v in eligible.values())) - bar.n
            )
        bar.close()
        table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=CLEAN_COLUMNS)
        table = table.drop_duplicates(["image_id", "model"]).reset_index(drop=True)
        atomic_write_csv(clean_path, table[CLEAN_COLUMNS])
        # read back: a resumed run sees exactly the bytes a fresh one computes from
        self.clean = pd.read_csv(clean_path, dtype={"image_id": str})
        self.timings["clean_predictions_s"] = time.time() - t0
        self.scanned = int(table.image_id.nunique())
        if self.dataset.skipped:
            self.timings["skipped_files"] = len(self.dataset.skipped)
        for s, items in eligible.items():
            if not items:
                raise RunError(
                    f"no image is eligible for source {s} (rule '{rule}'); check labels and weights"
                )
            if limit and len(items) < limit:
                self.notice(
                    f"data.limit={limit} but only {len(items)} of the {self.scanned} images in the dataset "
                    f"are eligible for source {s} (rule '{rule}'): the run attacks {len(items)}"
                )
        return eligible

    def _verify_cached_clean(self, known: pd.DataFrame, count: int = 16) -> None:
        """A run made before weights digests were recorded: recompute the clean predictions of its first
        images with this invocation's weights and refuse when they differ from the cached ones (the
        cache then belongs to other weights). When they agree, the digests now recorded stand for them."""
        ids = list(dict.fromkeys(known.image_id))[:count]
        by_id = {i.image_id: i for i in self.dataset.items}
        items = [by_id[i] for i in ids if i in by_id]
        if not items:
            return
        items, images = self.dataset.load(items)
        fresh = self._clean_predictions(items, images, done=set())
        merged = fresh.merge(known, on=["image_id", "model"], suffixes=("", "_cached"))
        tol = 1e-3 * (1 + merged.loss.abs())
        bad = merged[(merged.pred != merged.pred_cached) | ((merged.loss - merged.loss_cached).abs() > tol)]
        if len(bad):
            row = bad.iloc[0]
            raise RunError(
                f"{self.out} holds clean predictions of {row.model} that this invocation's weights do not "
                f"reproduce (image {row.image_id}: loss {row.loss_cached:.6g} cached, {row.loss:.6g} now): "
                "the run was made with other weights. Use another --out, or --fresh to start over"
            )
        self.notice(
            f"{self.out} was made before weights digests were recorded; the cached clean predictions of "
            f"{len(items)} images agree with this invocation's weights for every model, so its digests are "
            "recorded for the run from now on"
        )

    def _clean_predictions(self, items, images, done) -> pd.DataFrame | None:
        frames = []
        labels = torch.tensor([i.label for i in items])
        self._check_labels(items)
        x = to_float(images).to(self.device)
        for name in self.model_names:
            todo = [k for k, i in enumerate(items) if (i.image_id, name) not in done]
            if not todo:
                continue
            with torch.no_grad():
                logits = self.model(name)(x[todo]).float().cpu()
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

    def _check_labels(self, items: list[Item]) -> None:
        for name in self.model_names:
            classes = getattr(self.model(name), "num_classes", None)
            for item in items:
                if classes is not None and not 0 <= item.label < classes:
                    raise RunError(
                        f"label {item.label} of {item.path} is out of range for {name} ({classes} classes)"
                    )

    @staticmethod
    def _correct(table: pd.DataFrame, ids: list[str]) -> dict[tuple[str, str], bool]:
        sub = table[table.image_id.isin(ids)]
        return {(i, m): bool(p == y) for i, m, p, y in zip(sub.image_id, sub.model, sub.pred, sub.label)}

    def _save_clean(self, item: Item, image: torch.Tensor) -> None:
        path = self.out / "clean" / f"{item.image_id}.png"
        array = image.permute(1, 2, 0).numpy()
        if not path.exists():
            atomic_write_png(path, array)
        elif not np.array_equal(try_read_png(path), array):
            self.notice(f"cached clean image {path} is damaged or stale: rewriting it from {item.path}")
            atomic_write_png(path, array)

    # ------------------------------------------------------------------ attacks
    def adv_dir(self, job: Job) -> Path:
        return self.out / "adv" / job.attack / job.source

    def attack_job(self, job: Job, items: list[Item]) -> None:
        """Attack the eligible images in fixed batches of `batch_size` by position (images 0..B−1, B..2B−1,
        ...); a batch with any image lacking a usable PNG is attacked whole. Kernels may round differently
        for another batch shape, so a batch that a kill or a smaller `data.limit` left incomplete is redone
        as the batch a fresh run would attack: a resumed or extended run ends with a fresh run's bytes."""
        folder = self.adv_dir(job)
        meta_path = folder / "job.json"
        key = self.job_key(job)
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        legacy = meta is not None and meta.get("key_format") != KEY_FORMAT
        if legacy and meta["key"] == self.job_key(job, legacy=True):
            if any(c.per_image for c in self.build(job).components):
                raise RunError(
                    f"{folder} holds '{job.attack}' attacked before IR ran one image per micro-batch: its "
                    "images would not match the ones attacked now; use a new --out directory or --fresh"
                )
            meta.update(key=key, key_format=KEY_FORMAT)  # a job of a run adopted by _verify_cached_clean
            atomic_write_json(meta_path, meta)
        if meta is not None and meta["key"] != key:
            raise RunError(
                f"{folder} holds attack '{job.attack}' on {job.source} with other settings "
                f"(key {meta['key']} != {key}); use a new --out directory or --fresh"
            )
        meta = meta or {
            "key": key,
            "key_format": KEY_FORMAT,
            "attack": job.attack,
            "source": job.source,
            "spec": job.spec,
            "seconds": 0.0,
            "cpu_seconds": 0.0,
            "cpu_images": 0,
            "images": 0,
            "forwards": 0,
        }
        size = job.spec["batch_size"]
        blocks = [items[start : start + size] for start in range(0, len(items), size)]
        usable = [[self._usable_adv(job, i) for i in block] for block in blocks]
        todo = [block for block, ok in zip(blocks, usable) if not all(ok)]
        if not todo:
            return
        # jobs started before CPU time was kept: their CPU time covers only the images attacked since
        meta.setdefault("cpu_seconds", 0.0)
        meta.setdefault("cpu_images", meta["images"] if meta["cpu_seconds"] else 0)
        commits = meta.setdefault("git", [])
        if self.provenance["git"] not in commits:
            commits.append(self.provenance["git"])
        # what decides the last bits of the floats (README: what reproduces across machines)
        machine = self.provenance["machine"]
        where = {
            "device": str(self.device),
            "torch": self.provenance["versions"]["torch"],
            "threads": torch.get_num_threads(),
            "cpu": machine.get("cpu_id") or machine.get("cpu_model"),
            "kernels": machine.get("torch_cpu_capability"),
        }
        if where not in meta.setdefault("machines", []):
            meta["machines"].append(where)
        attack = self.build(job)
        model = self.model(job.source)
        every = self.cfg["eval"]["record_every"]
        bar = tqdm(
            total=sum(map(len, todo)), desc=f"{job.attack} on {job.source}", unit="img",
            disable=not self.progress,
        )
        for chunk in todo:
            _, images = self.dataset.load(chunk)
            x = to_float(images).to(self.device)
            y = torch.tensor([i.label for i in chunk], device=self.device)
            hook, step_rows = self.step_recorder(x, y, chunk, attack) if every else (None, None)
            self.warm_up(job.source, x)
            t0, c0 = time.perf_counter(), time.process_time()
            adv = attack.run(
                model, x, y, keys=[i.image_id for i in chunk], scope=(job.attack, job.source), on_step=hook
            )
            meta["seconds"] += time.perf_counter() - t0 - (hook.seconds if hook else 0.0)
            meta["cpu_seconds"] += time.process_time() - c0 - (hook.cpu_seconds if hook else 0.0)
            if step_rows is not None:
                atomic_write_csv(
                    self.out / "steps" / job.attack / job.source / f"{chunk[0].image_id}.csv",
                    pd.DataFrame(step_rows),
                )
            meta["images"] += len(chunk)
            meta["cpu_images"] += len(chunk)
            meta["forwards"] += attack.forwards_total
            q = (quantize(x, adv, attack.eps, attack.norm) * 255).round().to(torch.uint8).cpu()
            changed = []
            for item, image in zip(chunk, q):
                path, array = folder / f"{item.image_id}.png", image.permute(1, 2, 0).numpy()
                old = try_read_png(path) if path.exists() else None
                if old is not None and not np.array_equal(old, array):
                    changed.append(item.image_id)
                atomic_write_png(path, array)
            if changed:
                self._forget_derived(job, changed)
            meta["steps"] = attack.steps
            meta["eps_unit"] = attack.eps
            steps = max(1, attack.steps)
            meta["forwards_per_image_step"] = meta["forwards"] / (meta["images"] * steps)
            meta["seconds_per_image_step"] = meta["seconds"] / (meta["images"] * steps)
            meta["cpu_seconds_per_image_step"] = meta["cpu_seconds"] / (meta["cpu_images"] * steps)
            atomic_write_json(meta_path, meta)
            bar.update(len(chunk))
        bar.close()

    def _forget_derived(self, job: Job, ids: list[str]) -> None:
        """Cached PNGs of an incomplete batch changed when it was redone whole: drop what was computed
        from them (the job's evaluations, their rows in interaction.csv) and say so."""
        self._drop_evaluations(job)
        path = self.out / "interaction.csv"
        dropped = 0
        if path.exists():
            table = pd.read_csv(path, dtype={"image_id": str})
            hit = (table.attack == job.attack) & (table.source == job.source) & table.image_id.isin(ids)
            dropped = int(hit.sum())
            if dropped:
                atomic_write_csv(path, table[~hit])
        self.notice(
            f"{job.attack} on {job.source}: redoing an incomplete batch as a whole (as a fresh run attacks "
            f"it) changed the cached PNGs of {len(ids)} images (the batch's shape changes the floats' last "
            "bits)"
            + (f"; removed their {dropped} rows from interaction.csv (measure again)" if dropped else "")
        )

    def _usable_adv(self, job: Job, item: Item) -> bool:
        """Whether the cached adversarial PNG of `item` exists, reads, has the run's size and lies in the
        ε-ball of its clean image. A damaged one is reported and recomputed (with its job's evaluations)."""
        path = self.adv_dir(job) / f"{item.image_id}.png"
        if not path.exists():
            return False
        adv = try_read_png(path)
        clean = try_read_png(self.out / "clean" / f"{item.image_id}.png")
        problem = None
        if adv is None:
            problem = "is not a readable PNG"
        elif clean is None or adv.shape != clean.shape:
            problem = f"has shape {adv.shape}, the clean image {None if clean is None else clean.shape}"
        else:
            eps, _ = loop_units(job.spec, self.resolution)
            pair = (torch.from_numpy(a)[None].float() / 255 for a in (clean, adv))
            linf, l2 = perturbation_norms(*pair)
            size = float(linf if job.spec["norm"] == "linf" else l2)
            if size > eps * 255 + 1e-3:
                problem = f"lies outside the ε-ball ({job.spec['norm']} {size:.4g} levels > {eps * 255:.4g})"
        if problem is None:
            return True
        self.notice(f"cached adversarial image {path} {problem}: recomputing it")
        path.unlink()
        self._drop_evaluations(job)
        return False

    def _drop_evaluations(self, job: Job) -> None:
        """Remove the job's cached target evaluations (its adversarial images are about to change)."""
        for stale in (self.out / "evals").glob(f"{job.attack}__{job.source}__*.csv"):
            stale.unlink()

    def warm_up(self, source: str, x: torch.Tensor) -> None:
        """One untimed forward+backward of the source on a batch before its first timed attack, so that
        one-off allocator and kernel set-up is not charged to whichever job happens to run first."""
        if source in self._warm:
            return
        self._warm.add(source)
        x = x.clone().requires_grad_(True)
        torch.autograd.grad(self.model(source)(x).sum(), x)

    def step_recorder(self, x: torch.Tensor, y: torch.Tensor, chunk: list[Item], attack):
        """A per-step hook recording, every `eval.record_every` steps, whether each target misclassifies
        the quantised intermediate image (for the target-informed best-step metric). Kept in memory and
        written once per batch; its target forwards are not counted in the attack's time."""
        every = self.cfg["eval"]["record_every"]
        rows: list[dict] = []
        targets = self.cfg["models"]["targets"]

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
                    fooled = (self.model(name)(q).argmax(1) != y[index]).cpu().tolist()
                    rows.extend(
                        {"image_id": chunk[i].image_id, "step": t, "target": name, "fooled": f}
                        for i, f in zip(index.tolist(), fooled)
                    )

        hook.seconds = hook.cpu_seconds = 0.0
        return hook, rows

    def step_records(self, job: Job) -> pd.DataFrame | None:
        folder = self.out / "steps" / job.attack / job.source
        files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
        if not files:
            return None
        frame = pd.concat([pd.read_csv(f, dtype={"image_id": str}) for f in files], ignore_index=True)
        return frame.drop_duplicates(["image_id", "step", "target"], keep="last")

    # ------------------------------------------------------------------ evaluation
    def load_adv(self, job: Job, items: list[Item]) -> torch.Tensor:
        folder = self.adv_dir(job)
        arrays = [read_png(folder / f"{i.image_id}.png") for i in items]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def evaluate(self, job: Job, target: str, items: list[Item]) -> pd.DataFrame:
        """Target predictions on the saved (quantised) adversarial images; cached per job x target."""
        path = self.out / "evals" / f"{job.attack}__{job.source}__{target}.csv"
        ids = [i.image_id for i in items]
        key = self.job_key(job)
        if path.exists():
            cached = pd.read_csv(path, dtype={"image_id": str})
            if cached.job_key.iloc[0] == key and list(cached.image_id) == ids:
                return cached
        model = self.model(target)
        frames = []
        batch = max(1, min(64, auto_max_forward(self.resolution)))
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            x = to_float(self.load_adv(job, chunk)).to(self.device)
            y = torch.tensor([i.label for i in chunk])
            with torch.no_grad():
                logits = model(x).float().cpu()
            frames.append(
                pd.DataFrame(
                    {
                        "image_id": [i.image_id for i in chunk],
                        "adv_pred": logits.argmax(1).numpy(),
                        "adv_loss": F.cross_entropy(logits, y, reduction="none").numpy(),
                        "adv_margin": margin(logits, y).numpy(),
                    }
                )
            )
        frame = pd.concat(frames, ignore_index=True)
        frame.insert(0, "job_key", key)
        atomic_write_csv(path, frame)
        return frame

    def records(self, eligible: dict[str, list[Item]]) -> pd.DataFrame:
        """One row per image x attack x source x target, with clean and adversarial predictions."""
        clean = self.clean.set_index(["image_id", "model"])
        frames = []
        for job in self.jobs():
            items = eligible[job.source]
            ids = [i.image_id for i in items]
            x = torch.stack([torch.from_numpy(read_png(self.out / "clean" / f"{i}.png")) for i in ids])
            a = self.load_adv(job, items).permute(0, 2, 3, 1)
            linf, l2 = perturbation_norms(x.float() / 255, a.float() / 255)
            for target in self.cfg["models"]["targets"]:
                ev = pd.read_csv(
                    self.out / "evals" / f"{job.attack}__{job.source}__{target}.csv", dtype={"image_id": str}
                )
                c = clean.loc[[(i, target) for i in ids]]
                frame = pd.DataFrame(
                    {
                        "image_id": ids,
                        "label": c.label.to_numpy(),
                        "attack": job.attack,
                        "method": "+".join(str(m) for m in np.atleast_1d(job.spec["method"])),
                        "source": job.source,
                        "target": target,
                        "white_box": target == job.source,
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
                frames.append(frame)
        return pd.concat(frames, ignore_index=True)
