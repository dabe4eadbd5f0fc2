"""Atomic file writes: a killed run never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def atomic_write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV atomically (no index, fixed float format for byte-stable output)."""
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


def atomic_write_png(path: str | os.PathLike, image_uint8: np.ndarray) -> None:
    """Write an HxWx3 uint8 array as PNG atomically."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG written by `atomic_write_png` as HxWx3 uint8."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))
