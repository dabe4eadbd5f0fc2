"""CLI: `transferlab zoo train ARCH`, `zoo lgv ARCH --from WEIGHTS`, `zoo check ARCH`, `zoo install OUT`.

`transferlab/cli.py` calls `register(subparsers)`; each subcommand sets `func(args) -> int`. Running the
same `train`/`lgv` command again resumes a killed run from its last finished epoch (LGV: snapshot).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferlab.zoo.archs import LGV_ONLY_ARCHS, ZOO_ARCHS


def _common(p: argparse.ArgumentParser, epochs: int, lr: float, what: str) -> None:
    p.add_argument("arch", metavar="ARCH", help=f"one of {', '.join(ZOO_ARCHS)} (or its cifar10_ model "
                   f"name); lgv also takes {', '.join(LGV_ONLY_ARCHS)}")
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs (default {epochs})")
    p.add_argument("--batch-size", type=int, default=128, help="images per SGD step (default 128)")
    p.add_argument("--lr", type=float, default=lr, help=f"{what} (default {lr})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; results depend on it)")
    p.add_argument("--out", required=True, help="folder for checkpoint, log.csv, manifest.json and weights")
    p.add_argument("--limit", type=int, help="train on the first N images only (balanced; for smoke tests)")
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="training JPEG folder (default ../shared/data/cifar10-train-jpg)")
    p.add_argument("--test-data", help="test JPEG folder (default ../shared/data/cifar10-test-jpg)")
    p.add_argument("--cache", help="folder for the decoded JPEG arrays (default ~/.cache/transferlab/zoo)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def register(subparsers) -> None:
    """Add the `zoo` command with its `train`, `lgv`, `check` and `install` subcommands."""
    from transferlab.zoo.train import LGV_DEFAULTS

    zoo = subparsers.add_parser("zoo", help="train the cross-architecture CIFAR-10 zoo, collect LGV weights")
    sub = zoo.add_subparsers(dest="zoo_command", required=True)

    train = sub.add_parser("train", help="train a zoo architecture on the CIFAR-10 JPEGs (resumable)")
    _common(train, 40, 0.1, "peak learning rate: 1 epoch linear warm-up, then cosine to 0")
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--label-smoothing", type=float, default=0.0)
    train.add_argument("--install", action="store_true",
                       help="when finished, copy the weights into transferlab/zoo/weights/ (see zoo install)")
    train.set_defaults(func=cmd_train, mode="train")

    lgv = sub.add_parser("lgv", help="collect LGV weights: constant-lr SGD from trained weights (resumable)")
    _common(lgv, LGV_DEFAULTS["epochs"], LGV_DEFAULTS["lr"], "constant learning rate (LGV)")
    lgv.add_argument("--from", dest="init", required=True, metavar="WEIGHTS",
                     help="trained weights (.safetensors; a #sha256=<hex> pin is checked)")
    lgv.add_argument("--per-epoch", type=int, default=LGV_DEFAULTS["per_epoch"], help="snapshots per epoch")
    lgv.add_argument("--weight-decay", type=float, default=LGV_DEFAULTS["weight_decay"])
    lgv.add_argument("--momentum", type=float, default=LGV_DEFAULTS["momentum"])
    lgv.add_argument("--label-smoothing", type=float, default=0.0)
    lgv.set_defaults(func=cmd_train, mode="lgv", install=False)

    check = sub.add_parser("check", help="rerun the first epochs of a committed model's recipe; compare with "
                           "its committed log (results/zoo/)")
    check.add_argument("arch", metavar="ARCH", help=f"one of {', '.join(ZOO_ARCHS)}")
    check.add_argument("--epochs", type=int, default=1, help="epochs to rerun and compare (default 1)")
    check.add_argument("--out", help="folder for the rerun (default a temporary folder, removed after)")
    check.add_argument("--cache", help="decoded JPEG arrays (default ~/.cache/transferlab/zoo)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_check)

    install = sub.add_parser("install", help="copy a finished run's weights into transferlab/zoo/weights/")
    install.add_argument("out", metavar="OUT", help="the --out folder of a finished `zoo train`")
    install.add_argument("--dest", help="zoo weights folder (default transferlab/zoo/weights/)")
    install.set_defaults(func=cmd_install)


def cmd_train(args: argparse.Namespace) -> int:
    from transferlab.weights import MissingWeightsError, split_pin, verify_checksum
    from transferlab.zoo.train import TrainConfig, default_test_data, default_train_data, install_weights, run

    cfg = TrainConfig(
        arch=args.arch, mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        seed=args.seed, limit=args.limit, test_limit=args.test_limit,
        data=args.data or str(default_train_data()), test_data=args.test_data or str(default_test_data()),
    )
    if args.mode == "lgv":
        cfg.per_epoch, cfg.warmup_epochs, cfg.nesterov = args.per_epoch, 0.0, False
        path, pin = split_pin(args.init)
        if not path.is_file():
            raise MissingWeightsError(f"LGV start weights not found: {path}")
        cfg.init_sha256 = verify_checksum(path, pin)
        cfg.init_weights = args.init
    manifest = run(cfg, args.out, threads=args.threads, cache_dir=args.cache, progress=not args.quiet)
    out = Path(args.out)
    if args.mode == "lgv":
        print(f"{len(manifest['snapshots'])} LGV snapshots in {out / 'snapshots'} "
              f"(manifest {out / 'snapshots' / 'manifest.json'})")
        return 0
    acc = manifest["test_acc"]
    print(f"{manifest['model']}: test acc {acc:.4f}, weights {out / manifest['weights']} "
          f"(sha256 {manifest['sha256']})")
    if args.install:
        print(f"installed {install_weights(out)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import tempfile

    from transferlab.zoo.check import LOSS_TOL, check_first_epochs

    with tempfile.TemporaryDirectory(prefix="zoo-check-") as tmp:
        rows = check_first_epochs(args.arch, args.out or tmp, args.epochs, args.cache, not args.quiet)
    print("| epoch | train loss (committed) | train loss (now) | diff | train acc (committed / now) | "
          "test acc (committed / now) | |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.epoch} | {r.committed_loss:.8f} | {r.loss:.8f} | {r.loss - r.committed_loss:+.2e} | "
              f"{r.committed_acc} / {r.acc} | {r.committed_test} / {r.test} | "
              f"{'reproduced' if r.ok else 'DIFFERS'} |")
    bad = [r.epoch for r in rows if not r.ok]
    if bad:
        print(f"epochs {bad} differ from the committed log (loss tolerance {LOSS_TOL:g}; accuracies exact): "
              "compare torch version, CPU instruction set and threads with the committed manifest")
        return 1
    print(f"reproduced: the first {len(rows)} epoch(s) match the committed log")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from transferlab.zoo.train import install_weights

    print(f"installed {install_weights(args.out, args.dest)}")
    return 0
