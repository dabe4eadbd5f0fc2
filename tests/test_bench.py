"""The bench's reference loops do the work they claim to measure."""

import importlib.util
from pathlib import Path

import pytest
import torch

SPEC = importlib.util.spec_from_file_location("speed", Path(__file__).parents[1] / "bench" / "speed.py")
speed = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(speed)


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 4 * 4, 10)
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.fc(x.flatten(1))


def test_bare_copies_loop_forwards_copies_of_each_image_in_micro_batches():
    model = CountingModel()
    x, y = torch.rand(7, 3, 4, 4), torch.randint(0, 10, (7,))
    speed.bare_copies_loop(model, x, y, eps=4 / 255, alpha=1 / 255, steps=2, copies=5, micro=3)
    assert model.batches == [15, 15, 15, 15, 5, 5]
    assert sum(model.batches) == 7 * 5 * 2  # images × copies × steps


def test_paired_ratio_is_median_and_range_of_per_repeat_ratios():
    assert speed.paired_ratio([2.0, 6.0, 3.0], [1.0, 2.0, 1.0]) == (3.0, 2.0, 3.0)


def test_parts_are_validated(tmp_path):
    with pytest.raises(SystemExit):
        speed.main(["--parts", "af", "--out", str(tmp_path)])
