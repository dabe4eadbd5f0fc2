"""Image pools: the other images a component mixes with (Admix), drawn from the whole dataset.

Each image draws its k pool images with its own stream over every dataset image but itself, so its pool
depends neither on its batch-mates nor on `data.limit` (an extended run draws the same pool as a fresh
one), and the bytes of a resumed, extended or sharded run stay those of a fresh one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from transferlab.data import Dataset, to_float
from transferlab.rng import ImageStreams


class DatasetPool:
    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.position = {item.image_id: k for k, item in enumerate(dataset.items)}
        self._cache: dict[int, torch.Tensor] = {}

    def _image(self, k: int) -> torch.Tensor:
        if k not in self._cache:
            items, images = self.dataset.load([self.dataset.items[k]])
            if not items:
                raise ValueError(f"pool image {self.dataset.items[k].path} is unreadable")
            self._cache[k] = to_float(images)[0]
        return self._cache[k]

    def draw(self, keys: Sequence[object], k: int, streams: ImageStreams) -> torch.Tensor:
        """(B, k, C, H, W): for image b, k draws over the dataset without image b itself."""
        n = len(self.dataset.items)
        if n < 2:
            raise ValueError("an image pool needs a dataset of at least 2 images")
        draws = streams.randint(n - 1, k)
        out = []
        for key, row in zip(keys, draws.tolist()):
            own = self.position.get(str(key), n)
            out.append(torch.stack([self._image(j + (j >= own)) for j in row]))
        return torch.stack(out)
