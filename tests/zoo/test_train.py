"""The cross-architecture zoo: architectures, the resumable trainer, LGV collection, committed weights.

Training tests read the first few hundred CIFAR-10 training JPEGs from `../shared` (skipped when absent) and
run with one torch thread; the weights tests build random weights in a tmp dir and run anywhere.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transferlab.models import format_models_table, list_models, load_model
from transferlab.weights import ChecksumError, sha256_file
from transferlab.zoo.archs import ZOO_ARCHS, ZOO_WEIGHTS_ENV, zoo_weights_dir
from transferlab.zoo.train import (
    CIFAR10_CLASSES,
    TrainConfig,
    TrainError,
    contiguous_state,
    install_weights,
    run,
    write_weights,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
TRAIN_JPG = SHARED / "data" / "cifar10-train-jpg"
TEST_JPG = SHARED / "data" / "cifar10-test-jpg"
REFERENCE_LOG = Path(__file__).parent / "data" / "vgg11_bn-limit512-epochs1-threads1.csv"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared asset not present: {path}")
    return path


def _cfg(**kw) -> TrainConfig:
    need(TRAIN_JPG), need(TEST_JPG)
    base = {"arch": "vgg11_bn", "epochs": 2, "limit": 256, "test_limit": 100}
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jpeg-cache")


def _weights(folder: Path) -> list[Path]:
    return sorted(folder.glob("cifar10_*.safetensors"))


# ---------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch", list(ZOO_ARCHS))
def test_arch_forward_shape_and_size(arch: str) -> None:
    row = ZOO_ARCHS[arch]
    torch.manual_seed(0)
    net = row.build().eval()
    params = sum(p.numel() for p in net.parameters())
    assert 10_000 < params <= row.max_params
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_zoo_models_are_registered_with_cifar_normalisation(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ZOO_WEIGHTS_ENV, str(tmp_path))
    rows = {r["name"]: r for r in list_models()}
    for row in ZOO_ARCHS.values():
        assert rows[row.model_name]["available"] is False
        assert "trained here" in rows[row.model_name]["weights_source"]
    assert "test acc" in format_models_table(list(rows.values()))
    assert CIFAR10_CLASSES == tuple(sorted(CIFAR10_CLASSES))  # alphabetical = the CIFAR-10 order


# ---------------------------------------------------------------- the trainer


def test_resumed_run_ends_bit_identical(tmp_path: Path, cache: Path) -> None:
    """Stopped after epoch 1 and resumed by the CLI in a new process: same weights bytes as uninterrupted."""
    full, part = tmp_path / "full", tmp_path / "part"
    manifest = run(_cfg(), full, threads=1, cache_dir=cache, progress=False)
    assert run(_cfg(), part, threads=1, cache_dir=cache, progress=False, stop_after=1) == {}
    assert not _weights(part) and (part / "checkpoint.pt").is_file()
    with (part / "log.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1
    cmd = [sys.executable, "-m", "transferlab", "zoo", "train", "vgg11_bn", "--epochs", "2", "--limit", "256",
           "--test-limit", "100", "--threads", "1", "--out", str(part), "--cache", str(cache), "--quiet"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=120)
    (a,), (b,) = _weights(full), _weights(part)
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    assert manifest["sha256"] == sha256_file(a)
    assert a.name == f"cifar10_vgg11_bn-{manifest['sha256'][:8]}.safetensors"
    header = (full / "log.csv").read_text().splitlines()[0]
    assert header == "epoch,segment,train_loss,train_acc,test_acc,lr,seconds"
    # the zoo wrapper (CIFAR mean/std on [0,1] images) sees what the trainer saw
    from transferlab.zoo.train import load_jpeg_cache

    images, labels = load_jpeg_cache(TEST_JPG, 100, cache)
    model = load_model("cifar10_vgg11_bn", weights=a)
    with torch.no_grad():
        acc = (model(images.float() / 255).argmax(1) == labels).float().mean().item()
    assert abs(acc - manifest["test_acc"]) <= 0.02
    saved = json.loads((full / "manifest.json").read_text())
    assert saved["threads"] == 1 and saved["config"]["seed"] == 0 and "torch" in saved["versions"]
    assert "commit" in saved["git"]


def test_resume_with_other_options_is_refused(tmp_path: Path, cache: Path) -> None:
    run(_cfg(epochs=1), tmp_path, threads=1, cache_dir=cache, progress=False, stop_after=1)
    with pytest.raises(TrainError, match="other options.*lr"):
        run(_cfg(epochs=1, lr=0.05), tmp_path, threads=1, cache_dir=cache, progress=False)


def test_first_epoch_loss_matches_committed_log(tmp_path: Path, cache: Path) -> None:
    """The log of `zoo train vgg11_bn --limit 512 --epochs 1 --test-limit 200 --threads 1 --seed 0`."""
    run(_cfg(epochs=1, limit=512, test_limit=200), tmp_path, threads=1, cache_dir=cache, progress=False)
    with REFERENCE_LOG.open() as f:
        expected = next(csv.DictReader(f))
    with (tmp_path / "log.csv").open() as f:
        got = next(csv.DictReader(f))
    assert abs(float(got["train_loss"]) - float(expected["train_loss"])) < 1e-6
    assert got["train_acc"] == expected["train_acc"]


def test_lgv_collects_snapshots_with_manifest(tmp_path: Path, cache: Path) -> None:
    torch.manual_seed(0)
    start, sha = write_weights(tmp_path, "start", contiguous_state(ZOO_ARCHS["vgg11_bn"].build()), {})
    cfg = _cfg(mode="lgv", epochs=1, per_epoch=2, lr=0.05, weight_decay=1e-4, nesterov=False,
               warmup_epochs=0.0, init_weights=f"{start}#sha256={sha}", init_sha256=sha)
    manifest = run(cfg, tmp_path / "lgv", threads=1, cache_dir=cache, progress=False)
    snaps = manifest["snapshots"]
    assert len(snaps) == 2 and [s["part"] for s in snaps] == [0, 1]
    listed = json.loads((tmp_path / "lgv" / "snapshots" / "manifest.json").read_text())["snapshots"]
    assert listed == snaps
    for snap in snaps:
        path = tmp_path / "lgv" / snap["file"]
        assert sha256_file(path) == snap["sha256"]
        model = load_model("cifar10_vgg11_bn", weights=f"{path}#sha256={snap['sha256']}")
        assert model.weights_sha256 == snap["sha256"]


# ---------------------------------------------------------------- weights in the package


def _fake_run(out: Path) -> Path:
    """A finished `zoo train` folder holding random vgg11_bn weights (no training)."""
    torch.manual_seed(1)
    path, sha = write_weights(out, "cifar10_vgg11_bn", contiguous_state(ZOO_ARCHS["vgg11_bn"].build()), {})
    manifest = {
        "kind": "transferlab zoo train", "model": "cifar10_vgg11_bn", "weights": path.name, "sha256": sha,
        "test_acc": 0.5, "test_images": 10, "train_images": 20, "threads": 1, "seconds": 1.0,
        "git": {"commit": None}, "description": "fake",
        "config": {"epochs": 1, "batch_size": 2, "lr": 0.1, "seed": 0},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_installed_weights_load_verified_and_tampered_refused(tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "zoo-weights"
    monkeypatch.setenv(ZOO_WEIGHTS_ENV, str(dest))
    source = _fake_run(tmp_path / "run")
    target = install_weights(tmp_path / "run")
    assert target.parent == dest and target.read_bytes() == source.read_bytes()
    table = json.loads((dest / "weights.json").read_text())
    assert table["cifar10_vgg11_bn"]["sha256"] == sha256_file(target)
    assert "cifar10_vgg11_bn" in (dest / "ACCURACY.md").read_text()
    model = load_model("cifar10_vgg11_bn")
    assert model.weights_sha256 == table["cifar10_vgg11_bn"]["sha256"] and model.mean[0] == 0.4914
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    row = {r["name"]: r for r in list_models()}["cifar10_vgg11_bn"]
    assert row["available"] and row["test_acc"] == 0.5
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of the last tensor
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        load_model("cifar10_vgg11_bn")


def test_committed_weights_match_their_table() -> None:
    """Every committed file carries its sha256 prefix in its name and its full sha256 in weights.json."""
    folder = zoo_weights_dir()
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pytest.skip(f"no zoo weights committed yet in {folder}")
    table = json.loads((folder / "weights.json").read_text())
    for name, row in table.items():
        path = folder / row["file"]
        assert path in files and sha256_file(path) == row["sha256"]
        assert load_model(name).weights_sha256 == row["sha256"]


def test_zoo_check_reproduces_a_committed_record_and_flags_a_changed_one(tmp_path: Path, cache: Path) -> None:
    """`zoo check` reruns a recipe's first epoch from its manifest and compares it with the log."""
    from transferlab.zoo.check import check_first_epochs

    record = tmp_path / "record"
    record.mkdir()
    manifest = run(_cfg(epochs=2, limit=256, test_limit=100), tmp_path / "full", threads=1, cache_dir=cache,
                   progress=False)
    manifest["config"]["data"], manifest["config"]["test_data"] = str(TRAIN_JPG), str(TEST_JPG)
    (record / "cifar10_vgg11_bn_manifest.json").write_text(json.dumps(manifest))
    log = (tmp_path / "full" / "log.csv").read_text()
    (record / "cifar10_vgg11_bn_log.csv").write_text(log)
    rows = check_first_epochs("vgg11_bn", tmp_path / "again", 1, cache, progress=False, folder=record)
    assert len(rows) == 1 and rows[0].ok
    lines = log.splitlines()
    first = lines[1].split(",")
    first[2] = f"{float(first[2]) + 1e-3:.9f}"  # a committed loss the recipe does not give
    changed = "\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n"
    (record / "cifar10_vgg11_bn_log.csv").write_text(changed)
    rows = check_first_epochs("vgg11_bn", tmp_path / "again", 1, cache, progress=False, folder=record)
    assert not rows[0].ok


@pytest.mark.slow
def test_the_committed_vgg_recipe_reproduces_its_first_epoch(tmp_path: Path, cache: Path) -> None:
    """`transferlab zoo check vgg11_bn`: the full recipe's first epoch (50k training JPEGs, one thread,
    about 2.5 min) gives the committed log's loss to 1e-6 and its accuracies exactly."""
    from transferlab.zoo.check import check_first_epochs

    need(TRAIN_JPG), need(TEST_JPG)
    rows = check_first_epochs("vgg11_bn", tmp_path / "vgg", 1, cache, progress=False)
    assert len(rows) == 1
    assert rows[0].ok, rows[0]
