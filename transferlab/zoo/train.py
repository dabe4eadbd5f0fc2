"""Train a zoo architecture on the CIFAR-10 training JPEGs, or collect LGV weights from a trained one.

One loop serves both modes; it runs over *segments* (an epoch, or for LGV a quarter of one) and after each
segment saves `checkpoint.pt` atomically (model, optimizer, step counter of the schedule, RNG states, log),
so a killed run started again with the same command resumes after its last finished segment and, at the
same torch thread count, ends with the same weights bytes as an uninterrupted run. Randomness: the model's
initialisation comes from `torch.manual_seed(seed)`; each epoch's shuffling and augmentation from its own
generator seeded by (seed, epoch), so a resumed epoch draws exactly what the uninterrupted one drew.

Data: the JPEGs are decoded once into a uint8 cache (`<cache>/<fingerprint>.npz`, written atomically);
labels follow `data.folder_items` (class folders in alphabetical order = the CIFAR-10 order, images
round-robin across classes so `--limit N` is balanced). Augmentation: 4-px zero padding + random 32-px
crop, horizontal flip with probability 1/2. Inputs are [0,1] images normalised with the zoo model's
mean/std (the wrapper `models.Classifier` applies the same normalisation at attack time).

Training defaults: SGD, momentum 0.9 (Nesterov), weight decay 5e-4, batch 128, peak lr 0.1 with one epoch of
linear warm-up then cosine decay to 0 (per step), no label smoothing.

LGV (Gubri et al., "LGV: Boosting Adversarial Example Transferability from Large Geometric Vicinity",
ECCV 2022). Defaults checked against the official code, github.com/Framartin/lgv-geometric-transferability:
10 epochs (`EPOCHS=10` in `lgv/imagenet/train_cSGD.sh`), 4 weight sets per epoch, each after a quarter
epoch (`--swa_freq=4`, "num samples per epoch", `train_swag_imagenet.py`), constant lr 0.05 (`LR=0.05  #
best LR` in `train_cSGD.sh`, with batch 256 on ImageNet), momentum 0.9 and weight decay 1e-4 (the defaults of
`train_swag_imagenet.py`; the README's torchattacks example also uses wd=1e-4). That lr was not given there
as a multiple of the initial training lr, so the "2x the initial lr" rule could not be verified; 0.05 is
half of our peak training lr 0.1 at batch 128, which we keep as the default (`--lr` changes it).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from transferlab.data import folder_items
from transferlab.errors import TransferlabError
from transferlab.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from transferlab.weights import load_checkpoint_with_digest, sha256_file
from transferlab.zoo.archs import MS_PER_IMAGE_STEP, ZOO_ARCHS, ZooArch, resolve_arch, zoo_weights_dir

if TYPE_CHECKING:
    from transferlab.models import Preprocess

__all__ = [
    "CIFAR10_CLASSES",
    "LGV_DEFAULTS",
    "TrainConfig",
    "TrainError",
    "default_cache_dir",
    "default_test_data",
    "default_train_data",
    "install_weights",
    "load_jpeg_cache",
    "run",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = "checkpoint.pt"
LOG_COLUMNS = ("epoch", "segment", "train_loss", "train_acc", "test_acc", "lr", "seconds")

#: LGV collection defaults (sources in the module docstring).
LGV_DEFAULTS = {"epochs": 10, "per_epoch": 4, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}


class TrainError(TransferlabError):
    """A training run cannot start or resume: the message says which file or option and what to do."""


def default_train_data() -> Path:
    return REPO.parent / "shared" / "data" / "cifar10-train-jpg"


def default_test_data() -> Path:
    return REPO.parent / "shared" / "data" / "cifar10-test-jpg"


def default_cache_dir() -> Path:
    """`$TRANSFERLAB_CACHE` or `~/.cache/transferlab`, then `zoo/` (decoded JPEG arrays)."""
    base = os.environ.get("TRANSFERLAB_CACHE") or Path.home() / ".cache" / "transferlab"
    return Path(base) / "zoo"


@dataclass
class TrainConfig:
    """Everything that determines a run's result (threads aside); stored in the checkpoint and manifest."""

    arch: str
    mode: str = "train"  # "train" or "lgv"
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.1  # peak lr (train) or the constant lr (lgv)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 1.0
    per_epoch: int = 1  # segments per epoch: LGV snapshots per epoch
    seed: int = 0
    limit: int | None = None
    test_limit: int | None = None
    data: str = field(default_factory=lambda: str(default_train_data()))
    test_data: str = field(default_factory=lambda: str(default_test_data()))
    init_weights: str | None = None  # lgv: the trained weights it starts from
    init_sha256: str | None = None

    def identity(self) -> dict:
        """The fields a resumed run must share with the run that made the checkpoint."""
        return {k: v for k, v in asdict(self).items() if k not in ("data", "test_data", "init_weights")}


