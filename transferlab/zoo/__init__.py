"""Models trained here on the CIFAR-10 training JPEGs: the architecture table, the trainer, LGV collection.

`ZOO_ARCHS` maps a short architecture name (`vgg11_bn`) to its zoo model name (`cifar10_vgg11_bn`) and
builder; `transferlab.models` registers one zoo entry per row, whose weights are the safetensors files
committed under `transferlab/zoo/weights/` (see `weights/ACCURACY.md`). Training: `transferlab.zoo.train`.

Training one architecture (about an hour on one core at 1.6-2.0 ms per image per step, 40 epochs of 50 000
images; run one at a time on a 2-core machine, and the same command again after a kill to resume):

    OMP_NUM_THREADS=1 transferlab zoo train vgg11_bn --epochs 40 --threads 1 \
        --out runs/zoo/vgg11_bn --cache runs/zoo/cache --install

`--install` copies the final weights into `transferlab/zoo/weights/` and updates `weights.json` and
`ACCURACY.md` there. LGV weights from them (10 epochs, 4 snapshots per epoch, constant lr 0.05):

    transferlab zoo lgv vgg11_bn --from transferlab/zoo/weights/cifar10_vgg11_bn-<sha8>.safetensors \
        --out runs/zoo/vgg11_bn-lgv --cache runs/zoo/cache
"""

from __future__ import annotations

from transferlab.zoo.archs import ZOO_ARCHS, ZooArch, resolve_arch, zoo_weights_dir

__all__ = ["ZOO_ARCHS", "ZooArch", "resolve_arch", "zoo_weights_dir"]
