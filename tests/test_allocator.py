"""The allocator setting changes where torch's large buffers come from, never the floats computed in them."""

from __future__ import annotations

import resource

import pytest
import torch
from torch import nn

from transferlab.attacks import build_attack
from transferlab.runner import allocator

glibc = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's mallopt only")


class WideNet(nn.Module):
    """One wide convolution at 224 px: a 4-image batch's activation is 51 MiB, above every mmap threshold."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.head = nn.Linear(64, 5)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def faults_and_images(attack, model, x, y) -> tuple[int, torch.Tensor]:
    attack.run(model, x, y)  # warm: the heap grows to the run's peak once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    adv = attack.run(model, x, y)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, adv


@glibc
def test_kept_memory_gives_the_same_images_without_the_page_faults():
    model = WideNet().eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 224, 224, generator=g), torch.randint(0, 5, (4,), generator=g)
    attack = build_attack("mi", eps=8 / 255, alpha=2 / 255, steps=3)
    try:
        allocator.release_freed_memory()
        faults_system, system = faults_and_images(attack, model, x, y)
        assert "kept" in allocator.keep_freed_memory()
        faults_kept, kept = faults_and_images(attack, model, x, y)
    finally:
        allocator.release_freed_memory()  # the rest of the suite as before
    assert torch.equal(kept, system)
    assert faults_system > 10_000  # every 51 MiB buffer mapped afresh: ~13,000 pages each
    assert faults_kept < faults_system / 10


def test_the_system_allocator_is_left_alone_when_asked(monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_MALLOC", "system")
    assert allocator.keep_freed_memory().startswith("system")
