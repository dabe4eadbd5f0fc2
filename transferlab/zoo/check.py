"""`transferlab zoo check ARCH`: rerun the first epochs of a committed zoo model's recipe and compare them
with its committed training log (results/zoo/cifar10_<arch>_log.csv), so a clean clone can confirm that
`zoo train` still reproduces the weights it ships.

The recipe (epochs, schedule, seed, batch size, threads) comes from the committed manifest; the run stops
after the checked epochs, so the learning-rate schedule is the full run's. Results depend on the torch
build, the CPU's instruction set and the threads (the manifest records all three): on another machine a
difference is reported as such, not hidden.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from transferlab.zoo.archs import resolve_arch
from transferlab.zoo.train import REPO, TrainConfig, TrainError, run

#: absolute tolerance on the mean training loss of an epoch (float32 sums over 50k images, same machine)
LOSS_TOL = 1e-6
COMMITTED = REPO / "results" / "zoo"


@dataclass
class EpochCheck:
    epoch: int
    committed_loss: float
    loss: float
    committed_acc: str
    acc: str
    committed_test: str
    test: str

    @property
    def ok(self) -> bool:
        return (abs(self.loss - self.committed_loss) <= LOSS_TOL and self.acc == self.committed_acc
                and self.test == self.committed_test)


def committed_files(arch: str, folder: Path = COMMITTED) -> tuple[Path, Path]:
    """(log.csv, manifest.json) committed for a zoo architecture."""
    model = resolve_arch(arch).model_name
    log, manifest = folder / f"{model}_log.csv", folder / f"{model}_manifest.json"
    for path in (log, manifest):
        if not path.is_file():
            raise TrainError(f"no committed training record for {model}: {path} is missing")
    return log, manifest


def _logged_epochs(out: Path) -> int:
    path = out / "log.csv"
    if not path.is_file():
        return 0
    with path.open() as f:
        return len(list(csv.DictReader(f)))


def check_first_epochs(arch: str, out: str | os.PathLike, epochs: int = 1,
                       cache_dir: str | os.PathLike | None = None, progress: bool = True,
                       folder: Path = COMMITTED) -> list[EpochCheck]:
    """Train the committed recipe of `arch` for its first `epochs` epochs into `out`; compare the log rows."""
    log_path, manifest_path = committed_files(arch, folder)
    manifest = json.loads(manifest_path.read_text())
    known = {f.name for f in fields(TrainConfig)} - {"data", "test_data"}
    cfg = TrainConfig(**{k: v for k, v in manifest["config"].items() if k in known})
    if epochs < 1 or epochs > cfg.epochs:
        raise TrainError(f"--epochs must be between 1 and the recipe's {cfg.epochs}, got {epochs}")
    done = _logged_epochs(Path(out))  # a rerun into the same folder resumes, and never trains past the check
    if done < epochs:
        run(cfg, out, threads=int(manifest["threads"]), cache_dir=cache_dir, progress=progress,
            stop_after=(epochs - done) * cfg.per_epoch)
    with log_path.open() as f:
        committed = list(csv.DictReader(f))[:epochs]
    with (Path(out) / "log.csv").open() as f:
        got = list(csv.DictReader(f))[:epochs]
    return [EpochCheck(int(c["epoch"]), float(c["train_loss"]), float(g["train_loss"]), c["train_acc"],
                       g["train_acc"], c["test_acc"], g["test_acc"]) for c, g in zip(committed, got)]