# ---------------------------------------------------------------- data


def _fingerprint(root: Path, items: list) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode())
    for item in items:
        st = item.path.stat()
        digest.update(f"{item.path.relative_to(root)}:{item.label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_jpeg_cache(
    root: str | os.PathLike,
    limit: int | None,
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` images of a CIFAR class-per-folder tree as uint8 (N,3,32,32) and int64 labels (N,).

    Decoded once and cached as `<cache_dir>/<fingerprint>.npz` (the fingerprint covers the folder, file
    names, sizes and mtimes, so changed files are decoded again).
    """
    root = Path(root)
    if not root.is_dir():
        raise TrainError(f"training/test images not found: {root} (pass --data / --test-data)")
    items, classes = folder_items(root)
    if tuple(classes) != CIFAR10_CLASSES:
        raise TrainError(f"{root}: class folders {classes} are not the 10 CIFAR-10 classes")
    items = items[:limit] if limit else items
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{root.name}-{len(items)}-{_fingerprint(root, items)}.npz"
    if path.is_file():
        try:
            with np.load(path) as npz:
                return torch.from_numpy(npz["images"]), torch.from_numpy(npz["labels"])
        except (OSError, ValueError, KeyError):  # damaged by something else: decode again
            path.unlink(missing_ok=True)
    images = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
    for k, item in enumerate(items):
        with Image.open(item.path) as im:
            array = np.asarray(im.convert("RGB"))
        if array.shape != (32, 32, 3):
            raise TrainError(f"{item.path}: expected a 32x32 image, got {array.shape[1]}x{array.shape[0]}")
        images[k] = array
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    labels = np.array([item.label for item in items], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    atomic_write_bytes(path, buf.getvalue())
    if not quiet:
        print(f"decoded {len(items)} images of {root} into {path}", file=sys.stderr)
    return torch.from_numpy(images), torch.from_numpy(labels)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32-px crop of the 4-px zero-padded batch and horizontal flip (p=1/2); uint8 in, uint8 out."""
    n = batch.shape[0]
    padded = F.pad(batch, (4, 4, 4, 4))
    offsets = torch.randint(0, 9, (n, 2), generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.empty_like(batch)
    for k, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
        crop = padded[k, :, dy : dy + 32, dx : dx + 32]
        out[k] = crop.flip(-1) if flip else crop
    return out


# ---------------------------------------------------------------- model, schedule


class Normalize(nn.Module):
    """uint8 (B,3,H,W) -> (x/255 - mean)/std, channels-last; the zoo wrapper applies the same mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step `step` (0-based): LGV constant; training linear warm-up then cosine."""
    if cfg.mode == "lgv":
        return cfg.lr
    total = cfg.epochs * steps_per_epoch
    warm = min(total, max(1, round(cfg.warmup_epochs * steps_per_epoch)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _batches(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch: full batches only (a last partial batch is dropped), at least one."""
    return max(1, n // batch_size)


@torch.no_grad()
def evaluate(
    net: nn.Module, norm: Normalize, images: torch.Tensor, labels: torch.Tensor, bs: int = 500
) -> float:
    """Top-1 accuracy (fraction) in eval mode."""
    was = net.training
    net.eval()
    correct = 0
    for i in range(0, len(images), bs):
        correct += int((net(norm(images[i : i + bs])).argmax(1) == labels[i : i + bs]).sum())
    net.train(was)
    return correct / max(1, len(images))


def contiguous_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with contiguous (NCHW) tensors, as safetensors stores them."""
    return {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}


def safetensors_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialised safetensors; the metadata goes in one JSON-valued key (`transferlab`), because
    safetensors orders several keys at random and the bytes (and sha256) must be reproducible."""
    from safetensors.torch import save

    meta = {"transferlab": json.dumps(metadata, sort_keys=True)} if metadata else None
    return save(state, metadata=meta)


def write_weights(
    folder: Path, stem: str, state: dict[str, torch.Tensor], meta: dict[str, str]
) -> tuple[Path, str]:
    """Write `folder/<stem>-<sha8>.safetensors` atomically; return its path and full sha256."""
    data = safetensors_bytes(state, meta)
    sha = hashlib.sha256(data).hexdigest()
    path = folder / f"{stem}-{sha[:8]}.safetensors"
    atomic_write_bytes(path, data)
    return path, sha


# ---------------------------------------------------------------- checkpoint


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))


def _save_checkpoint(out: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(out / CHECKPOINT, buf.getvalue())


def _load_checkpoint(out: Path, cfg: TrainConfig, threads: int) -> dict | None:
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a checkpoint is written atomically: this is a foreign or damaged file
        raise TrainError(f"cannot read {path} ({type(error).__name__}): delete it to start again") from None
    if payload.get("config") != cfg.identity():
        theirs, ours = payload.get("config") or {}, cfg.identity()
        changed = [k for k in ours if theirs.get(k) != ours.get(k)]
        diff = ", ".join(f"{k} {theirs.get(k)!r} vs {ours.get(k)!r}" for k in changed)
        raise TrainError(
            f"{path} belongs to a run with other options ({diff}): use the same options to resume, "
            "or another --out for a new run"
        )
    if payload.get("threads") != threads:
        print(
            f"warning: {path} was made with {payload.get('threads')} torch threads, resuming with {threads}: "
            "the result will not be bit-identical to an uninterrupted run",
            file=sys.stderr,
        )
    return payload


# ---------------------------------------------------------------- the loop


def _write_log(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(out / "log.csv", buf.getvalue())


def _manifest(cfg: TrainConfig, threads: int, zoo: ZooArch, extra: dict) -> dict:
    from transferlab.provenance import git_commit, machine, versions

    return {
        "kind": f"transferlab zoo {cfg.mode}",
        "model": zoo.model_name,
        "arch": zoo.arch,
        "description": zoo.description,
        "config": asdict(cfg),
        "seed": cfg.seed,
        "threads": threads,
        "versions": versions(),
        "git": git_commit(REPO),
        "machine": machine(),  # the CPU's ISA decides the last bits of every result
        "normalisation": "CIFAR mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010) on [0,1] images",
        **extra,
    }


def run(
    cfg: TrainConfig,
    out: str | os.PathLike,
    threads: int = 1,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train (or collect LGV weights) into `out`, resuming from `out/checkpoint.pt`; return the manifest.

    `stop_after` ends the process's work after that many segments in total (as a kill would; for tests).
    """
    from transferlab.models import CHENYAOFO_PREPROCESS, registered_preprocess

    zoo = resolve_arch(cfg.arch, lgv=cfg.mode == "lgv")
    cfg.arch = zoo.arch
    if cfg.mode not in ("train", "lgv"):
        raise TrainError(f"mode must be 'train' or 'lgv', got {cfg.mode!r}")
    if cfg.epochs < 1 or cfg.batch_size < 2 or cfg.per_epoch < 1:
        raise TrainError("--epochs must be >= 1, --batch-size >= 2 and snapshots per epoch >= 1")
    if (cfg.limit is not None and cfg.limit < 2) or (cfg.test_limit is not None and cfg.test_limit < 1):
        raise TrainError("--limit must be at least 2 images and --test-limit at least 1")
    if threads < 1:
        raise TrainError(f"--threads {threads}: the number of torch threads must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        preprocess = CHENYAOFO_PREPROCESS if zoo.arch in ZOO_ARCHS else registered_preprocess(zoo.model_name)
        return _run(cfg, out, threads, cache_dir, progress, stop_after, zoo, preprocess)
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    cfg: TrainConfig,
    out: Path,
    threads: int,
    cache_dir: str | os.PathLike | None,
    progress: bool,
    stop_after: int | None,
    zoo: ZooArch,
    preprocess: Preprocess,
) -> dict:
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    net = zoo.build().to(memory_format=torch.channels_last)
    if cfg.mode == "lgv":  # before decoding any data: a wrong --from fails at once
        if not cfg.init_weights:
            raise TrainError("LGV starts from trained weights: pass --from WEIGHTS")
        state, sha = load_checkpoint_with_digest(cfg.init_weights)
        if cfg.init_sha256 is not None and sha != cfg.init_sha256:
            raise TrainError(
                f"{cfg.init_weights}: sha256 {sha} is not the {cfg.init_sha256} this run started from"
            )
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError:
            raise TrainError(
                f"{cfg.init_weights} holds no {zoo.model_name} weights (keys or shapes differ)"
            ) from None
    images, labels = load_jpeg_cache(cfg.data, cfg.limit, cache_dir, quiet=not progress)
    test_images, test_labels = load_jpeg_cache(cfg.test_data, cfg.test_limit, cache_dir, quiet=not progress)
    n = len(images)
    steps_per_epoch = _batches(n, cfg.batch_size)
    bs = min(cfg.batch_size, n)
    norm = Normalize(preprocess.mean, preprocess.std)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=lr_at(cfg, 0, steps_per_epoch), momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay,
    )
    segments_per_epoch = cfg.per_epoch
    bounds = [round(steps_per_epoch * p / segments_per_epoch) for p in range(segments_per_epoch + 1)]
    done, step, log, snapshots = 0, 0, [], []
    payload = _load_checkpoint(out, cfg, threads)
    if payload is not None:
        net.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        done, step = payload["segments"], payload["step"]
        log, snapshots = payload["log"], payload["snapshots"]
        _set_rng_state(payload["rng"])
    total_segments = cfg.epochs * segments_per_epoch
    snap_dir = out / "snapshots"
    ran = 0
    while done < total_segments:
        if stop_after is not None and ran >= stop_after:
            return {}
        epoch, part = divmod(done, segments_per_epoch)
        generator = _epoch_generator(cfg.seed, epoch)
        perm = torch.randperm(n, generator=generator)
        # draw the whole epoch's augmentation first, so a segment's draws do not depend on where it starts
        batches = [perm[k * bs : (k + 1) * bs] for k in range(steps_per_epoch)]
        seeds = torch.randint(0, 2**62, (steps_per_epoch,), generator=generator).tolist()
        t0 = time.time()
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        span = range(bounds[part], bounds[part + 1])
        desc = f"{zoo.arch} epoch {epoch + 1}/{cfg.epochs}" + (
            f" part {part + 1}/{segments_per_epoch}" if segments_per_epoch > 1 else ""
        )
        bar = tqdm(span, desc=desc, disable=not progress, mininterval=1 if sys.stderr.isatty() else 30,
                   leave=sys.stderr.isatty(), file=sys.stderr)
        for k in bar:
            idx = batches[k]
            x = norm(augment(images[idx], torch.Generator().manual_seed(seeds[k])))
            y = labels[idx]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step, steps_per_epoch)
            logits = net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.close()
        done += 1
        ran += 1
        if cfg.mode == "lgv":
            meta = {"model": zoo.model_name, "lgv_index": str(done), "epoch": str(epoch), "part": str(part)}
            stem = f"{zoo.model_name}-lgv{done:03d}"
            path, sha = write_weights(snap_dir, stem, contiguous_state(net), meta)
            snapshots.append({"file": f"snapshots/{path.name}", "sha256": sha, "epoch": epoch, "part": part,
                              "step": step})
        end_of_epoch = part == segments_per_epoch - 1
        test_acc = evaluate(net, norm, test_images, test_labels) if end_of_epoch else float("nan")
        log.append({
            "epoch": epoch + 1, "segment": done, "train_loss": loss_sum / max(1, seen),
            "train_acc": correct / max(1, seen), "test_acc": test_acc,
            "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - t0,
        })
        _write_log(out, log)
        _save_checkpoint(out, {
            "config": cfg.identity(), "threads": threads, "segments": done, "step": step, "log": log,
            "snapshots": snapshots, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": {"step": step, "steps_per_epoch": steps_per_epoch}, "rng": _rng_state(),
        })
        if progress:
            acc = f", test acc {test_acc:.4f}" if end_of_epoch else ""
            row = log[-1]
            print(f"{desc}: train loss {row['train_loss']:.4f}, train acc {row['train_acc']:.4f}{acc}, "
                  f"{row['seconds']:.0f} s", file=sys.stderr, flush=True)
    return _finish(cfg, out, threads, zoo, net, log, snapshots, n, len(test_images))


def _finish(
    cfg: TrainConfig,
    out: Path,
    threads: int,
    zoo: ZooArch,
    net: nn.Module,
    log: list[dict],
    snapshots: list[dict],
    n_train: int,
    n_test: int,
) -> dict:
    """Write the final weights (train) or the snapshot manifest (lgv) and the run's manifest."""
    final = next((r for r in reversed(log) if not math.isnan(r["test_acc"])), None)
    test_acc = final["test_acc"] if final else None
    extra = {
        "train_images": n_train, "test_images": n_test, "test_acc": test_acc,
        "seconds": sum(r["seconds"] for r in log), "log": "log.csv",
    }
    if cfg.mode == "lgv":
        extra["snapshots"] = snapshots
        manifest = _manifest(cfg, threads, zoo, extra)
        atomic_write_json(out / "snapshots" / "manifest.json", manifest)
        atomic_write_json(out / "manifest.json", manifest)
        return manifest
    meta = {"model": zoo.model_name, "arch": zoo.arch, "seed": str(cfg.seed), "epochs": str(cfg.epochs)}
    for old in out.glob(f"{zoo.model_name}-*.safetensors"):  # a re-finish writes the same bytes; keep one
        old.unlink()
    path, sha = write_weights(out, zoo.model_name, contiguous_state(net), meta)
    extra.update({"weights": path.name, "sha256": sha})
    manifest = _manifest(cfg, threads, zoo, extra)
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------- installing into the package


def install_weights(out: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Copy a finished run's weights into the zoo folder (default `transferlab/zoo/weights/`) and record
    their sha256 and test accuracy in `weights.json` and `ACCURACY.md` there."""
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        raise TrainError(f"{out}/manifest.json is missing or unreadable: is the run finished?") from None
    if manifest.get("kind") != "transferlab zoo train" or "weights" not in manifest:
        raise TrainError(f"{out} is not a finished `transferlab zoo train` run")
    source = out / manifest["weights"]
    if sha256_file(source) != manifest["sha256"]:
        raise TrainError(f"{source}: sha256 differs from its manifest; train again or restore the file")
    folder = Path(dest) if dest is not None else zoo_weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = manifest["model"]
    for old in folder.glob(f"{name}-*.safetensors"):
        old.unlink()
    target = folder / source.name
    tmp = folder / f".{source.name}.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    table_path = folder / "weights.json"
    table = json.loads(table_path.read_text()) if table_path.is_file() else {}
    cfg = manifest["config"]
    table[name] = {
        "file": target.name, "sha256": manifest["sha256"], "test_acc": manifest["test_acc"],
        "test_images": manifest["test_images"], "train_images": manifest["train_images"],
        "epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "lr": cfg["lr"], "seed": cfg["seed"],
        "threads": manifest["threads"], "train_seconds": round(manifest["seconds"]),
        "git_commit": manifest["git"].get("commit"), "description": manifest["description"],
    }
    atomic_write_json(table_path, table)
    atomic_write_text(folder / "ACCURACY.md", _accuracy_markdown(table))
    return target


def _accuracy_markdown(table: dict) -> str:
    lines = [
        "# Zoo weights trained here",
        "",
        "Top-1 on the CIFAR-10 test set as JPEG q75 (`../shared/data/cifar10-test-jpg`, 10 000 images),",
        "written by `transferlab zoo install`; `weights.json` holds the same rows and each file's sha256.",
        "",
        "| model | test acc | epochs | train time (s) | threads | file |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in sorted(table.items()):
        acc = f"{row['test_acc']:.4f}" if row.get("test_acc") is not None else "-"
        lines.append(f"| `{name}` | {acc} | {row['epochs']} | {row['train_seconds']} | {row['threads']} "
                     f"| `{row['file']}` |")
    if not table:
        lines.append("| (none installed yet: `transferlab zoo train ARCH --install`) | | | | | |")
    lines += [
        "",
        "Training cost, one SGD step at batch 128 (channels-last, torch 2.14.1, ms per image):",
        "",
        "| arch | model | 1 thread | 2 threads | what |",
        "|---|---|---|---|---|",
    ]
    for arch, row in ZOO_ARCHS.items():
        ms = MS_PER_IMAGE_STEP.get(arch, {})
        cost = f"{ms.get(1, '-')} | {ms.get(2, '-')}"
        lines.append(f"| `{arch}` | `{row.model_name}` | {cost} | {row.description} |")
    return "\n".join(lines) + "\n"
