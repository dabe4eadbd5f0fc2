"""The cross-architecture CIFAR-10 zoo: one row per architecture trained by `transferlab zoo train`.

Widths and depths were chosen for 2 CPU cores (DESIGN §5: 1-3 ms per image per training step): one SGD
step (forward, cross-entropy, backward, update) at batch 128, channels-last, torch 2.14.1, measured with
1 and 2 torch threads (`MS_PER_IMAGE_STEP`; the 2-thread numbers were taken while another process used part
of the second core, so they understate the gain). Rejected sizes, 1 thread: VGG-11-BN x0.375 1.1 ms,
x0.25 0.5 ms (kept x0.5 for accuracy); MobileNetV2 x0.5 with the kuangliu strides (1,1,2,2,1,2,1) 7.2 ms,
x0.75 3.8 ms, x1.0 5.7 ms; DenseNet-BC-40 with a stride-1 stem 8.8 ms, DenseNet-BC-52 (k=16) 4.0 ms;
ConvMixer-128/6 patch 2 7.5 ms, -96/6 patch 2 4.1 ms, -192/8 patch 4 3.5 ms, -256/8 patch 4 4.8 ms.
Without channels-last every model is 1.2-2x slower.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch import nn

from transferlab.archs.cifar_convmixer import cifar_convmixer
from transferlab.archs.cifar_densenet import cifar_densenet_bc
from transferlab.archs.cifar_mobilenetv2 import cifar_mobilenetv2
from transferlab.archs.cifar_resnet import cifar_resnet
from transferlab.archs.cifar_vgg import cifar_vgg11_bn
from transferlab.errors import TransferlabError

__all__ = ["LGV_ONLY_ARCHS", "MS_PER_IMAGE_STEP", "ZOO_ARCHS", "ZOO_WEIGHTS_ENV", "ZooArch", "resolve_arch",
           "zoo_weights_dir"]

ZOO_WEIGHTS_ENV = "TRANSFERLAB_ZOO_WEIGHTS_DIR"


@dataclass(frozen=True)
class ZooArch:
    """An architecture of the zoo: short name, zoo model name, family, builder, parameter-count bound."""

    arch: str
    model_name: str
    family: str
    build: Callable[[], nn.Module]
    max_params: int
    description: str


ZOO_ARCHS: dict[str, ZooArch] = {
    a.arch: a
    for a in (
        ZooArch("vgg11_bn", "cifar10_vgg11_bn", "cifar10-vgg", partial(cifar_vgg11_bn, 0.5), 2_400_000,
                "VGG-11-BN at half width (32..256 channels), no skips"),
        ZooArch("mobilenetv2", "cifar10_mobilenetv2", "cifar10-mobilenetv2", partial(cifar_mobilenetv2, 0.5),
                500_000, "MobileNetV2 x0.5, blocks per stage 1,2,2,2,2,2,1, 640-channel head"),
        ZooArch("densenet", "cifar10_densenet", "cifar10-densenet", partial(cifar_densenet_bc, 6, 12),
                200_000, "DenseNet-BC-40 (k=12), stride-2 stem: dense blocks at 16/8/4 px"),
        ZooArch("convmixer", "cifar10_convmixer", "cifar10-convmixer", partial(cifar_convmixer, 128, 8, 5, 4),
                200_000, "ConvMixer-128/8, kernel 5, patch 4"),
    )
}


#: Architectures whose trained weights come from elsewhere (../shared/weights) and that the zoo only
#: continues for LGV collection (`transferlab zoo lgv resnet20 --from <the shared checkpoint>`); their
#: preprocessing is the model registry's (akamaster: ImageNet mean/std).
LGV_ONLY_ARCHS: dict[str, ZooArch] = {
    "resnet20": ZooArch("resnet20", "cifar10_resnet20", "cifar10-resnet-A", partial(cifar_resnet, 20, "A"),
                        300_000, "ResNet-20 (option A, akamaster), trained weights from ../shared"),
}


#: Measured ms per image per training step at batch 128, channels-last: {arch: {threads: ms}}.
MS_PER_IMAGE_STEP: dict[str, dict[int, float]] = {
    "vgg11_bn": {1: 1.86, 2: 1.20},
    "mobilenetv2": {1: 1.67, 2: 1.31},
    "densenet": {1: 1.59, 2: 1.56},
    "convmixer": {1: 2.00, 2: 1.14},
}


def resolve_arch(name: str, lgv: bool = False) -> ZooArch:
    """The zoo row for `name`, given as the short name (`vgg11_bn`) or the model name (`cifar10_vgg11_bn`);
    with ``lgv`` also the LGV-only rows (`LGV_ONLY_ARCHS`)."""
    rows = [*ZOO_ARCHS.values(), *(LGV_ONLY_ARCHS.values() if lgv else ())]
    for row in rows:
        if name in (row.arch, row.model_name):
            return row
    known = ", ".join(r.arch for r in rows)
    if not lgv and any(name in (r.arch, r.model_name) for r in LGV_ONLY_ARCHS.values()):
        raise TransferlabError(f"{name!r} is not trained by the zoo (its weights come from ../shared); "
                               f"`transferlab zoo lgv {name} --from <checkpoint>` continues it for LGV; "
                               f"train one of {known}")
    raise TransferlabError(f"unknown zoo architecture {name!r}: choose one of {known}")


def zoo_weights_dir() -> Path:
    """`$TRANSFERLAB_ZOO_WEIGHTS_DIR`, else the committed `transferlab/zoo/weights/` folder."""
    env = os.environ.get(ZOO_WEIGHTS_ENV)
    return Path(env).expanduser() if env else Path(__file__).resolve().parent / "weights"
