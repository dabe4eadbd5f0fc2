"""Shared fixtures: paths to ../shared assets (tests skip when absent) and a tiny offline classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR_JPG = SHARED / "data" / "cifar10-test-jpg"
CIFAR_WEIGHTS = SHARED / "weights" / "cifar10"
NIPS17 = SHARED / "data" / "nips17"

torch.set_num_threads(2)


@pytest.fixture
def single_thread():
    """Tiny models: one intra-op thread (a busy second core makes every op wait); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared asset not present: {path}")
    return path


class ChannelNet(nn.Module):
    """A tiny classifier whose clean prediction is the brightest channel (so clean images are right),
    plus a small random conv branch with a residual block so gradients are non-trivial."""

    def __init__(self, num_classes: int = 3, seed: int = 0, scale: float = 20.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.scale = scale
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean((2, 3))[:, : self.num_classes] * self.scale
        h = torch.relu(self.conv1(x))
        h = h + torch.relu(self.conv2(h))
        return means + self.head(h.mean((2, 3)))


class ShapeSensitiveNet(nn.Module):
    """ChannelNet plus a term scaled by the number of rows in the call: per-sample, but a sample's
    logits (and gradient) change with the batch shape, as real kernels' rounding does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ChannelNet()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("pattern", torch.randn(3, 3, 4, 4, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 4)[:, None]  # any input size (DI enlarges it)
        scale = (x.shape[0] % 5) - 2  # as large as the data term's gradient: flips signs
        shape_term = 2.0 * scale * torch.tanh(pooled * self.pattern).flatten(2).sum(2)
        return self.net(x) + shape_term


@pytest.fixture
def channel_net() -> ChannelNet:
    return ChannelNet()


def make_folder_dataset(
    root: Path, per_class: int = 4, size: int = 16, classes: int = 3, seed: int = 0
) -> Path:
    """class-per-folder PNGs whose class is the dominant colour channel."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = rng.integers(40, 140, size=(size, size, 3))
            img[..., c] += 12
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{k:04d}.png")
    return root
