"""Datasets of labelled images, resized/cropped once to the attack resolution as 8-bit tensors.

Kinds:
- ``samples``: the 20 labelled ImageNet samples shipped inside the ``foolbox`` wheel (read as
  files, foolbox is not imported) — the offline demo set;
- ``nips17``: the NIPS'17 dev set layout, ``root/images.csv`` + ``root/images/<ImageId>.png``,
  with 1-indexed ``TrueLabel`` (1001-class convention) shifted to 0-indexed;
- ``folder``: a class-per-folder tree, classes in alphabetical order (CIFAR-10 order for the
  CIFAR JPEGs), visited round-robin across classes so that the first N images are balanced.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from transferlab.errors import TransferlabError
from transferlab.names import is_safe_name

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DataError(TransferlabError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class Item:
    image_id: str
    path: Path
    label: int
    target: int | None = None  # target class of a targeted attack (NIPS'17: TargetClass − 1)


@dataclass
class Dataset:
    """A list of labelled image files and how to bring them to the attack resolution."""

    name: str
    items: list[Item]
    resolution: int
    crop_pct: float = 0.875
    num_classes: int | None = None
    on_error: str = "raise"
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, items: Sequence[Item]) -> tuple[list[Item], torch.Tensor]:
        """Read items as uint8 (N,3,R,R); with on_error='skip' unreadable files are dropped and counted."""
        kept, arrays = [], []
        for item in items:
            try:
                arrays.append(prepare_image(read_image(item.path), self.resolution, self.crop_pct))
                kept.append(item)
            except DataError as exc:
                if self.on_error != "skip":
                    raise
                self.skipped.append((str(item.path), str(exc)))
        if not arrays:
            return kept, torch.empty(0, 3, self.resolution, self.resolution, dtype=torch.uint8)
        return kept, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"image file not found: {path}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def prepare_image(image: Image.Image, resolution: int, crop_pct: float = 0.875) -> np.ndarray:
    """Resize the shorter side to resolution/crop_pct (bicubic), centre-crop to resolution: uint8 HxWx3."""
    w, h = image.size
    if not (w == h == resolution):
        short = max(resolution, int(round(resolution / crop_pct)))
        scale = short / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        image = image.resize(size, Image.BICUBIC)
        left = (size[0] - resolution) // 2
        top = (size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.uint8)


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float32 pixels in [0,1]."""
    return images_uint8.float() / 255


# ---------------------------------------------------------------------------- kinds
def samples_root() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the demo sample images come with the 'foolbox' package: pip install foolbox")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def sample_items(root: Path | None = None) -> list[Item]:
    """foolbox's labelled ImageNet samples: files imagenet_<NN>_<label>.jpg (labels 0-indexed)."""
    root = Path(root) if root else samples_root()
    pattern = re.compile(r"imagenet_(\d+)_(\d+)\.(jpg|png)$")
    items = []
    for path in sorted(root.glob("imagenet_*")):
        m = pattern.match(path.name)
        if m:
            items.append(Item(f"sample{m.group(1)}", path, int(m.group(2))))
    if not items:
        raise DataError(f"no imagenet_<NN>_<label>.jpg samples found in {root}")
    return items


def nips17_items(root: Path) -> list[Item]:
    """Rows of root/images.csv; TrueLabel is 1-indexed and is shifted to 0..999."""
    csv_path = root / "images.csv"
    if not csv_path.is_file():
        raise DataError(f"NIPS'17 csv not found: {csv_path} (set data.root to the folder holding images.csv)")
    items = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"ImageId", "TrueLabel"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{csv_path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["TrueLabel"]) - 1
            except ValueError as exc:
                raise DataError(
                    f"{csv_path}:{line}: TrueLabel {row['TrueLabel']!r} is not an integer"
                ) from exc
            if not 0 <= label < 1000:
                raise DataError(
                    f"{csv_path}:{line}: TrueLabel {row['TrueLabel']} out of range 1..1000 (1-indexed labels)"
                )
            target = row.get("TargetClass")
            target = int(target) - 1 if target not in (None, "") and str(target).strip().isdigit() else None
            items.append(Item(row["ImageId"], root / "images" / f"{row['ImageId']}.png", label, target))
    return items


def folder_items(root: Path) -> tuple[list[Item], list[str]]:
    """Class-per-folder tree; classes sorted alphabetically; round-robin order across classes."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class sub-folders")
    per_class = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        per_class.append([Item(f"{cls}_{p.stem}", p, label) for p in files])
    items = []
    for rank in range(max(len(f) for f in per_class)):
        items.extend(files[rank] for files in per_class if rank < len(files))
    return items, classes


def check_items(items: list[Item], where: str) -> list[Item]:
    """Refuse image ids that could escape the run directory or that two files share.

    An id names the image's files (`clean/<id>.png`, `adv/.../<id>.png`): two files with one id would be
    attacked as "the same" image, and an id such as `../x` would write outside the run.
    """
    seen: dict[str, Item] = {}
    for item in items:
        if not is_safe_name(item.image_id):
            raise DataError(
                f"{where}: image id {item.image_id!r} (from {item.path}) cannot be a file name: ids must "
                "start with a letter or digit and use only letters, digits and _ . + = @ , - "
                "(no '/', no '..')"
            )
        if item.image_id in seen and seen[item.image_id].path == item.path:
            raise DataError(f"{where}: image {item.image_id!r} is listed twice; an image may be listed once")
        if item.image_id in seen:
            raise DataError(
                f"{where}: two images have the id {item.image_id!r}: {seen[item.image_id].path} and "
                f"{item.path}; remove or rename one (an id must name one image)"
            )
        seen[item.image_id] = item
    return items


def open_dataset(data_cfg: dict) -> Dataset:
    """Build the dataset named by a config's `data` section."""
    kind = data_cfg["kind"]
    root = Path(data_cfg["root"]).expanduser() if data_cfg.get("root") else None
    num_classes = 1000
    if kind == "samples":
        items = check_items(sample_items(root), f"samples in {root or samples_root()}")
    elif kind == "nips17":
        if root is None:
            raise DataError("data.root must name the NIPS'17 folder (holding images.csv and images/)")
        items = check_items(nips17_items(root), str(root / "images.csv"))
    elif kind == "folder":
        if root is None:
            raise DataError("data.root must name the class-per-folder image tree")
        items, classes = folder_items(root)
        check_items(items, f"image folder {root}")
        num_classes = len(classes)
    else:
        raise DataError(f"unknown data.kind {kind!r}")
    return Dataset(
        name=kind,
        items=items,
        resolution=int(data_cfg["resolution"]),
        crop_pct=float(data_cfg["crop_pct"]),
        num_classes=num_classes,
        on_error=data_cfg.get("on_error", "raise"),
    )
