"""What a validated config resolves to on this machine: the device, pixel units, batch limits, attacks."""

from __future__ import annotations

import math

import torch

from transferlab.attacks.registry import build_attack
from transferlab.errors import TransferlabError


class RunError(TransferlabError):
    """The run directory conflicts with the config, or a job cannot run."""


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when present, else CPU; an explicit device that this machine lacks is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(name.split(":")[0], False):
        raise RunError(
            f"device {name!r} (config key 'device' or --device) is not available on this machine; use 'auto'"
        )
    return torch.device(name)


def loop_units(spec: dict, resolution: int) -> tuple[float, float]:
    """(eps, alpha) in [0,1] pixel units from config values in 1/255 steps (L2: RMS per pixel)."""
    scale = 1 / 255
    if spec["norm"] == "l2":
        scale *= math.sqrt(3 * resolution * resolution)
    return float(spec["eps"]) * scale, float(spec["alpha"]) * scale


def auto_max_forward(resolution: int) -> int:
    """Model inputs per attack forward when a config leaves `max_forward` unset: about 1M input pixels (20
    images at 224 px, 256 at 32 px, at least 8). With freed memory kept for reuse (`allocator`), larger calls
    are faster per image on CPU: EfficientNet-Lite0 forward+backward at 224 px, channels-last, one thread,
    per image at 5 / 10 / 20 / 40 inputs per call: 33 / 33 / 25 / 24 ms (our MI: `python bench/speed.py
    --parts d`); with glibc's defaults the page faults of calls above 32 MiB reverse that. CIFAR ResNet-20:
    1.3 ms at 256, 2.5 ms at 1024. A GPU wants more: set `max_forward`."""
    return int(max(8, min(256, 2**20 // (resolution * resolution))))


def prediction_batch(resolution: int) -> int:
    """Images per no-grad forward for clean predictions."""
    return max(1, min(64, auto_max_forward(resolution)))


def attack_from_spec(name: str, spec: dict, resolution: int, seed: int, targeted: bool = False,
                     max_forward: int | None = None):
    """The attack a validated config entry describes, at the run's attack resolution; `max_forward` (model
    inputs per call) is the entry's, else the one given, else `auto_max_forward`."""
    eps, alpha = loop_units(spec, resolution)
    return build_attack(
        spec["method"],
        spec["params"],
        eps=eps,
        alpha=alpha,
        steps=spec["steps"],
        norm=spec["norm"],
        random_start=spec["random_start"],
        seed=seed,
        max_forward=spec["max_forward"] or max_forward or auto_max_forward(resolution),
        name=name,
        budget=spec["eps"],
        targeted=targeted,
    )
