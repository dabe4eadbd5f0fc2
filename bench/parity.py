"""Parity of our attacks with torchattack's and torchattacks': both run in one process, on the same images,
models and settings; transfer rates side by side, the paired difference, and a verdict.

For every pair in PAIRS (our method + parameters, their class + keyword arguments, the hyperparameters
aligned and a note of what was set to whom) and every target: each library's transfer rate with a 95%
Wilson interval, the paired difference of per-image success (ours − theirs) with a 95% paired bootstrap
interval over images (2000 resamples, seeded), and the verdict `match` (the interval contains 0) or
`differs`, with the variant difference that explains it, read from both implementations (`unexplained`
when none is known). Both libraries' outputs are quantised alike (`transferlab.eval.quantize`, rounded to
8 bits) before they are evaluated; a target counts the images it classifies correctly clean (all of them:
only images every model gets right are attacked). Random start is off everywhere; labels are ground truth.
Also recorded: the share of images (and of pixel values) whose 8-bit adversarial images are identical. A
deterministic pair can be identical (ours and torchattack's IFGSM, in the same arithmetic order, are) or not:
torchattacks steps the image, (x + δ + α·s) − x, not δ, which in float32 differs in the last bit from the
second step on, and at 224 px that seeds a chaotic divergence (10 steps of PGD on Lite0: ~40% of the pixel
values equal; in float64 the two agree to 1e-16). Only the rates are compared for a verdict.

Settings (`--setting`):
  imagenet  tf_efficientnet_lite0 -> Lite0 (white-box), Lite1, Lite2; NIPS'17 dev images at 224 px (crop
            0.875); L∞ ε=16/255, α=1.6/255, 10 steps, the first 100 images all three models get right.
  cifar     cifar10_resnet20 -> ResNet-20 (white-box) and the six other models of
            configs/cpu/cifar10_resnets.yaml; CIFAR-10 test JPEGs; ε=8/255, α=2/255, 10 steps, 500 images.

Run:  OMP_NUM_THREADS=1 python bench/parity.py --setting both          (the full benchmark; measured with
          another job beside it: CIFAR 2.5 hours, ImageNet 8 hours on one core — VMI, VNI, Admix, SSA, BSR
          and GRA cost 15-21 passes per step; split it with --attacks and --merge, below)
      OMP_NUM_THREADS=1 python bench/parity.py --setting cifar --limit 16 --attacks pgd,mi --out /tmp/p
          (a smoke run)
      python bench/parity.py --list           (the pairs, their aligned hyperparameters and known
          differences, and the attacks not compared; loads nothing)
Side by side: two benches with disjoint --attacks, each into its own --out (one thread each), then
      python bench/parity.py --out results/parity --merge OTHER_OUT   (takes OTHER_OUT's rows; refuses a
          setting computed with other parameters)
Resumable: finished (setting, attack, library) rows in OUT/parity.csv are kept and not recomputed (a
setting whose parameters changed — --limit, --seed — is recomputed); every file is written atomically after
each row. Writes OUT/parity.csv (tidy; default OUT results/parity), parity.md (a table per setting, the
pairs) and parity.manifest.json (the last computing bench's args, versions, threads and git commit;
settings, timings, skipped rows; each row's commit, CPU and time; the benches merged in).
Needs torchattack and torchattacks (`pip install torchattack torchattacks`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import importlib.metadata
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from transferlab.attacks.defaults import recorded_defaults
from transferlab.attacks.registry import COMPONENTS, _load_builtins, build_attack, parse_method
from transferlab.attacks.translation_invariance import default_kernel_size
from transferlab.data import open_dataset, to_float
from transferlab.errors import ConfigError
from transferlab.eval.quantize import quantize
from transferlab.eval.stats import wilson_interval
from transferlab.experiment import auto_max_forward
from transferlab.io import atomic_write_csv, atomic_write_json, atomic_write_text
from transferlab.provenance import provenance
from transferlab.rng import stable_seed
from transferlab.runner.allocator import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["setting", "attack", "library", "target", "n", "ours", "theirs", "diff", "ci_low", "ci_high",
           "verdict", "explanation", "seconds_ours", "seconds_theirs"]
#: beyond the requested columns: the Wilson bounds, the share of images whose 8-bit adversarial images are
#: byte-identical between the two libraries, and the share of identical 8-bit pixel values
EXTRA_COLUMNS = ["ours_low", "ours_high", "theirs_low", "theirs_high", "same_bytes", "same_pixels"]
VERDICTS = ("match", "differs")
LIBRARIES = ("torchattack", "torchattacks")


class NotReady(Exception):
    """A pair cannot run yet (our component is missing, or lacks the parameters it needs); the message says
    why, and the row is skipped with it."""


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    name: str
    data: dict | None  # `transferlab.data.open_dataset` config; None for images given in memory (tests)
    source: str
    targets: tuple[str, ...]  # the source first (white-box), then the transfer targets
    eps: float  # [0,1] pixel units
    alpha: float
    steps: int
    limit: int
    resolution: int
    num_classes: int
    weights_dir: str | None = None
    batch: int = 100  # images per call of either library (and per progress update)
    their_inputs: int = 2500  # their model inputs per forward at most: their batch for copy-makers
    feature_layer: str = "layer2"  # FIA / NAA's layer inside the wrapper's `net` (our default for the source)
    memory_format: str = "contiguous"  # all models run in it (`Classifier.use_memory_format`), both sides

    def describe(self) -> dict:
        """What a finished row depends on (a changed description recomputes the setting's rows). The default
        memory format is left out, so rows made before the field existed stay held."""
        out = dataclasses.asdict(self)
        out["targets"] = list(self.targets)
        if self.memory_format == "contiguous":
            del out["memory_format"]
        return out


def make_settings(shared: Path) -> dict[str, Setting]:
    weights = shared / "weights" / "cifar10"
    return {
        "imagenet": Setting(
            name="imagenet",
            data={"kind": "nips17", "root": str(shared / "data" / "nips17"), "resolution": 224,
                  "crop_pct": 0.875},
            source="tf_efficientnet_lite0",
            targets=("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"),
            eps=16 / 255, alpha=1.6 / 255, steps=10, limit=100, resolution=224, num_classes=1000,
            batch=20, their_inputs=100, feature_layer="blocks.3",
            memory_format="channels_last",  # Lite0 forward+backward 1.35-1.5x faster on CPU (NHWC)
        ),
        "cifar": Setting(
            name="cifar",
            data={"kind": "folder", "root": str(shared / "data" / "cifar10-test-jpg"), "resolution": 32,
                  "crop_pct": 1.0},
            source="cifar10_resnet20",
            targets=("cifar10_resnet20", "cifar10_resnet32", "cifar10_resnet44", "cifar10_resnet56",
                     "cifar10_resnet20_b", "cifar10_resnet56_b", "cifar10_shufflenetv2_x0_5"),
            eps=8 / 255, alpha=2 / 255, steps=10, limit=500, resolution=32, num_classes=10,
            weights_dir=str(weights), batch=250, their_inputs=2500, feature_layer="layer2",
        ),
    }


# -------------------------------------------------------------------------------------------------- pairs
Params = dict | Callable[[Setting], dict]
Kwargs = dict | Callable[[Setting, Any], dict]


@dataclass(frozen=True)
class Pair:
    """One comparison: our attack (method, params) against one class of one library.

    kwargs: theirs, besides eps / alpha / steps (always the setting's), as a dict or a function of the
    setting and our built attack (to copy our resolved parameters). known: the variant difference that
    explains a `differs` verdict, read from both implementations (None: none known). only: setting -> why
    the pair cannot run there. copies: their model inputs per image in one forward (sizes their batch).
    fresh_model: theirs registers hooks it never removes, so it gets a copy of the source model.
    trainable: theirs needs a graph through the parameters (its inputs do not require grad), so it gets a copy
    whose parameters require grad (their gradients are never used).
    """

    attack: str
    method: str
    params: Params
    library: str
    cls: str
    kwargs: Kwargs
    aligned: str
    known: str | None = None
    only: dict[str, str] = field(default_factory=dict)
    copies: int = 1
    fresh_model: bool = False
    trainable: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.attack, self.library


def component_params(attack, name: str) -> dict:
    for c in attack.components:
        if c.name == name:
            return c.params()
    raise NotReady(f"our attack has no {name!r} component")


def feature_params(component: str, **extra) -> Callable[[Setting], dict]:
    """Our FIA / NAA parameters: the setting's layer (our default, the middle stage, given explicitly so that
    theirs gets the same), N = 30 (the official value, and torchattack's)."""
    return lambda s: {component: {"layer": s.feature_layer, "copies": 30, **extra}}


def fia_kwargs(setting: Setting, attack) -> dict:
    p = component_params(attack, "fia")
    return {"feature_layer_cfg": f"net.{p['layer']}", "num_ens": p["copies"],
            "drop_rate": round(1 - p["keep"], 12), "decay": 1.0}


def naa_kwargs(setting: Setting, attack) -> dict:
    p = component_params(attack, "naa")
    return {"feature_layer_cfg": f"net.{p['layer']}", "num_ens": p["copies"], "decay": 1.0}


def ti_size(setting: Setting) -> int:
    return default_kernel_size(setting.resolution)


CIFAR_ONLY_SGM = ("torchattack SGM hooks ReLU modules by torchvision ResNet/DenseNet names (sgm.py "
                  "_register_hooks); tf_efficientnet_lite0 has none, so theirs would be plain I-FGSM")
NO_SSA_AT_32 = ("torchattack SSA draws its noise as randn(b, 3, 224, 224) (ssa.py transform): it cannot run "
                "on 32-px images")
PER_BATCH = "theirs draw one {what} per batch (shared by its images), ours per image"
DI_OURS = ("ours (default variant 'original', DI-2-FGSM's): with probability 0.5 enlarge to a size in "
           "[H, ⌊1.1·H⌋), nearest, pad with 0.5 to ⌊1.1·H⌋ and resize back to H, else the input unchanged, "
           "draws per image")
DI_RESAMPLE = ("ours (variant 'resample'): enlarge to a size in [H, ⌊1.1·H⌋), nearest, zero pad to "
               "⌊1.1·H⌋, the unchanged branch nearest-resized to ⌊1.1·H⌋ as well, draws per image")

DI_THEIRS = ("shrink to a size in [⌊0.9·H⌋, H), {mode}, zero pad to H, else the input unchanged, one "
             "coin, size and offset per batch (difgsm.py input_diversity)")
DI_TORCHATTACK = "torchattack: " + DI_THEIRS.format(mode="nearest")
DI_TORCHATTACKS = "torchattacks: " + DI_THEIRS.format(mode="bilinear")

PAIRS: list[Pair] = [
    Pair("pgd", "pgd", {}, "torchattack", "IFGSM", {},
         "IFGSM = their PGD with random_start=False; ε, α, steps set to the setting's"),
    Pair("pgd", "pgd", {}, "torchattacks", "PGD", {"random_start": False},
         "random_start True→False (theirs)"),
    Pair("mi", "mi", {}, "torchattack", "MIFGSM", {"decay": 1.0}, "decay 1.0 = our mu 1.0"),
    Pair("mi", "mi", {}, "torchattacks", "MIFGSM", {"decay": 1.0}, "decay 1.0 = our mu 1.0"),
    Pair("ni", "ni", {}, "torchattack", "NIFGSM", {"decay": 1.0}, "decay 1.0 = our mu 1.0",
         known="torchattack NIFGSM never accumulates momentum: g = μ·∇ + ∇/mean|∇| (nifgsm.py forward), so "
               "each step follows the sign of the current look-ahead gradient and the look-ahead uses the "
               "last step's gradient only; ours (and torchattacks) accumulate g ← μ·g + ∇/mean|∇|"),
    Pair("ni", "ni", {}, "torchattacks", "NIFGSM", {"decay": 1.0}, "decay 1.0 = our mu 1.0",
         known="no variant difference: the same update (nifgsm.py forward: look-ahead x' + μα·g unclipped, "
               "g ← μg + ∇/mean|∇|); in float64 the images agree to rounding and byte for byte after 8-bit "
               "quantisation (tests/test_parity.py); torchattacks steps the image, (x + δ + α·s) − x, whose "
               "float32 last bits differ from ours and which the sign step amplifies at 224 px (no image and "
               "57% of the pixel values alike), so the row compares two float-noise draws of one procedure: "
               "the same pair in the contiguous format (commit 6bf1062, last bits only otherwise) gave Lite2 "
               "0.91 / 0.88, a match, against 0.88 / 0.82 channels-last"),
    Pair("vmi", "vmi", {"vt": {"neighbours": 20, "beta": 1.5}}, "torchattack", "VMIFGSM",
         {"n": 20, "beta": 1.5, "decay": 1.0}, "n 5→20 (theirs, to ours); beta 1.5, decay 1.0 as ours",
         known="no variant difference: the same update (vmifgsm.py forward: g ← μg + (∇+v)/mean|∇+v|, v the "
               "mean of N neighbour gradients at δ + U(±βε) minus ∇, neighbours unclipped; given the same "
               "neighbours the images agree byte for byte, tests/test_parity.py); the runs draw "
               "different neighbour noise (ours per-image streams, theirs torch's global RNG), which the "
               "interval over images does not cover; with --seed 1 (results/parity_seed1) the pair matches "
               "on 7 of 7 targets"),
    Pair("vmi", "vmi", {"vt": {"neighbours": 20, "beta": 1.5}}, "torchattacks", "VMIFGSM",
         {"N": 20, "beta": 1.5, "decay": 1.0}, "N 5→20 (theirs, to ours); beta 1.5, decay 1.0 as ours"),
    Pair("vni", "vni", {"vt": {"neighbours": 20, "beta": 1.5}}, "torchattack", "VNIFGSM",
         {"n": 20, "beta": 1.5, "decay": 1.0}, "n 5→20 (theirs, to ours); beta 1.5, decay 1.0 as ours"),
    Pair("vni", "vni", {"vt": {"neighbours": 20, "beta": 1.5}}, "torchattacks", "VNIFGSM",
         {"N": 20, "beta": 1.5, "decay": 1.0}, "N 5→20 (theirs, to ours); beta 1.5, decay 1.0 as ours"),
    Pair("di", "di", {"di": {"p": 0.5}}, "torchattack", "DIFGSM",
         {"decay": 0.0, "resize_rate": 0.9, "diversity_prob": 0.5},
         "decay 1.0→0 (theirs: our di has no momentum); diversity_prob 1.0→0.5 (theirs, to ours); "
         "resize_rate left at theirs 0.9 (the variant under test)",
         known=f"{DI_OURS}; {DI_TORCHATTACK}"),
    Pair("di", "di", {"di": {"p": 0.5}}, "torchattacks", "DIFGSM",
         {"decay": 0.0, "resize_rate": 0.9, "diversity_prob": 0.5},
         "their defaults already: decay 0, diversity_prob 0.5 = our p; resize_rate 0.9 (theirs)",
         known=f"{DI_OURS}; {DI_TORCHATTACKS}"),
    Pair("di_resample", "di", {"di": {"p": 0.5, "variant": "resample"}}, "torchattack", "DIFGSM",
         {"decay": 0.0, "resize_rate": 0.9, "diversity_prob": 0.5},
         "ours variant 'resample' (the earlier default); theirs decay 1.0→0, diversity_prob 1.0→0.5, "
         "resize_rate 0.9 (theirs)",
         known=f"{DI_RESAMPLE}; {DI_TORCHATTACK}"),
    Pair("di_resample", "di", {"di": {"p": 0.5, "variant": "resample"}}, "torchattacks", "DIFGSM",
         {"decay": 0.0, "resize_rate": 0.9, "diversity_prob": 0.5},
         "ours variant 'resample' (the earlier default); theirs at their defaults (resize_rate 0.9)",
         known=f"{DI_RESAMPLE}; {DI_TORCHATTACKS}"),
    Pair("di_torchattacks", "di", {"di": {"p": 0.5, "variant": "torchattacks"}}, "torchattack", "DIFGSM",
         {"decay": 0.0, "resize_rate": 0.9, "diversity_prob": 0.5},
         "ours variant 'torchattacks' (shrink 0.9, bilinear, pad to H); theirs decay 1.0→0, "
         "diversity_prob 1.0→0.5",
         known="torchattack resizes with mode='nearest', our 'torchattacks' variant (as torchattacks) "
               "bilinear; " + PER_BATCH.format(what="coin, size and offset")),
    Pair("di_torchattacks", "di", {"di": {"p": 0.5, "variant": "torchattacks"}}, "torchattacks", "DIFGSM",
         {"decay": 0.0, "resize_rate": 0.9, "diversity_prob": 0.5},
         "ours variant 'torchattacks' (shrink 0.9, bilinear, pad to H, p 0.5); theirs at their defaults",
         known=PER_BATCH.format(what="coin, size and offset")),
    Pair("ti", "ti", {}, "torchattack", "TIFGSM",
         lambda s, a: {"decay": 0.0, "kern_len": ti_size(s), "n_sig": 3},
         "kern_len 15→ours' default for the resolution (5 at 32 px, 15 at 224); n_sig 3 = our nsig; "
         "decay 1.0→0 (theirs: our ti has no momentum)",
         known="kernel: torchattack's gkern is sqrt(outer(k, k)) of k = diff(Φ(linspace(−nsig−Δ/2, nsig+Δ/2, "
               "kern_len+1))) (tifgsm.py gkern), a Gaussian about √2 wider than the sampled-pdf kernel of "
               "ours, torchattacks and the TI code; its momentum line overwrites g before accumulating, so "
               "decay has no effect there"),
    Pair("ti", "ti", {}, "torchattacks", "TIFGSM",
         lambda s, a: {"decay": 0.0, "len_kernel": ti_size(s), "nsig": 3, "diversity_prob": 0.0},
         "len_kernel 15→ours' default for the resolution (5 at 32 px, 15 at 224); diversity_prob 0.5→0 "
         "(theirs: their TIFGSM includes DI by default); decay 0 and nsig 3 as ours"),
    Pair("sgm", "sgm", {"sgm": {"gamma": 0.2}}, "torchattack", "SGM",
         {"hook_cfg": "resnet18", "gamma": 0.2, "decay": 0.0},
         "decay 1.0→0 (theirs: our sgm has no momentum); gamma 0.2 both; hook_cfg 'resnet18' (their "
         "BasicBlock rule: γ, not √γ, on every hooked ReLU)",
         known="torchattack leaves every block named '*0.relu*' alone (the first of each stage, layer1.0 "
               "included, whose skip is an identity that ours scales); it also scales the post-addition "
               "ReLU (a per-block factor on skip and branch alike) and divides each block's gradient by its "
               "batch-wide std (both scales the sign step ignores)",
         only={"imagenet": CIFAR_ONLY_SGM}, fresh_model=True),
    Pair("si", "ni+si", {"si": {"copies": 5, "center": 0.0}}, "torchattack", "SINIFGSM",
         {"m": 5, "decay": 1.0},
         "m 3→5 (theirs, to ours); our si center 0.5→0 (ours, to theirs: x/2^i on [0,1] pixels)",
         known="torchattack SINIFGSM never accumulates momentum (g = μ·∇ + ∇/mean|∇|, as its NIFGSM) and "
               "does not zero delta.grad between the m copies, so copy i is counted m−i times "
               "(sinifgsm.py forward)", copies=1),
    Pair("si", "ni+si", {"si": {"copies": 5, "center": 0.0}}, "torchattacks", "SINIFGSM",
         {"m": 5, "decay": 1.0}, "m 5 both; our si center 0.5→0 (ours, to theirs: x/2^i on [0,1] pixels)"),
    Pair("admix", "mi+admix", {"admix": {"eta": 0.2, "mixes": 3, "scales": 5, "center": 0.0}},
         "torchattack", "Admix",
         lambda s, a: {"portion": 0.2, "size": 3, "decay": 1.0, "num_classes": s.num_classes},
         "our admix center 0.5→0 (ours, to theirs: [0,1]-pixel formula); portion 0.2 = eta, size 3 = mixes; "
         "num_classes 1000→10 on CIFAR (theirs)",
         known="the other images: ours 3 clean dataset images per image (drawn by its own stream, never "
               "itself, fixed for the attack); theirs the batch-mates' current adversarial images, "
               "reshuffled for every mix at every step (admix.py admix; may be the image itself)",
         copies=15),
    Pair("ssa", "ssa", lambda s: {"ssa": {"copies": 20, "rho": 0.5, "sigma": s.eps * 255,
                                          "through_transform": True}},
         "torchattack", "SSA", {"num_spectrum": 20, "rho": 0.5, "decay": 0.0},
         "decay 1.0→0 (theirs: S²I-FGSM, the official SSA, has no momentum); ours through_transform "
         "False→True (to theirs: differentiated through IDCT·M·DCT), sigma 16/255→ε (to theirs)",
         only={"cifar": NO_SSA_AT_32}, copies=1),
    Pair("bsr", "mi+bsr", {}, "torchattack", "BSR", {"num_scale": 20, "num_block": 3, "decay": 1.0},
         "their defaults (TransferAttack's); ours at its defaults (the official BSR)",
         known="ours (variant 'official'): 2×2 blocks, a truncated-normal angle (σ 0.2 rad) per block, fill "
               "0.5, the blocks keep a grid; theirs (TransferAttack's): 3×3, one U(±24°) angle per strip, "
               "strips then pieces, fill 0", copies=20),
    Pair("bsr_ta", "mi+bsr", {"bsr": {"variant": "transferattack"}}, "torchattack", "BSR",
         {"num_scale": 20, "num_block": 3, "decay": 1.0},
         "ours variant 'transferattack' (3×3, U(±24°), fill 0, 20 copies); theirs at their defaults",
         known=PER_BATCH.format(what="strip length, permutation and rotation angle"), copies=20),
    Pair("gra", "mi+gra", {}, "torchattack", "GRA",
         {"beta": 3.5, "eta": 0.94, "num_neighbors": 20, "decay": 1.0},
         "their defaults = ours (beta 3.5, eta 0.94, 20 neighbours, MI μ 1.0)",
         known="decay indicator: torchattack compares momentum values (torch.eq(g, prev_g), gra.py "
               "_get_decay_indicator), so the step shrinks by η almost everywhere at every step; ours "
               "(the official GRA) compares signs"),
    Pair("gra_value", "mi+gra", {"gra": {"indicator": "value"}}, "torchattack", "GRA",
         {"beta": 3.5, "eta": 0.94, "num_neighbors": 20, "decay": 1.0},
         "ours indicator 'sign'→'value' (to theirs)",
         known="no variant difference: given the same U(±βε) neighbour draws ours and theirs give the same "
               "images byte for byte (tests/test_parity.py, same neighbours); the runs draw different "
               "neighbours (ours per-image streams, theirs torch's global RNG), which the interval over "
               "images does not cover; with --seed 1 (results/parity_seed1) the pair matches on 7 of 7 "
               "targets"),
    Pair("fia", "mi+fia", feature_params("fia"), "torchattack", "FIA", fia_kwargs,
         "layer: our default middle stage (layer2 of ResNet-20, blocks.3 of Lite0) for both; N 30 both; "
         "theirs drop_rate 0.3→1 − our keep (0.1, the official keep 0.9); decay 1.0 both (MI base)",
         known="score: ours (the official FIA) takes the gradient of the true class's logit at the layer, "
               "torchattack of its softmax probability (fia.py forward)", copies=1),
    Pair("fia_ports", "mi+fia", feature_params("fia", variant="ports"), "torchattack", "FIA", fia_kwargs,
         "ours variant 'ports' (keep 0.7, softmax score); theirs drop_rate 0.3 = 1 − our keep; layer, N as "
         "fia",
         known="no variant difference: given the same masks ours and theirs give the same images byte "
               "for byte (tests/test_parity.py, same masks); the 30 masks that fix each image's Δ once "
               "are drawn differently (ours per-image streams, theirs torch's global RNG), which the "
               "interval over images does not cover: seed 0 differs on ResNet-20-B (+0.034), seed 1 "
               "(results/parity_seed1) on ResNet-56-B (−0.036), every other target matching in both"),
    Pair("naa", "mi+naa", feature_params("naa"), "torchattack", "NAA", naa_kwargs,
         "layer: our default middle stage (layer2 of ResNet-20, blocks.3 of Lite0) for both; N 30 both; "
         "our gamma 1 (theirs has no split, the same at γ = 1); decay 1.0 both (MI base)",
         known="integration path: ours (the official NAA) (x + n)(1 − k/N), n ~ N(0, (0.1)²) per pixel, the "
               "image included and black excluded; torchattack x·k/N, k = 0..N−1, no noise, black included "
               "and the image excluded (naa.py forward); its unnormalised weights are a per-image factor "
               "that MI's ∇/mean|∇| removes", trainable=True),
    Pair("naa_ports", "mi+naa", feature_params("naa", variant="ports"), "torchattack", "NAA", naa_kwargs,
         "ours variant 'ports' (path x·k/N, no noise, no normalisation); layer, N and gamma as naa",
         trainable=True),
]

#: our attacks neither library implements (nothing to compare)
NO_COUNTERPART = {
    "pgn": "PGN: neither torchattack 1.7.2 nor torchattacks 3.5.1 implements it",
    "rap": "RAP: neither library implements it",
    "ila": "ILA: neither library implements it (torchattack's ILPD is another method)",
    "linbp": "LinBP: neither library implements it",
    "sia": "SIA: neither library implements it",
}


def resolve(value, *args) -> dict:
    return dict(value(*args)) if callable(value) else dict(value)


def our_params(pair: Pair, setting: Setting) -> dict:
    return resolve(pair.params, setting)


def ours_description(pair: Pair, setting: Setting) -> str:
    """Our side of a row as recorded in the manifest: method, parameters and the changed defaults they
    leave unset (`transferlab.attacks.defaults`), so that a row made under a former default is recomputed."""
    params = our_params(pair, setting)
    text = f"{pair.method} {json.dumps(params, default=str)}"
    changed = recorded_defaults(pair.method, params)
    return text + (f" defaults {json.dumps(changed, sort_keys=True, default=str)}" if changed else "")


def readiness(pair: Pair, setting: Setting) -> str | None:
    """Why the pair cannot run on the setting, or None."""
    if setting.name in pair.only:
        return pair.only[setting.name]
    try:
        importlib.import_module(pair.library)
    except ImportError:
        return f"{pair.library} is not installed (pip install {pair.library})"
    _load_builtins()
    try:
        missing = [n for n in parse_method(pair.method) if n not in COMPONENTS]
    except ConfigError as exc:
        return f"not built yet: {exc}"
    if missing:
        return f"not built yet: component {', '.join(map(repr, missing))} not in transferlab COMPONENTS"
    try:
        build_ours(pair, setting)
    except NotReady as exc:
        return str(exc)
    except ConfigError as exc:
        return f"not built yet: {exc}"
    return None


def build_ours(pair: Pair, setting: Setting, seed: int = 0):
    return build_attack(pair.method, our_params(pair, setting), eps=setting.eps, alpha=setting.alpha,
                        steps=setting.steps, seed=seed, max_forward=auto_max_forward(setting.resolution))


def their_kwargs(pair: Pair, setting: Setting, attack) -> dict:
    return {"eps": setting.eps, "alpha": setting.alpha, "steps": setting.steps,
            **resolve(pair.kwargs, setting, attack)}


def their_batch(pair: Pair, setting: Setting) -> int:
    return max(4, min(setting.batch, setting.their_inputs // pair.copies))


# ------------------------------------------------------------------------------------------------ statistics
def paired_bootstrap(ours: np.ndarray, theirs: np.ndarray, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ours − theirs (per-image 0/1 successes) and its percentile bootstrap interval, resampling
    images with replacement (both libraries' outcomes of an image stay together)."""
    d = np.asarray(ours, dtype=float) - np.asarray(theirs, dtype=float)
    if d.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(lo), float(hi)


def verdict(lo: float, hi: float) -> str:
    return "match" if lo <= 0 <= hi else "differs"


def explanation(pair: Pair, outcome: str) -> str:
    if outcome == "differs":
        return pair.known or "unexplained"
    return f"(not significant here) {pair.known}" if pair.known else ""


# ------------------------------------------------------------------------------------------------ the data
@dataclass
class Prepared:
    """A setting's models and images, ready to attack."""

    setting: Setting
    x: torch.Tensor  # (N,3,H,W) 8-bit valued, in [0,1]
    y: torch.Tensor
    ids: list[str]
    source: torch.nn.Module
    targets: dict[str, torch.nn.Module]
    pool: Any = None  # where Admix draws other images from (a DatasetPool, or a tensor)
    scanned: int = 0
    seconds: float = 0.0


def predict(model, x: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def prepare(setting: Setting, progress: bool = True) -> Prepared:
    """Load the models; the first `limit` images (in dataset order) that every model classifies correctly."""
    from transferlab.models import load_model
    from transferlab.runner.pools import DatasetPool
    from transferlab.runner.resolve import prediction_batch

    t0 = time.perf_counter()
    models = {name: load_model(name, weights_dir=setting.weights_dir).use_memory_format(setting.memory_format)
              for name in setting.targets}
    data = open_dataset(setting.data)
    xs, ys, ids, scanned = [], [], [], 0
    step = prediction_batch(setting.resolution)
    bar = tqdm(total=setting.limit, desc=f"{setting.name}: eligible images", unit="img", disable=not progress,
               leave=False)
    for start in range(0, len(data), step):
        if len(ids) >= setting.limit:
            break
        items, images = data.load(data.items[start : start + step])
        scanned += len(items)
        x = to_float(images)
        y = torch.tensor([i.label for i in items])
        with torch.no_grad():
            ok = torch.stack([m(x).argmax(1) == y for m in models.values()]).all(0)
        keep = ok.nonzero().flatten()[: setting.limit - len(ids)]
        xs.append(x[keep])
        ys.append(y[keep])
        ids += [items[k].image_id for k in keep.tolist()]
        bar.update(len(keep))
    bar.close()
    if len(ids) < setting.limit:
        print(f"{setting.name}: only {len(ids)} of {len(data)} images are classified correctly by every "
              f"model (asked for {setting.limit})", file=sys.stderr)
    return Prepared(setting, torch.cat(xs), torch.cat(ys), ids, models[setting.source], models,
                    pool=DatasetPool(data), scanned=scanned, seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------- the attacks
def to_bytes(x: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """The 8-bit adversarial images (uint8) both libraries are evaluated on."""
    return (quantize(x, adv.detach(), eps, "linf") * 255).round().to(torch.uint8)


def seed_everything(seed: int) -> None:
    """Their attacks draw from the global generators (torch, numpy, random)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def attack_ours(pair: Pair, prep: Prepared, seed: int, bar=None) -> tuple[torch.Tensor, float]:
    s = prep.setting
    attack = build_ours(pair, s, seed)
    out, seconds = [], 0.0
    for i in range(0, len(prep.x), s.batch):
        x, y = prep.x[i : i + s.batch], prep.y[i : i + s.batch]
        t0 = time.perf_counter()
        adv = attack.run(prep.source, x, y, keys=prep.ids[i : i + s.batch], scope=(pair.method, s.source),
                         pool=prep.pool if attack.pool_size() else None)
        seconds += time.perf_counter() - t0
        out.append(to_bytes(x, adv, s.eps))
        if bar is not None:
            bar.update(len(x))
    return torch.cat(out), seconds


def make_theirs(pair: Pair, prep: Prepared, kwargs: dict):
    cls = getattr(importlib.import_module(pair.library), pair.cls)
    model = copy.deepcopy(prep.source) if pair.fresh_model or pair.trainable else prep.source
    if pair.trainable:
        model.requires_grad_(True)
    if pair.library == "torchattack":
        return cls(model, normalize=None, device=prep.x.device, **kwargs)
    return cls(model, **kwargs)


def attack_theirs(pair: Pair, prep: Prepared, seed: int, bar=None) -> tuple[torch.Tensor, float]:
    s = prep.setting
    kwargs = their_kwargs(pair, s, build_ours(pair, s, seed))
    attack = make_theirs(pair, prep, kwargs)
    batch = their_batch(pair, s)
    out, seconds = [], 0.0
    for k, i in enumerate(range(0, len(prep.x), batch)):
        x, y = prep.x[i : i + batch], prep.y[i : i + batch]
        seed_everything(stable_seed(seed, s.name, pair.library, pair.cls, k))
        t0 = time.perf_counter()
        adv = attack(x, y)
        seconds += time.perf_counter() - t0
        out.append(to_bytes(x, adv, s.eps))
        if bar is not None:
            bar.update(len(x))
    return torch.cat(out), seconds


def successes(model, adv_bytes: torch.Tensor, y: torch.Tensor, dtype: torch.dtype, batch: int) -> np.ndarray:
    return (predict(model, adv_bytes.to(dtype) / 255, batch) != y).numpy()


# ------------------------------------------------------------------------------------------- the results
def row_key(row) -> tuple[str, str, str]:
    return row["setting"], row["attack"], row["library"]


def location_free(desc: dict) -> dict:
    """A setting's description with its data root and weights folder reduced to their names."""
    out = copy.deepcopy(desc)
    if isinstance(out.get("data"), dict) and out["data"].get("root"):
        out["data"]["root"] = Path(out["data"]["root"]).name
    if out.get("weights_dir"):
        out["weights_dir"] = Path(out["weights_dir"]).name
    return out


class Results:
    """The finished rows on disk (parity.csv) and the manifest's record of settings, rows and skips."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.csv, self.md, self.manifest_path = (self.out / f"parity.{ext}" for ext in ("csv", "md",
                                                                                      "manifest.json"))
        self.rows = pd.DataFrame(columns=COLUMNS + EXTRA_COLUMNS)
        self.manifest: dict[str, Any] = {"settings": {}, "rows": {}, "skipped": {}, "data": {}, "merged": []}
        self.computed = 0  # rows this process computed: only then does a write replace the bench record
        if self.csv.exists():
            self.rows = pd.read_csv(self.csv, keep_default_na=False, na_values=[""])
            self.rows = self.rows[self.rows["verdict"].isin(VERDICTS)]
            for column in COLUMNS + EXTRA_COLUMNS:  # a file from an older version of this bench
                if column not in self.rows:
                    self.rows[column] = math.nan
        if self.manifest_path.exists():  # every key kept: the last bench's args, versions, provenance
            self.manifest.update(json.loads(self.manifest_path.read_text()))

    def use_setting(self, setting: Setting, seed: int = 0) -> int:
        """Record the setting; drop its old rows if they were computed with other parameters (their count).
        Where the shared folder lies is not a parameter: a clone elsewhere keeps the committed rows."""
        old = self.manifest["settings"].get(setting.name)
        desc = {**setting.describe(), "seed": seed}
        dropped = 0
        if old is not None and location_free(old) != location_free(desc):
            mine = self.rows["setting"] == setting.name
            dropped = int(mine.sum())
            self.rows = self.rows[~mine]
            self.manifest["rows"] = {k: v for k, v in self.manifest["rows"].items()
                                     if not k.startswith(f"{setting.name}/")}
        self.manifest["settings"][setting.name] = desc
        return dropped

    def finished(self, setting: Setting, pair: Pair) -> bool:
        """Whether the row is held, made with our side as it is now (a changed default recomputes it)."""
        if self.rows.empty:
            return False
        keys = set(zip(self.rows["setting"], self.rows["attack"], self.rows["library"]))
        meta = self.manifest["rows"].get("/".join((setting.name, *pair.key)), {})
        return (setting.name, *pair.key) in keys and meta.get("ours") == ours_description(pair, setting)

    def explain(self, setting: str, pair: Pair) -> bool:
        """Re-derive a held row's explanations from the pair's current `known` text; whether any changed."""
        mine = ((self.rows["setting"] == setting) & (self.rows["attack"] == pair.attack)
                & (self.rows["library"] == pair.library))
        now = self.rows.loc[mine, "verdict"].map(lambda v: explanation(pair, v))
        old = self.rows.loc[mine, "explanation"].fillna("")
        if (now == old).all():
            return False
        self.rows.loc[mine, "explanation"] = now
        self.manifest["rows"]["/".join((setting, *pair.key))]["known_difference"] = pair.known
        return True

    def add(self, rows: list[dict], meta: dict) -> None:
        setting, attack, library = row_key(rows[0])
        key = f"{setting}/{attack}/{library}"
        old = self.rows[~((self.rows["setting"] == setting) & (self.rows["attack"] == attack)
                          & (self.rows["library"] == library))]
        new = pd.DataFrame(rows, columns=COLUMNS + EXTRA_COLUMNS)
        self.rows = new if old.empty else pd.concat([old, new], ignore_index=True)
        self.manifest["rows"][key] = meta
        self.manifest["skipped"].pop(key, None)

    def merge(self, other: Results) -> list[str]:
        """Take every row `other` holds (a second process's --out, e.g. one run with other --attacks) of a
        setting whose parameters equal ours (or that we do not hold yet), its meta included; the row keys
        taken. A setting computed with other parameters is refused, naming it: mixing them would put rows of
        two experiments in one table."""
        taken = []
        for name, desc in other.manifest["settings"].items():
            mine = self.manifest["settings"].get(name)
            if mine is not None and location_free(mine) != location_free(desc):
                changed = sorted(k for k in set(mine) | set(desc)
                                 if k != "data" and mine.get(k) != desc.get(k))
                raise ConfigError(f"{other.out}: setting {name!r} was computed with other parameters than "
                                  f"{self.out}'s ({', '.join(changed) or 'data'} differ); not merged")
            self.manifest["settings"][name] = desc
            theirs = other.rows[other.rows["setting"] == name]
            for (attack, library), rows in theirs.groupby(["attack", "library"], sort=False):
                key = f"{name}/{attack}/{library}"
                if key not in other.manifest["rows"]:
                    continue
                self.add(rows.to_dict("records"), other.manifest["rows"][key])
                taken.append(key)
            for key, reason in other.manifest["skipped"].items():
                if key.startswith(f"{name}/") and key not in self.manifest["rows"]:
                    self.manifest["skipped"].setdefault(key, reason)
            if name in other.manifest["data"]:
                self.manifest["data"].setdefault(name, other.manifest["data"][name])
        merged = self.manifest.setdefault("merged", [])
        merged.append({"from": str(other.out), "rows": taken,
                       "provenance": other.manifest.get("provenance"),
                       "threads": other.manifest.get("threads"), "total_s": other.manifest.get("total_s")})
        return taken

    def skip(self, setting: str, pair: Pair, reason: str) -> None:
        self.manifest["skipped"][f"{setting}/{pair.attack}/{pair.library}"] = reason

    def write(self, extra: dict | None = None) -> None:
        order = {p.key: k for k, p in enumerate(PAIRS)}
        rows = self.rows.copy()
        if not rows.empty:
            rows["_order"] = [order.get((a, lib), len(order)) for a, lib in zip(rows.attack, rows.library)]
            rows = rows.sort_values(["setting", "_order"], kind="stable").drop(columns="_order")
        atomic_write_csv(self.csv, rows[COLUMNS + EXTRA_COLUMNS])
        if self.computed:  # the bench record (args, versions, provenance) names a bench that computed rows
            self.manifest.update(extra or {})
        atomic_write_json(self.manifest_path, self.manifest)
        atomic_write_text(self.md, markdown(rows, self.manifest))


def fmt_rate(rate: float, lo: float, hi: float) -> str:
    return f"{rate:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_lines(rows: pd.DataFrame, source: str | None) -> list[str]:
    """One line per (attack, library): targets that match, the differences' range over transfer targets,
    and the explanation of any difference (the per-target table follows)."""
    lines = ["| attack | library | match | ours − theirs, transfer targets | differences explained by |",
             "|---|---|---|---|---|"]
    for (attack, library), g in rows.groupby(["attack", "library"], sort=False):
        transfer = g[g["target"] != source]
        match = int((g["verdict"] == "match").sum())
        spread = (f"{transfer['diff'].min():+.3f} to {transfer['diff'].max():+.3f}" if len(transfer) else "-")
        differs = g[g["verdict"] == "differs"]
        why = "-" if differs.empty else str(differs["explanation"].iloc[0])
        if len(why) > 160:
            why = why[:157] + "…"
        lines.append(f"| {attack} | {library} | {match}/{len(g)} | {spread} | {why} |")
    return lines + [""]


def markdown(rows: pd.DataFrame, manifest: dict) -> str:
    lines = ["# Parity with torchattack and torchattacks", "",
             "Transfer rate (share of adversarial images the target misclassifies, 8-bit, rounded) with 95% "
             "Wilson intervals; paired difference ours − theirs with a 95% paired bootstrap interval over "
             "images; `match` when that interval contains 0. Written by bench/parity.py.", ""]
    for setting in sorted(set(rows["setting"])) if not rows.empty else []:
        desc = manifest["settings"].get(setting, {})
        lines += [f"## {setting}", "",
                  f"source {desc.get('source')}; ε={desc.get('eps', 0) * 255:.4g}/255, "
                  f"α={desc.get('alpha', 0) * 255:.4g}/255, {desc.get('steps')} steps; images every model "
                  f"classifies correctly.", ""]
        lines += summary_lines(rows[rows["setting"] == setting], desc.get("source")) + [
            "| attack | library | target | n | ours | theirs | ours − theirs | verdict | explanation |",
            "|---|---|---|---|---|---|---|---|---|"]
        for _, r in rows[rows["setting"] == setting].iterrows():
            target = r["target"] + (" (white-box)" if r["target"] == desc.get("source") else "")
            lines.append(
                f"| {r['attack']} | {r['library']} | {target} | {int(r['n'])} | "
                f"{fmt_rate(r['ours'], r['ours_low'], r['ours_high'])} | "
                f"{fmt_rate(r['theirs'], r['theirs_low'], r['theirs_high'])} | "
                f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['verdict']} | "
                f"{r['explanation'] if isinstance(r['explanation'], str) else ''} |")
        lines += ["", "| attack | library | ours | theirs | aligned | same bytes (images / pixel values) | "
                  "seconds ours / theirs |", "|---|---|---|---|---|---|---|"]
        for key, meta in manifest["rows"].items():
            if key.startswith(f"{setting}/"):
                _, attack, library = key.split("/")
                same = f"{meta['same_bytes']:.3f} / {meta.get('same_pixels', math.nan):.4f}"
                lines.append(f"| {attack} | {library} | {meta['ours']} | {meta['theirs']} | "
                             f"{meta['aligned']} | {same} | {meta['seconds_ours']:.1f} / "
                             f"{meta['seconds_theirs']:.1f} |")
        lines.append("")
    if manifest["skipped"]:
        lines += ["## Not run", ""] + [f"- {k}: {v}" for k, v in sorted(manifest["skipped"].items())] + [""]
    lines += ["## No counterpart", ""] + [f"- {k}: {v}" for k, v in NO_COUNTERPART.items()] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ driver
def run_pairs(prep: Prepared, pairs: Sequence[Pair], out: str | Path, *, seed: int = 0, resamples: int = 2000,
              progress: bool = True, extra: dict | None = None, log=print) -> Results:
    """Compute every pair of `pairs` on the prepared setting that `out` does not hold yet; write after each
    row. Our adversarial images are computed once per (method, params) and shared by both libraries' rows,
    theirs once per (library, class, kwargs)."""
    s = prep.setting
    results = Results(out)
    dropped = results.use_setting(s, seed)
    if dropped:
        log(f"{s.name}: its parameters changed since the last run: {dropped} old rows are recomputed")
    results.manifest["data"][s.name] = {"images": len(prep.ids), "scanned": prep.scanned,
                                        "first_ids": prep.ids[:5], "prepare_s": prep.seconds}
    eval_batch = max(1, min(256, auto_max_forward(s.resolution) * 2))
    clean_ok = {t: (predict(m, prep.x, eval_batch) == prep.y).numpy() for t, m in prep.targets.items()}
    ours_cache: dict[str, tuple[torch.Tensor, float]] = {}
    theirs_cache: dict[str, tuple[torch.Tensor, float]] = {}
    machine: dict | None = None  # who computes the rows (provenance, once)
    for pair in pairs:
        if results.finished(s, pair):
            log(f"{s.name} {pair.attack} vs {pair.library}: finished earlier, kept")
            if results.explain(s.name, pair):  # the explanations are text about the code: kept current
                results.write(extra)
            continue
        reason = readiness(pair, s)
        if reason is not None:
            log(f"{s.name} {pair.attack} vs {pair.library}: skipped — {reason}")
            results.skip(s.name, pair, reason)
            results.write(extra)
            continue
        attack = build_ours(pair, s, seed)
        kwargs = their_kwargs(pair, s, attack)
        ours_key = json.dumps([pair.method, our_params(pair, s)], sort_keys=True, default=str)
        theirs_key = json.dumps([pair.library, pair.cls, kwargs], sort_keys=True, default=str)
        todo = (ours_key not in ours_cache) + (theirs_key not in theirs_cache)
        bar = tqdm(total=todo * len(prep.x), desc=f"{s.name} {pair.attack} vs {pair.library}", unit="img",
                   disable=not progress or not todo)
        try:
            if ours_key not in ours_cache:
                ours_cache[ours_key] = attack_ours(pair, prep, seed, bar)
            if theirs_key not in theirs_cache:
                theirs_cache[theirs_key] = attack_theirs(pair, prep, seed, bar)
        except Exception as exc:  # one failing library must not cost the other rows; say what failed
            reason = f"failed: {type(exc).__name__}: {exc}"
            log(f"{s.name} {pair.attack} vs {pair.library}: {reason}")
            results.skip(s.name, pair, reason)
            results.write(extra)
            continue
        finally:
            bar.close()
        (mine, t_ours), (other, t_theirs) = ours_cache[ours_key], theirs_cache[theirs_key]
        equal = mine == other
        same, same_pixels = float(equal.flatten(1).all(1).float().mean()), float(equal.float().mean())
        rows = []
        for target, model in prep.targets.items():
            ok = clean_ok[target]
            a = successes(model, mine, prep.y, prep.x.dtype, eval_batch)[ok]
            b = successes(model, other, prep.y, prep.x.dtype, eval_batch)[ok]
            n = int(ok.sum())
            diff, lo, hi = paired_bootstrap(a, b, resamples, stable_seed(seed, s.name, *pair.key, target))
            outcome = verdict(lo, hi)
            (a_lo, a_hi), (b_lo, b_hi) = wilson_interval(int(a.sum()), n), wilson_interval(int(b.sum()), n)
            rows.append({"setting": s.name, "attack": pair.attack, "library": pair.library, "target": target,
                         "n": n, "ours": a.mean() if n else math.nan, "theirs": b.mean() if n else math.nan,
                         "diff": diff, "ci_low": lo, "ci_high": hi, "verdict": outcome,
                         "explanation": explanation(pair, outcome), "seconds_ours": t_ours,
                         "seconds_theirs": t_theirs, "ours_low": a_lo, "ours_high": a_hi, "theirs_low": b_lo,
                         "theirs_high": b_hi, "same_bytes": same, "same_pixels": same_pixels})
        results.add(rows, {
            "ours": ours_description(pair, s),
            "theirs": f"{pair.library}.{pair.cls}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})",
            "aligned": pair.aligned, "known_difference": pair.known, "batch_theirs": their_batch(pair, s),
            "seconds_ours": t_ours, "seconds_theirs": t_theirs, "same_bytes": same,
            "same_pixels": same_pixels,
            "max_level_difference": int((mine.int() - other.int()).abs().max()),
            "computed": {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         **(machine or (machine := who_computes()))},
        })
        results.computed += 1
        results.write(extra)
        for r in rows:
            log(f"  {s.name} {pair.attack:>15} {pair.library:>12} {r['target']:>26}: ours {r['ours']:.3f}  "
                f"theirs {r['theirs']:.3f}  diff {r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]  "
                f"{r['verdict']}")
        log(f"  same bytes: {same:.3f} of the images, {same_pixels:.4f} of the pixel values; "
            f"{t_ours:.1f} s ours, {t_theirs:.1f} s theirs")
    return results


def who_computes() -> dict:
    """What a row records of the process that computed it (kept whatever later benches or merges write)."""
    prov = provenance()
    return {"git": prov.get("git"), "cpu_id": (prov.get("machine") or {}).get("cpu_id"),
            "torch_threads": torch.get_num_threads(), "torch": versions().get("torch")}


def versions() -> dict[str, str | None]:
    out = {}
    for name in ("torch", "timm", "torchattack", "torchattacks", "torchvision", "numpy", "scipy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def pairs_table(pairs: Sequence[Pair]) -> str:
    lines = ["| attack | ours | library | theirs | aligned | known difference | not on |",
             "|---|---|---|---|---|---|---|"]
    for p in pairs:
        params = "(per setting)" if callable(p.params) else json.dumps(p.params)
        kwargs = "(per setting)" if callable(p.kwargs) else json.dumps(p.kwargs)
        only = "; ".join(f"{k}: {v}" for k, v in p.only.items())
        lines.append(f"| {p.attack} | {p.method} {params} | {p.library} | {p.cls} {kwargs} | {p.aligned} | "
                     f"{p.known or '—'} | {only or '—'} |")
    return "\n".join(lines)


def select_pairs(names: str | None) -> list[Pair]:
    if not names:
        return list(PAIRS)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = dict.fromkeys(p.attack for p in PAIRS)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown attacks {unknown}; rows: {', '.join(known)} "
                         f"(not compared: {', '.join(NO_COUNTERPART)})")
    return [p for p in PAIRS if p.attack in wanted]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=("imagenet", "cifar", "both"), default="both")
    p.add_argument("--attacks", default=None, help="rows to run, e.g. pgd,mi (default: all)")
    p.add_argument("--limit", type=int, default=None, help="images per setting (default 100 / 500)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="results/parity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples")
    p.add_argument("--shared", default=str(REPO.parent / "shared"), help="the shared/ folder (data, weights)")
    p.add_argument("--list", action="store_true", help="print the pairs table and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="take the finished rows of other --out directories (benches run side by side with "
                        "other --attacks) into --out, rewrite its tables and exit; computes nothing")
    args = p.parse_args(argv)
    pairs = select_pairs(args.attacks)
    if args.list:
        print(pairs_table(pairs))
        print("\nnot compared: " + "; ".join(NO_COUNTERPART.values()))
        return 0
    from transferlab.rundir.lock import RunLock, RunLockedError

    try:  # two benches writing one --out would each overwrite the other's rows
        with RunLock(Path(args.out), scope="parity"):
            return merge(args) if args.merge else compare(args, pairs)
    except RunLockedError as exc:
        print(f"parity: {exc}", file=sys.stderr)
        return 2


def merge(args: argparse.Namespace) -> int:
    """--merge: every other directory's rows into --out (each under its own lock), then the tables."""
    from transferlab.rundir.lock import RunLock

    results = Results(args.out)
    for other in args.merge:
        if not (Path(other) / "parity.csv").exists():
            print(f"parity: {other} holds no parity.csv", file=sys.stderr)
            return 2
        with RunLock(Path(other), scope="parity"):
            try:
                taken = results.merge(Results(other))
            except ConfigError as exc:
                print(f"parity: {exc}", file=sys.stderr)
                return 2
        print(f"{other}: {len(taken)} rows merged ({', '.join(taken) or 'none'})")
    for name in list(results.manifest["settings"]):  # explanations follow the pairs' current text
        for pair in PAIRS:
            results.explain(name, pair)
    results.write()
    print(f"wrote {results.csv}, {results.md}, {results.manifest_path}")
    return 0


def compare(args: argparse.Namespace, pairs: Sequence[Pair]) -> int:
    """Every chosen setting's pairs that --out does not hold yet; then the table of those settings."""
    torch.set_num_threads(args.threads)
    malloc = keep_freed_memory()  # both libraries alike: freed large buffers reused (allocator.py)
    started = time.perf_counter()
    settings = make_settings(Path(args.shared))
    chosen = ["imagenet", "cifar"] if args.setting == "both" else [args.setting]
    extra = {"args": vars(args), "versions": versions(), "threads": torch.get_num_threads(),
             "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "allocator": malloc,
             "provenance": provenance(),
             "load_average_before": os.getloadavg()}
    computed = 0
    for name in chosen:
        setting = settings[name]
        if args.limit is not None:
            setting = dataclasses.replace(setting, limit=args.limit)
        results = Results(args.out)
        results.use_setting(setting, args.seed)
        todo = [pair for pair in pairs if not results.finished(setting, pair)]
        if sum([results.explain(name, pair) for pair in pairs if pair not in todo]):
            results.write(extra)  # held rows' explanations follow the pairs' current text
        reasons = {pair.key: readiness(pair, setting) for pair in todo}
        if not any(r is None for r in reasons.values()):
            for pair in todo:
                print(f"{name} {pair.attack} vs {pair.library}: skipped — {reasons[pair.key]}")
                results.skip(name, pair, reasons[pair.key])
            results.write(extra)
            print(f"{name}: nothing to compute (finished rows are kept in {args.out})")
            continue
        prep = prepare(setting, progress=not args.no_progress)
        print(f"{name}: {len(prep.ids)} images every model classifies correctly (of {prep.scanned} scanned; "
              f"{prep.seconds:.0f} s); {torch.get_num_threads()} threads")
        extra["total_s"] = time.perf_counter() - started
        computed += run_pairs(prep, pairs, args.out, seed=args.seed, resamples=args.resamples,
                              progress=not args.no_progress, extra=extra).computed
    results = Results(args.out)
    results.computed = computed
    extra.update(total_s=time.perf_counter() - started, load_average_after=os.getloadavg())
    results.write(extra)
    print(f"\nwrote {results.csv}, {results.md}, {results.manifest_path}")
    done = results.rows
    if not done.empty:
        shown = done[done["setting"].isin(chosen)]
        print(shown[["setting", "attack", "library", "target", "n", "ours", "theirs", "diff", "ci_low",
                     "ci_high", "verdict"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
