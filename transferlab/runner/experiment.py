"""A config becomes jobs; each job's output is cached in the run directory so a killed run resumes.

The stages, each in its own module: `select` (clean predictions, the eligible images), `attacking`
(adversarial PNGs per block), `evaluating` (target predictions per block); the reports are written from
the run directory alone by `transferlab.eval.report`. The layout of the directory is
`transferlab.rundir.layout`'s; every file is written atomically, a finished block is never recomputed,
and because each image's result depends only on itself and its block, a resumed, extended or sharded
run ends byte-identical to an uninterrupted one-process run.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

from transferlab.data import Dataset, Item, open_dataset
from transferlab.io import remove_stale_temporaries
from transferlab.provenance import provenance
from transferlab.rundir import (
    LOCKS,
    SELECT,
    Job,
    RunDir,
    RunLock,
    RunLockedError,
    Shard,
    check_identity,
    check_output_dir,
    data_identity,
    describe_fresh,
    fresh_plan,
    job_key,
    jobs_of,
    make_dir,
    model_digest,
    plan_digest,
    remove_entries,
)
from transferlab.rundir.marker import check_split
from transferlab.runner import attacking, evaluating, select
from transferlab.runner.resolve import (
    RunError,
    attack_from_spec,
    auto_max_forward,
    resolve_device,
)
from transferlab.runner.trajectories import attack_group, trajectory_groups
from transferlab.weights import collection_files


class Experiment:
    """Runs a validated config (or one shard of it) into `out_dir`.

    shard: which blocks of eligible images this process attacks (default: all); world: the torchrun
    process group this process belongs to (its shard and device come from it); threads: the decision of
    `transferlab.runner.threads`, recorded in the manifest; device: overrides the config's.
    """

    def __init__(
        self,
        cfg: dict,
        out_dir: str | Path,
        progress: bool = True,
        config_path: str | None = None,
        overrides: list[str] | tuple[str, ...] = (),
        shard: Shard | None = None,
        world=None,
        threads: dict | None = None,
        device: str | None = None,
    ):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.run_dir = RunDir(self.out)
        self.progress = progress
        self.config_path = config_path
        self.overrides = list(overrides)
        self.world = world
        self.shard = Shard(world.rank, world.size) if world is not None else (shard or Shard())
        self.threads = threads or {"threads": torch.get_num_threads(), "rule": "torch default"}
        if device is None:
            device = world.device(cfg["device"]) if world is not None else cfg["device"]
        self.device = resolve_device(device)
        self.dataset: Dataset = open_dataset(cfg["data"])
        self.resolution = self.dataset.resolution
        self._models: dict[str, torch.nn.Module] = {}
        self.warm: set[str] = set()
        self._pool = None
        self.timings: dict[str, float] = {}
        self.notices: list[str] = []
        self.digests: dict[str, str] = {}
        self.scanned = 0
        self.legacy = False  # set by run(): a run made before run.json, adopted after a check
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
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
        """The model `name` on the run's device: an ensemble of loaded members, or one loaded model."""
        collection = (self.cfg["models"].get("collections") or {}).get(name)
        if collection is not None:
            return self.load_collection(name, collection)
        members = (self.cfg["models"].get("ensembles") or {}).get(name)
        if not members:
            return self.load_single(name)
        if name not in self._models:
            from transferlab.ensemble import Ensemble

            parts = [self.load_single(m) for m in members]
            self._models[name] = Ensemble(parts, name, self.cfg["models"]["fusion"]).to(self.device)
        return self._models[name]

    def load_collection(self, name: str, spec: dict) -> torch.nn.Module:
        """A weight collection (`models.collections`): every set loaded as `spec['model']`."""
        if name not in self._models:
            from transferlab.ensemble import Collection
            from transferlab.models import load_model

            files = collection_files(spec["weights"], name)
            fmt = self.cfg["models"].get("memory_format", "contiguous")
            parts = []
            for file in files:
                part = load_model(spec["model"], weights=str(file), device=self.device)
                parts.append(part.use_memory_format(fmt) if fmt != "contiguous" else part)
            self._models[name] = Collection(parts, name, spec["n_grad"], spec["order"], self.cfg["seed"])
        return self._models[name]

    def load_single(self, name: str) -> torch.nn.Module:
        if name not in self._models:
            from transferlab.models import load_model

            weights = (self.cfg["models"].get("weights") or {}).get(name)
            model = load_model(
                name, weights=weights, weights_dir=self.cfg["models"]["weights_dir"], device=self.device
            )
            fmt = self.cfg["models"].get("memory_format", "contiguous")
            if fmt != "contiguous":
                model.use_memory_format(fmt)
            self._models[name] = model
        return self._models[name]

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

    # ------------------------------------------------------------------ jobs
    def jobs(self) -> list[Job]:
        return jobs_of(self.cfg)

    def job_key(self, job: Job) -> str:
        return job_key(self.cfg, job, self.digests[job.source])

    @property
    def plan(self) -> str:
        return plan_digest(self.cfg, self.digests)

    def build(self, job: Job):
        return attack_from_spec(job.attack, job.spec, self.resolution, self.cfg["seed"], self.cfg["targeted"],
                                max_forward=self.job_max_forward(job))

    def job_max_forward(self, job: Job) -> int:
        """Model inputs per forward for `job` when its entry sets none: what its record holds (a resumed job
        keeps the micro-batches its finished images were made with; other sizes change last bits), else
        `auto_max_forward`. Records without the field were made under today's rule; a change of the rule
        must keep the old one for them."""
        meta = self.run_dir.read_job(job.attack, job.source) or {}
        return int(meta.get("max_forward") or auto_max_forward(self.resolution))

    def pool(self):
        """Where pool-drawing components (Admix) take other images from: the whole dataset."""
        if self._pool is None:
            from transferlab.runner.pools import DatasetPool

            self._pool = DatasetPool(self.dataset)
        return self._pool

    def adv_dir(self, job: Job) -> Path:
        return self.run_dir.job_dir(job.attack, job.source)

    def blocks(self, job: Job, items: list[Item]) -> list[list[Item]]:
        """This process's blocks of the job's eligible images."""
        return self.shard.blocks(items, job.spec["batch_size"])

    # ------------------------------------------------------------------ stages
    def select_images(self) -> dict[str, list[Item]]:
        return select.select_images(self)

    def attack_job(self, job: Job, items: list[Item]) -> None:
        attacking.attack_job(self, job, self.blocks(job, items))

    def evaluate(self, job: Job, items: list[Item]) -> None:
        evaluating.evaluate_job(self, job, self.blocks(job, items))

    # ------------------------------------------------------------------ run
    def run(self, fresh: bool = False) -> dict[str, Any] | None:
        """Run every job (this shard's blocks of it) into the output directory, holding its lock.

        fresh: first remove the run already in the directory (only a transferlab run, only the files
        transferlab writes, and only after the config, the data and every model's weights loaded).
        Returns the report (None for a shard that did not write it).
        """
        t0 = time.time()
        if fresh and self.shard.sharded:
            raise RunError(
                "--fresh cannot be combined with --shard or torchrun (each shard would delete the others' "
                f"work): delete {self.out} (or use a new --out) once, then start the shards"
            )
        remove, keep = fresh_plan(self.out) if fresh else ([], [])
        if not fresh:
            check_output_dir(self.out)
        self.load_models()
        make_dir(self.out)
        with RunLock(self.out, scope=self.shard.scope):
            if remove:
                print(f"transferlab: {describe_fresh(self.out, remove, keep)}", file=sys.stderr)
                remove_entries(remove)
            if not self.shard.sharded:  # a shard may not sweep: another one may be writing
                swept = remove_stale_temporaries(self.out, skip=(LOCKS,))
                if swept:
                    self.notice(f"removed {len(swept)} temporary files a killed run left in {self.out}")
                old = sorted((self.out / "evals").glob("*__*__*.csv"))
                if old:  # one file per job x target, before evaluations were kept per block
                    for f in old:
                        f.unlink()
                    self.notice(f"removed {len(old)} evaluation files of an older layout (evals/*__*.csv); "
                                "they are recomputed per block")
            with self._selecting():
                check_split(self.out, self.shard, self.plan)
                _, self.legacy = check_identity(self.out, data_identity(self.cfg), self.digests)
                eligible = self.select_images()
            self.write_record("running", eligible)
            self._check_share(eligible)
            for group in trajectory_groups(self, self.jobs()):
                if len(group) == 1:
                    self.attack_job(group[0], eligible[group[0].source])
                else:
                    attack_group(self, group, self.blocks(group[0], eligible[group[0].source]))
            for job in self.jobs():
                self.evaluate(job, eligible[job.source])
            self.timings["total_s"] = time.time() - t0
            self.write_record("finished", eligible)
            if not self.shard.sharded:
                return self.report()
        return self.finish_shard()

    def _check_share(self, eligible: dict[str, list[Item]]) -> None:
        """Say so when this shard has no block of a job: blocks are the unit of sharding."""
        if not self.shard.sharded:
            return
        for job in self.jobs():
            size = job.spec["batch_size"]
            count = -(-len(eligible[job.source]) // size)
            if not self.blocks(job, eligible[job.source]):
                n = len(eligible[job.source])
                self.notice(
                    f"shard {self.shard} has no images of {job.label}: its {n} images make {count} blocks "
                    f"of batch_size {size}, fewer than the {self.shard.count} shards; lower batch_size to "
                    "spread the work"
                )

    @contextlib.contextmanager
    def _selecting(self):
        """Shards decide the eligible images one at a time (the first computes, the others read)."""
        if not self.shard.sharded:
            yield
            return

        def waiting(reason: str) -> None:
            print(f"transferlab: shard {self.shard} waits for the image selection: {reason}", file=sys.stderr)

        with RunLock(self.out, scope=SELECT, wait=True, on_wait=waiting):
            yield

    def write_record(self, status: str, eligible: dict[str, list[Item]]) -> None:
        """shards/<scope>.json: what this process is doing or did, for the manifest and `report`."""
        from transferlab.io import atomic_write_json

        mine = {
            f"{job.attack}/{job.source}": [
                i.image_id for b in self.blocks(job, eligible[job.source]) for i in b
            ]
            for job in self.jobs()
        }
        record = {
            "scope": self.shard.scope,
            "shard": self.shard.index,
            "shards": self.shard.count,
            "plan": self.plan,
            "job_keys": {f"{j.attack}/{j.source}": self.job_key(j) for j in self.jobs()},
            "status": status,
            "started": self.started,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": self.cfg,
            "attack_order": list(self.cfg["attacks"]),  # (JSON keys are written sorted)
            "config_path": self.config_path,
            "overrides": self.overrides,
            "host": socket.gethostname(),
            "device": str(self.device),
            "threads": self.threads,
            "world": self.world.info() if self.world is not None else None,
            "images": mine,
            "images_scanned": self.scanned,
            "skipped_files": [list(s) for s in self.dataset.skipped],
            "weights": self.model_files(),
            "notices": self.notices,
            "timings": self.timings,
            "provenance": self.provenance,
        }
        atomic_write_json(self.run_dir.shard_file(self.shard.scope), record)

    # ------------------------------------------------------------------ reports
    def report(self) -> dict[str, Any]:
        from transferlab.eval.report import report_run

        return report_run(self.run_dir, plan=self.plan)

    def finish_shard(self) -> dict[str, Any] | None:
        """After this shard's work: under torchrun, meet the other ranks and let rank 0 write the reports;
        otherwise write them when every shard has finished (the last one does), else say what is left."""
        from transferlab.eval.report import IncompleteRun, report_run

        if self.world is not None:
            from transferlab.runner.distributed import barrier

            barrier()
            if self.world.rank != 0:
                return None
            with RunLock(self.out, wait=True):
                return report_run(self.run_dir, plan=self.plan)
        try:
            with RunLock(self.out):
                return report_run(self.run_dir, plan=self.plan)
        except RunLockedError:
            print(
                f"transferlab: shard {self.shard} finished; other shards are still running in {self.out} "
                f"(the last to finish writes the tables, or run `transferlab report {self.out}`)",
                file=sys.stderr,
            )
        except IncompleteRun as exc:
            print(f"transferlab: shard {self.shard} finished; {exc}", file=sys.stderr)
        return None
