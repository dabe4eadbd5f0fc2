"""Models trained here on the CIFAR-10 training JPEGs: the architecture table, the trainer, LGV collection.

`ZOO_ARCHS` maps a short architecture name (`vgg11_bn`) to its zoo model name (`cifar10_vgg11_bn`) and
builder; `transferlab.models` registers one zoo entry per row, whose weights are the safetensors files
committed under `transferlab/zoo/weights/` (see `weights/ACCURACY.md`). Training: `transferlab.zoo.train`.
"""

from __future__ import annotations

from transferlab.zoo.archs import ZOO_ARCHS, ZooArch, resolve_arch, zoo_weights_dir

__all__ = ["ZOO_ARCHS", "ZooArch", "resolve_arch", "zoo_weights_dir"]
