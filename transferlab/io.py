"""Atomic file writes: a killed run never leaves a half-written file behind."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import pandas as pd

TMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    """0666 less the process umask: what `open()` would give, not mkstemp's private 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def csv_text(frame: pd.DataFrame) -> str:
    """A pandas DataFrame as CSV text: no index, floats to 6 significant digits (byte-stable output)."""
    return frame.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def as_written(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` as `atomic_write_csv` stores it, read back: what a table rendered from the CSV file shows.
    Rendering from this rather than the unrounded frame keeps a report re-rendered from the committed CSV
    byte-identical (a 6-digit value rounded again to 4 digits can differ from the raw value rounded once)."""
    import pandas as pd

    return pd.read_csv(io.StringIO(csv_text(frame)))


def atomic_write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a pandas DataFrame as CSV atomically (no index, fixed float format for byte-stable output)."""
    atomic_write_text(path, csv_text(frame))


def atomic_write_png(path: str | os.PathLike, image_uint8: np.ndarray) -> None:
    """Write an HxWx3 uint8 array as PNG atomically."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG written by `atomic_write_png` as HxWx3 uint8."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def try_read_png(path: str | os.PathLike) -> np.ndarray | None:
    """The PNG as HxWx3 uint8, or None when it is missing, truncated or not an image."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError):
        return None


def remove_stale_temporaries(root: str | os.PathLike, skip: tuple[str, ...] = ()) -> list[Path]:
    """Delete the `.<name>.<random>.tmp` files a killed writer left under `root`; return them.

    Only names of the form `atomic_write_bytes` creates are touched, outside the folders named in `skip`;
    call it while holding the run's lock.
    """
    removed = []
    for path in Path(root).rglob(f".*{TMP_SUFFIX}"):
        if skip and set(path.relative_to(root).parts) & set(skip):
            continue
        if path.is_file() and path.name.count(".") >= 3:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
