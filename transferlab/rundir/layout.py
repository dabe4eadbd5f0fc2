"""The layout of a run directory: the one place that knows where each file lives and how to read it.

    run.json                                  marker and identity (transferlab.rundir.marker)
    clean/<image_id>.png                      clean image at attack resolution, 8-bit
    clean.csv                                 clean prediction of every model on every scanned image
    eligible.csv                              the images each source attacks, in order (decided once)
    adv/<attack>/<source>/<image_id>.png      quantised adversarial image
    adv/<attack>/<source>/job.json            the job's identity: settings key, spec, steps
    adv/<attack>/<source>/cost/<scope>.json   time, forwards and images attacked by one writer
    evals/<attack>/<source>/<first_id>.csv    target predictions on one block of adversarial images
    steps/<attack>/<source>/<first_id>.csv    per-step target outcomes of one block (eval.record_every)
    shards/<scope>.json                       what each writer (`run`, `shard-K-of-N`) did: config,
                                              machine, threads, the images it attacked
    records.csv, results.csv, costs.csv, gains.csv, table.md, transfer.png, manifest.json
    interaction.csv, correlation.csv, ...     written by `transferlab interaction` / `correlate`
    .locks/                                   writer locks (transferlab.rundir.lock)

A block is a batch of `batch_size` consecutive eligible images (transferlab.rundir.shards); its files
are named by its first image. Every file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferlab.io import atomic_write_csv, atomic_write_json, read_png
from transferlab.rundir.marker import MARKER, RunDirError

ELIGIBLE_COLUMNS = ["source", "position", "image_id", "label", "target"]
EVAL_COLUMNS = ["job_key", "image_id", "target", "adv_pred", "adv_loss", "adv_margin"]
#: a job's accounting; written per writer scope, summed by the report
COST_FIELDS = ("seconds", "cpu_seconds", "cpu_images", "images", "forwards")


class RunDir:
    """Paths and readers of one run directory (nothing here loads a model or runs an attack)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    @property
    def marker(self) -> Path:
        return self.root / MARKER

    clean_csv = property(lambda self: self.root / "clean.csv")
    eligible_csv = property(lambda self: self.root / "eligible.csv")
    records_csv = property(lambda self: self.root / "records.csv")
    results_csv = property(lambda self: self.root / "results.csv")
    costs_csv = property(lambda self: self.root / "costs.csv")
    gains_csv = property(lambda self: self.root / "gains.csv")
    table_md = property(lambda self: self.root / "table.md")
    transfer_png = property(lambda self: self.root / "transfer.png")
    passes_png = property(lambda self: self.root / "passes.png")
    matched_gains_csv = property(lambda self: self.root / "matched_gains.csv")
    manifest_json = property(lambda self: self.root / "manifest.json")
    interaction_csv = property(lambda self: self.root / "interaction.csv")
    interaction_manifest = property(lambda self: self.root / "interaction.manifest.json")
    correlation_csv = property(lambda self: self.root / "correlation.csv")
    correlation_png = property(lambda self: self.root / "correlation.png")
    correlation_manifest = property(lambda self: self.root / "correlation.manifest.json")
    by_attack_csv = property(lambda self: self.root / "interaction_by_attack.csv")
    by_attack_png = property(lambda self: self.root / "interaction_by_attack.png")

    def clean_png(self, image_id: str) -> Path:
        return self.root / "clean" / f"{image_id}.png"

    def job_dir(self, attack: str, source: str) -> Path:
        return self.root / "adv" / attack / source

    def adv_png(self, attack: str, source: str, image_id: str) -> Path:
        return self.job_dir(attack, source) / f"{image_id}.png"

    def job_file(self, attack: str, source: str) -> Path:
        return self.job_dir(attack, source) / "job.json"

    def cost_file(self, attack: str, source: str, scope: str) -> Path:
        return self.job_dir(attack, source) / "cost" / f"{scope}.json"

    def eval_file(self, attack: str, source: str, first_id: str) -> Path:
        return self.root / "evals" / attack / source / f"{first_id}.csv"

    def steps_file(self, attack: str, source: str, first_id: str) -> Path:
        return self.root / "steps" / attack / source / f"{first_id}.csv"

    def shard_file(self, scope: str) -> Path:
        return self.root / "shards" / f"{scope}.json"

    # ------------------------------------------------------------------ readers
    @staticmethod
    def _json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path} is unreadable ({exc}); delete it to have it recomputed") from None

    def read_clean(self) -> pd.DataFrame | None:
        path = self.clean_csv
        return pd.read_csv(path, dtype={"image_id": str}) if path.exists() else None

    def read_eligible(self) -> pd.DataFrame | None:
        path = self.eligible_csv
        return pd.read_csv(path, dtype={"image_id": str}) if path.exists() else None

    def write_eligible(self, eligible: dict[str, list[tuple[str, int, int | None]]]) -> None:
        """{source: [(image_id, label, target class or None), ...] in attack order}."""
        rows = [
            {"source": s, "position": k, "image_id": i, "label": y, "target": t}
            for s, items in eligible.items()
            for k, (i, y, t) in enumerate(items)
        ]
        atomic_write_csv(self.eligible_csv, pd.DataFrame(rows, columns=ELIGIBLE_COLUMNS))

    def eligible_targets(self) -> dict[str, dict[str, int]]:
        """{source: {image_id: target class}} of a targeted run."""
        table = self.read_eligible()
        return {s: {i: int(t) for i, t in zip(g.image_id, g.target) if t == t}
                for s, g in table.groupby("source", sort=False)}

    def eligible_ids(self) -> dict[str, list[str]]:
        table = self.read_eligible()
        if table is None:
            raise RunDirError(f"{self.root} has no eligible.csv: its images were never selected")
        return {s: list(g.sort_values("position").image_id) for s, g in table.groupby("source", sort=False)}

    def read_job(self, attack: str, source: str) -> dict | None:
        """The job's identity record, from job.json (a job.json of an older run also held its
        accounting, which `legacy_cost` returns)."""
        return self._json(self.job_file(attack, source))

    def read_costs(self, attack: str, source: str) -> dict[str, dict]:
        """{scope: accounting} of every writer that attacked images of the job."""
        folder = self.job_dir(attack, source) / "cost"
        costs = {f.stem: self._json(f) for f in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
        job = self.read_job(attack, source) or {}
        if "seconds" in job and "run" not in costs:  # accounting kept in job.json by older runs
            costs["run"] = legacy_cost(job)
        return costs

    def write_cost(self, attack: str, source: str, scope: str, cost: dict) -> None:
        atomic_write_json(self.cost_file(attack, source, scope), cost)

    def read_steps(self, attack: str, source: str) -> pd.DataFrame | None:
        folder = self.root / "steps" / attack / source
        files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
        if not files:
            return None
        frame = pd.concat([pd.read_csv(f, dtype={"image_id": str}) for f in files], ignore_index=True)
        return frame.drop_duplicates(["image_id", "step", "target"], keep="last")

    def read_eval(self, attack: str, source: str, first_id: str) -> pd.DataFrame | None:
        path = self.eval_file(attack, source, first_id)
        if not path.exists():
            return None
        try:
            return pd.read_csv(path, dtype={"image_id": str, "job_key": str})
        except (OSError, ValueError, pd.errors.ParserError):
            return None

    def eval_current(self, attack: str, source: str, ids: list[str], key: str, targets: list[str]) -> bool:
        """Whether the block's cached evaluation belongs to job key `key` and covers its images and every
        target."""
        frame = self.read_eval(attack, source, ids[0])
        if frame is None or frame.empty or list(frame.columns) != EVAL_COLUMNS:
            return False
        if set(frame.job_key.astype(str)) != {key}:
            return False
        have = {t: list(g.image_id) for t, g in frame.groupby("target", sort=False)}
        return all(have.get(t) == ids for t in targets)

    def read_config(self) -> dict:
        """The resolved config the run's manifest records (what `interaction` and `correlate` need to
        load the run's models as it used them)."""
        path = self.manifest_json
        if not path.is_file():
            raise RunDirError(
                f"{path} not found: the manifest records which weights the run used for its source "
                "models; run the `transferlab run` command that made this folder again (or "
                f"`transferlab report {self.root}`) to write it"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{path} is not valid JSON ({exc}): cannot tell how the run was made") from None
        config = manifest.get("config") if isinstance(manifest, dict) else None
        if not isinstance(config, dict):
            raise RunDirError(f"{path} has no config entry: cannot tell how the run was made")
        return ordered_config(manifest)

    def read_shards(self) -> dict[str, dict]:
        folder = self.root / "shards"
        return {f.stem: self._json(f) for f in sorted(folder.glob("*.json"))} if folder.is_dir() else {}

    def load_adv(self, attack: str, source: str, ids: list[str]) -> np.ndarray:
        """uint8 NHWC adversarial images of `ids`."""
        return np.stack([read_png(self.adv_png(attack, source, i)) for i in ids])

    def load_clean(self, ids: list[str]) -> np.ndarray:
        return np.stack([read_png(self.clean_png(i)) for i in ids])


def ordered_config(record: dict) -> dict:
    """The resolved config a writer record or manifest holds, with its attacks in the config's order
    (JSON files are written with sorted keys; `attack_order` keeps the order tables and records use)."""
    cfg = dict(record["config"])
    order = record.get("attack_order") or list(cfg.get("attacks", {}))
    attacks = cfg.get("attacks", {})
    cfg["attacks"] = {name: attacks[name] for name in order if name in attacks}
    return cfg


def legacy_cost(job: dict) -> dict:
    """The accounting an older job.json carried, in the shape of a cost record."""
    cost = {k: job.get(k, 0) for k in COST_FIELDS}
    cost["cpu_seconds"] = job.get("cpu_seconds", 0.0)
    cost["cpu_images"] = job.get("cpu_images", job["images"] if job.get("cpu_seconds") else 0)
    cost["git"] = job.get("git", [])
    cost["machines"] = job.get("machines", [])
    return cost
