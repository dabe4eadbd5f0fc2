"""What marks a folder as a transferlab run, `--fresh`, and the run's identity (data and weights).

A run directory holds `run.json` (the marker: format, the run's identity — the data settings and the
sha256 of every model's weights — and, for a sharded run, the split its shards share), the outputs
listed in `transferlab.rundir.layout`, and `.locks/` (`transferlab.rundir.lock`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.io import atomic_write_json

MARKER = "run.json"
LOCKS = ".locks"
FORMAT = 1
WHOLE_RUN = "run"

#: files and folders `transferlab run`, `interaction` and `correlate` write at the top of a run directory
RUN_FILES = (
    MARKER,
    "manifest.json",
    "clean.csv",
    "eligible.csv",
    "records.csv",
    "results.csv",
    "costs.csv",
    "gains.csv",
    "matched_gains.csv",
    "table.md",
    "transfer.png",
    "passes.png",
    "interaction.csv",
    "interaction.manifest.json",
    "correlation.csv",
    "correlation.png",
    "correlation.manifest.json",
    "interaction_by_attack.csv",
    "interaction_by_attack.png",
)
RUN_FOLDERS = ("clean", "adv", "evals", "steps", "shards", LOCKS)


class RunDirError(TransferlabError):
    """The output directory cannot be used (not a run, locked, not writable); the message says why."""


# ---------------------------------------------------------------- what a run is


def is_run(path: Path) -> bool:
    """True for a folder `transferlab run` wrote: it has `run.json`, or (runs made before the marker
    existed) a `clean.csv` or a `manifest.json` with a resolved config beside `adv/`."""
    if (path / MARKER).is_file() or (path / "clean.csv").is_file():
        return True
    manifest = path / "manifest.json"
    if manifest.is_file() and (path / "adv").is_dir():
        try:
            return "config" in json.loads(manifest.read_text())
        except (OSError, ValueError):
            return False
    return False


def is_empty(path: Path) -> bool:
    """A folder holding nothing, or only a lock folder (a run killed before it wrote its marker)."""
    return all(child.name == LOCKS for child in path.iterdir())


def check_output_dir(path: Path) -> None:
    """Refuse an `--out` that is a file, lies under a file, or is a folder with foreign content.

    Nothing is created here: a refused directory is left exactly as it was.
    """
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == path else f"lies under {parent}, which is a file"
            raise RunDirError(f"output directory {path} {what}; choose a folder for --out")
        if parent.exists():
            break
    if path.is_dir() and not is_run(path) and not is_empty(path):
        raise RunDirError(
            f"{path} is not empty and is not a transferlab run (no {MARKER}, clean.csv or manifest.json): "
            "refusing to write into it; choose a new or empty folder for --out"
        )


def make_dir(path: Path) -> None:
    """mkdir -p with a one-line error naming the folder (read-only, no space, not a folder)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create output directory {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"output directory {path} is not writable")


# ---------------------------------------------------------------- --fresh


def fresh_plan(path: Path) -> tuple[list[Path], list[Path]]:
    """(entries `--fresh` removes, entries it keeps) of an existing run directory.

    Refuses a folder that is not a transferlab run. Only what transferlab writes is removed (the files in
    `RUN_FILES` and the folders in `RUN_FOLDERS`, locks excepted); anything else stays and is listed.
    """
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--fresh: {path} is a file, not a run directory; nothing removed")
    if not path.exists() or is_empty(path):
        return [], []
    if not is_run(path):
        raise RunDirError(
            f"--fresh refuses to delete {path}: it is not a transferlab run (no {MARKER}, clean.csv or "
            "manifest.json); nothing removed. Delete it yourself, or choose another --out"
        )
    remove, keep = [], []
    for child in sorted(path.iterdir()):
        if child.name == LOCKS:
            continue
        ours = child.name in RUN_FILES if child.is_file() else child.name in RUN_FOLDERS
        (remove if ours else keep).append(child)
    return remove, keep


def describe_fresh(path: Path, remove: list[Path], keep: list[Path]) -> str:
    """One line saying what `--fresh` removes (file counts per entry) and what it keeps."""
    parts = []
    for entry in remove:
        if entry.is_dir():
            count = sum(1 for f in entry.rglob("*") if f.is_file())
            parts.append(f"{entry.name}/ ({count} files)")
        else:
            parts.append(entry.name)
    text = f"--fresh: removing the run in {path}: {', '.join(parts) or 'nothing'}"
    if keep:
        text += f"; keeping what transferlab did not write: {', '.join(k.name for k in keep)}"
    return text


