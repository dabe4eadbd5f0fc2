"""Checkpoint loading: one-line errors for unusable files, `#sha256=` digest pins, the digest recorded on the
Classifier. Every checkpoint is a small random CIFAR ResNet saved in a tmp dir, so this runs offline."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import CIFAR_WEIGHTS, need

from transferlab import weights as weights_mod
from transferlab.archs.cifar_resnet import cifar_resnet
from transferlab.models import load_model
from transferlab.weights import (
    CheckpointError,
    ChecksumError,
    MissingWeightsError,
    load_checkpoint,
    load_checkpoint_with_digest,
    split_pin,
)

MODEL = "cifar10_resnet20"


class Gadget:
    """A custom class: pickling an instance stores a reference to code, which the loader refuses."""


def _state(depth: int = 20, option: str = "A", num_classes: int = 10) -> dict[str, torch.Tensor]:
    return cifar_resnet(depth, option, num_classes).state_dict()


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return _state()


@pytest.fixture
def checkpoint(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A real `cifar10_resnet20` checkpoint (no digest in its name)."""
    path = tmp_path / "resnet20.th"
    torch.save(state, path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- bad files, one row each


def _truncated(tmp: Path) -> Path:
    torch.save(_state(), tmp / "full.th")
    data = (tmp / "full.th").read_bytes()
    (tmp / "cut.th").write_bytes(data[: len(data) // 2])
    return tmp / "cut.th"


def _binary(tmp: Path) -> Path:
    (tmp / "noise.pth").write_bytes(bytes(range(256)) * 4)
    return tmp / "noise.pth"


def _text(tmp: Path) -> Path:
    (tmp / "notes.pth").write_text("these are not weights\nsecond line\n")
    return tmp / "notes.pth"


def _lfs_pointer(tmp: Path) -> Path:
    (tmp / "lfs.pth").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    return tmp / "lfs.pth"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.pt").write_bytes(b"")
    return tmp / "empty.pt"


def _code(tmp: Path) -> Path:
    torch.save({"conv1.weight": torch.zeros(1), "extra": Gadget()}, tmp / "code.th")
    return tmp / "code.th"


def _not_tensors(tmp: Path) -> Path:
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, tmp / "mixed.th")
    return tmp / "mixed.th"


def _safetensors_truncated(tmp: Path) -> Path:
    from safetensors.torch import save_file

    save_file(_state(), str(tmp / "full.safetensors"))
    data = (tmp / "full.safetensors").read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return tmp / "cut.safetensors"


def _safetensors_bad_header(tmp: Path) -> Path:
    (tmp / "bad.safetensors").write_bytes((64).to_bytes(8, "little") + b"{not json" + b" " * 55)
    return tmp / "bad.safetensors"


def _safetensors_empty(tmp: Path) -> Path:
    (tmp / "empty.safetensors").write_bytes(b"")
    return tmp / "empty.safetensors"


def _architecture(depth: int, option: str, num_classes: int = 10) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        torch.save(_state(depth, option, num_classes), tmp / f"resnet{depth}{option}.th")
        return tmp / f"resnet{depth}{option}.th"

    return make


def _via_checkpoint(path: Path) -> None:
    load_checkpoint(path)


def _via_model(path: Path) -> None:
    load_model(MODEL, weights=path)


BAD_FILES = [
    # id, how to make the file, how to load it, expected exception, message fragments
    ("truncated", _truncated, _via_checkpoint, CheckpointError, ["truncated or corrupt"]),
    ("binary", _binary, _via_checkpoint, CheckpointError, ["not a PyTorch checkpoint", "00 01 02"]),
    ("text", _text, _via_checkpoint, CheckpointError, ["text file", "these are not weights"]),
    ("lfs-pointer", _lfs_pointer, _via_checkpoint, CheckpointError, ["Git LFS pointer", "git lfs pull"]),
    ("empty", _empty, _via_checkpoint, CheckpointError, ["empty (0 bytes)"]),
    ("code", _code, _via_checkpoint, CheckpointError, ["refused", "holds code", "Gadget", "plain tensors"]),
    ("not-tensors", _not_tensors, _via_checkpoint, CheckpointError, ["not a state dict", "epoch: int"]),
    ("st-truncated", _safetensors_truncated, _via_checkpoint, CheckpointError, ["not a valid safetensors"]),
    ("st-header", _safetensors_bad_header, _via_checkpoint, CheckpointError, ["invalid JSON in header"]),
    ("st-empty", _safetensors_empty, _via_checkpoint, CheckpointError, ["empty (0 bytes)"]),
    (
        "arch-option-B",
        _architecture(20, "B"),
        _via_model,
        CheckpointError,
        [f"does not fit {MODEL}", "2 missing keys (linear.weight, linear.bias)", "14 unexpected keys", "..."],
    ),
    (
        "arch-deeper",
        _architecture(32, "A"),
        _via_model,
        CheckpointError,
        ["72 unexpected keys (layer1.3.conv1.weight"],
    ),
    (
        "arch-100-classes",
        _architecture(20, "A", num_classes=100),
        _via_model,
        CheckpointError,
        ["2 shape mismatches", "linear.weight: checkpoint 100x64 vs model 10x64"],
    ),
]


@pytest.mark.parametrize(
    ("make", "load", "error", "fragments"),
    [pytest.param(*row[1:], id=row[0]) for row in BAD_FILES],
)
def test_bad_checkpoint_gives_one_line_error(
    tmp_path: Path,
    make: Callable[[Path], Path],
    load: Callable[[Path], None],
    error: type[Exception],
    fragments: list[str],
) -> None:
    path = make(tmp_path)
    with pytest.raises(error) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert str(path) in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.__cause__ is None  # torch's multi-line dump is not chained onto the traceback


# ---------------------------------------------------------------- pins


def test_split_pin() -> None:
    full = "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"
    assert split_pin("w/resnet20.th") == (Path("w/resnet20.th"), None)
    assert split_pin(f"w/resnet20.th#sha256={full}") == (Path("w/resnet20.th"), full)
    assert split_pin("w/resnet20.th#SHA256=12FCA82F") == (Path("w/resnet20.th"), "12fca82f")
    assert split_pin(Path("run#3/model.pth")) == (Path("run#3/model.pth"), None)  # a '#' in a name


@pytest.mark.parametrize(
    ("pin", "fragment"),
    [
        ("#sha256=12fca82z", "not hexadecimal"),
        ("#sha256=12fca8", "too short"),
        ("#sha256=" + "0" * 65, "too long"),
        ("#sha256=", "not hexadecimal"),
        ("#md5=0123456789abcdef", "only sha256"),
        ("#sha256", "expected sha256=<hex>"),
        ("#12fca82f", "expected sha256=<hex>"),
    ],
)
def test_malformed_pin_is_refused(checkpoint: Path, pin: str, fragment: str) -> None:
    with pytest.raises(CheckpointError, match="malformed weights pin") as info:
        split_pin(f"{checkpoint}{pin}")
    assert fragment in str(info.value) and "#sha256=<hex>" in str(info.value)
    with pytest.raises(CheckpointError, match=fragment):
        load_model(MODEL, weights=f"{checkpoint}{pin}")


def test_pin_ok_loads_and_records_digest(checkpoint: Path, state: dict[str, torch.Tensor]) -> None:
    sha = _sha(checkpoint)
    for pin in (sha, sha[:8], sha[:8].upper()):
        model = load_model(MODEL, weights=f"{checkpoint}#sha256={pin}")
        assert model.weights_path == str(checkpoint) and model.weights_sha256 == sha
    torch.testing.assert_close(model.net.state_dict()["linear.weight"], state["linear.weight"])
    loaded, digest = load_checkpoint_with_digest(checkpoint, pin=sha[:12])
    assert digest == sha and loaded.keys() == state.keys()


def test_pin_mismatch_names_file_expected_and_actual(checkpoint: Path, monkeypatch) -> None:
    sha = _sha(checkpoint)
    wrong = "deadbeef" if not sha.startswith("deadbeef") else "beefdead"
    with pytest.raises(ChecksumError) as info:
        load_model(MODEL, weights=f"{checkpoint}#sha256={wrong}")
    message = str(info.value)
    assert str(checkpoint) in message and wrong in message and sha in message and "\n" not in message
    with pytest.raises(ChecksumError, match=wrong):
        load_checkpoint(checkpoint, pin=wrong)
    # the pin is checked before anything is unpickled
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled before the pin check"))
    with pytest.raises(ChecksumError):
        load_checkpoint(f"{checkpoint}#sha256={wrong}")


def test_missing_pinned_file(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="not found"):
        load_model(MODEL, weights=f"{tmp_path / 'absent.th'}#sha256=12fca82f")


# ---------------------------------------------------------------- the digest on the Classifier


def test_digest_recorded_and_file_hashed_once(
    tmp_path: Path, state: dict[str, torch.Tensor], monkeypatch
) -> None:
    tmp = tmp_path / "r.th"
    torch.save(state, tmp)
    sha = _sha(tmp)
    named = tmp.rename(tmp_path / f"resnet20-{sha[:8]}.th")  # digest in the name and a pin: one hash
    calls = []
    real = weights_mod.sha256_file
    monkeypatch.setattr(weights_mod, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    model = load_model(MODEL, weights=f"{named}#sha256={sha}")
    assert model.weights_sha256 == sha and model.weights_path == str(named)
    assert len(calls) == 1
    # a checkpoint found in a weights dir records its digest too
    folder = tmp_path / "weights" / "akamaster"
    folder.mkdir(parents=True)
    named.rename(folder / named.name)
    found = load_model(MODEL, weights_dir=tmp_path / "weights")
    assert found.weights_sha256 == sha and found.weights_path == str(folder / named.name)


def test_digest_of_timm_local_file(tmp_path: Path) -> None:
    import timm

    net = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "test_resnet.pth"
    torch.save(net.state_dict(), path)
    model = load_model("test_resnet", weights=f"{path}#sha256={_sha(path)[:10]}")
    assert model.weights_sha256 == _sha(path) and model.weights_path == str(path)


@pytest.mark.assets
def test_digest_of_shared_cifar_weights() -> None:
    need(CIFAR_WEIGHTS / "akamaster")
    model = load_model(MODEL, weights_dir=CIFAR_WEIGHTS)
    assert model.weights_sha256 == _sha(Path(model.weights_path))
    assert model.weights_sha256.startswith("12fca82f")
