"""VGG with batch norm for 32-px CIFAR inputs (Simonyan & Zisserman 2015, config "A" = VGG-11), no skips.

Eight 3x3 conv-BN-ReLU layers and five 2x2 max-pools (32 -> 1 px), then one linear classifier, as in the
common CIFAR ports (e.g. kuangliu/pytorch-cifar). `width` scales every layer's channels (1.0 = 64..512);
the zoo's `cifar10_vgg11_bn` uses 0.5 (32..256 channels) to fit the CPU training budget.
Keys: `features.{i}` (conv, BN, ReLU, pool in one Sequential), `classifier`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CifarVGG", "VGG11_CFG", "cifar_vgg11_bn"]

#: VGG-11 ("A"): output channels of each conv at width 1.0, "M" a 2x2 max-pool.
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class CifarVGG(nn.Module):
    """Plain conv-BN-ReLU stack following `cfg`, then global flatten (1x1 after five pools) and a linear."""

    def __init__(
        self, cfg: tuple[int | str, ...] = VGG11_CFG, width: float = 1.0, num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = max(8, int(round(int(item) * width)))
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def cifar_vgg11_bn(width: float = 0.5, num_classes: int = 10) -> CifarVGG:
    """Untrained VGG-11-BN for CIFAR at `width` times the standard channels."""
    return CifarVGG(VGG11_CFG, width, num_classes)