def remove_entries(entries: list[Path]) -> None:
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


# ---------------------------------------------------------------- identity


def read_marker(path: Path) -> dict[str, Any] | None:
    file = path / MARKER
    if not file.is_file():
        return None
    try:
        marker = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{file} is unreadable ({exc}); the run's identity is unknown") from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise RunDirError(f"{file} has an unknown format (expected format {FORMAT})")
    return marker


def check_identity(path: Path, data: dict, models: dict[str, str]) -> tuple[dict, bool]:
    """Compare the run's recorded identity with this invocation's; record new models.

    `data`: the data settings that decide the clean images; `models`: name -> weights digest. Returns
    (the identity now recorded, whether the run was made before identities were recorded). A changed
    data setting or a model whose weights digest differs is refused: its cached predictions and images
    would otherwise be returned as if they were this configuration's.
    """
    marker = read_marker(path)
    legacy = not (marker or {}).get("identity") and (path / "clean.csv").is_file()
    recorded = (marker or {}).get("identity") or {}
    old_data = recorded.get("data")
    if old_data is not None and old_data != data:
        diff = sorted(k for k in set(old_data) | set(data) if old_data.get(k) != data.get(k))
        shown = ", ".join(f"data.{k}: {old_data.get(k)!r} -> {data.get(k)!r}" for k in diff)
        raise RunDirError(
            f"{path} was run with other data settings ({shown}); its clean images and predictions belong to "
            "those: use another --out, or --fresh to start over"
        )
    old_models = dict(recorded.get("models") or {})
    for name, digest in models.items():
        if name in old_models and old_models[name] != digest:
            raise RunDirError(
                f"{path} was run with other weights for {name} ({old_models[name][:24]}..., now "
                f"{digest[:24]}...; check models.weights_dir / models.weights): its cached results belong to "
                "those weights. Use another --out, or --fresh to start over"
            )
        old_models[name] = digest
    identity = {"data": data, "models": old_models}
    record = {
        "format": FORMAT,
        "created": (marker or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "identity": identity,
    }
    if (marker or {}).get("split"):
        record["split"] = marker["split"]
    if record != marker:
        atomic_write_json(path / MARKER, record)
    return identity, legacy


def check_split(path: Path, shard: Any, plan: str) -> None:
    """Record the split a sharded run's shards share in run.json, and refuse a shard of another split.

    Shards of one run share a directory only when they agree on the number of shards N and on the plan
    (`transferlab.rundir.jobs.plan_digest`: every job's settings, the images, the targets, the seed): a
    shard of another config would otherwise add its images to this run's. A one-process run owns the
    whole directory and clears the record. Nothing is written when refused.
    """
    marker = read_marker(path) or {}
    split = marker.get("split")
    if shard.sharded and split and (split.get("shards"), split.get("plan")) != (shard.count, plan):
        raise RunDirError(
            f"{path} holds the shards of another split of a run (N = {split.get('shards')}, plan "
            f"{split.get('plan')}; this shard: N = {shard.count}, plan {plan}): a shard of another config, "
            "seed, data.limit or shard count. Use another --out, or finish that run first and run "
            "without --shard to take the directory over"
        )
    new = {"shards": shard.count, "plan": plan} if shard.sharded else None
    if new == split:
        return
    marker = dict(marker) if marker else {"format": FORMAT}
    if new is None:
        marker.pop("split", None)
    else:
        marker["split"] = new
    marker.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_json(path / MARKER, marker)


def model_digest(model: Any) -> str:
    """Identity of a model's weights: the sha256 of the checkpoint file it was loaded from, else of its
    parameters and buffers (timm hub weights, models built in code)."""
    import torch

    sha = getattr(model, "weights_sha256", None)
    if sha:
        return f"sha256:{sha}"
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return f"state-sha256:{digest.hexdigest()}"


def check_model(path: Path, name: str, model: Any) -> None:
    """Refuse a model whose weights are not those the run in `path` recorded for `name` (when recorded)."""
    marker = read_marker(path)
    recorded = ((marker or {}).get("identity") or {}).get("models", {}).get(name)
    digest = model_digest(model)
    if recorded is not None and recorded != digest:
        raise RunDirError(
            f"the weights loaded for {name} (sha256 {digest[:24]}...) are not those {path} was made with "
            f"({recorded[:24]}...): its perturbations belong to those; load the run's weights"
        )
