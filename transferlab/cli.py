"""The `transferlab` command: run experiments, list models and attack components, measure interactions."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import time
from pathlib import Path

from transferlab.errors import TransferlabError


class RunError(TransferlabError):
    """A command-line combination that cannot run."""


PLUGIN_HELP = "import this module (or .py file) first, so its registered components resolve (repeatable)"


def cmd_run(args: argparse.Namespace) -> int:
    from transferlab.config import load_config
    from transferlab.rundir import launcher_shard, parse_shard
    from transferlab.runner import Experiment
    from transferlab.runner import distributed as dist
    from transferlab.runner.allocator import keep_freed_memory
    from transferlab.runner.threads import apply_threads

    shard = parse_shard(args.shard) if args.shard else None
    if shard is not None and launcher_shard() is not None:
        raise RunError(
            "--shard is given, but torchrun already assigns this process its shard (RANK/WORLD_SIZE): "
            "drop --shard under torchrun"
        )
    threads = apply_threads(args.threads)  # before any torch work
    threads["allocator"] = keep_freed_memory()  # glibc: freed large buffers reused (allocator.py)
    cfg = load_config(args.config, args.overrides, args.plugin)
    if args.only:
        cfg = select_attacks(cfg, args.only, args.config)
    if args.skip:
        cfg = skip_attacks(cfg, args.skip, args.config)
    out = Path(args.out or Path("runs") / cfg["name"])
    if args.dry_run:
        from transferlab.plan import print_plan

        return print_plan(cfg, out, shard=shard, threads=threads)
    tabled_before = _tabled_attacks(out) if (args.only or args.skip) else set()
    t0 = time.time()
    world = dist.join_world() if dist.launched() else None
    try:
        exp = Experiment(
            cfg, out, progress=not args.quiet and (world is None or world.rank == 0),
            config_path=str(args.config), overrides=args.overrides, shard=shard, world=world,
            threads=threads, device=args.device,
        )
        report = exp.run(fresh=args.fresh)
    finally:
        if world is not None:
            dist.leave_world()
    took = f"{time.time() - t0:.1f} s"
    if report is None:
        print(f"\n{cfg['name']}: shard {exp.shard} of {len(exp.jobs())} attack jobs done in {took} ({out}/)")
        return 0
    split = f" in {exp.shard.count} shards" if exp.shard.sharded else ""
    print(f"\n{cfg['name']}: {len(exp.jobs())} attack jobs{split}, outputs in {out}/ ({took})")
    print((out / "table.md").read_text().split("## Error rate")[0])
    dropped = sorted(tabled_before - set(cfg["attacks"]))
    if dropped:
        print(f"transferlab: the tables in {out}/ now cover only the attacks of this --only/--skip run; "
              f"{', '.join(dropped)} were tabled before and are kept on disk: run again without "
              "--only/--skip to table every attack (finished work is not recomputed)", file=sys.stderr)
    return 0


def _tabled_attacks(out: Path) -> set[str]:
    """The attacks the tables in `out` cover now (none when it holds no results.csv)."""
    import csv

    path = out / "results.csv"
    if not path.is_file():
        return set()
    with path.open() as f:
        return {row["attack"] for row in csv.DictReader(f)}


def cmd_report(args: argparse.Namespace) -> int:
    from transferlab.eval.merge import report_dirs

    dirs = [Path(d) for d in args.dirs]
    out = Path(args.out) if args.out else None
    if args.records_only:
        return report_records_only(dirs, out)
    report = report_dirs(dirs, out)
    target = out or dirs[0]
    shards = report["manifest"]["world_size"]
    print(f"{report['manifest']['config']['name']}: report of {shards} shard(s) from "
          f"{', '.join(map(str, dirs))} written to {target}/")
    print((target / "table.md").read_text().split("## Error rate")[0])
    return 0


def report_records_only(dirs: list[Path], out: Path | None) -> int:
    """`report --records-only`: re-render each finished run's tables from its committed tables."""
    from transferlab.errors import ConfigError
    from transferlab.eval.report import report_from_records
    from transferlab.rundir import RunDir
    from transferlab.rundir.lock import RunLock

    if out is not None:
        raise ConfigError("report --records-only rewrites each DIR in place; --out merges shards and needs "
                          "the adversarial images: leave it out")
    for d in dirs:
        with RunLock(d):
            report = report_from_records(RunDir(d))
        print(f"{report['manifest']['config']['name']}: tables and plots re-rendered from {d}/records.csv")
        print((d / "table.md").read_text().split("## Error rate")[0])
    return 0


def select_attacks(cfg: dict, only: str, path: str) -> dict:
    """Keep the named attacks of a config (comma-separated), in the config's order."""
    from transferlab.errors import ConfigError

    names = [n.strip() for n in only.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{path}: --only {only!r} names no attack; it has {list(cfg['attacks'])}")
    unknown = [n for n in names if n not in cfg["attacks"]]
    if unknown:
        raise ConfigError(
            f"{path}: --only names attacks not in the config: {unknown}; it has {list(cfg['attacks'])}"
        )
    baseline = cfg["eval"].get("baseline")
    if baseline and baseline not in names:
        raise ConfigError(
            f"{path}: --only {only!r} leaves out '{baseline}', the baseline of the gains (eval.baseline); "
            f"add it to --only, or override eval.baseline=null to use the plain PGD entry if one is kept"
        )
    cfg = dict(cfg)
    cfg["attacks"] = {k: v for k, v in cfg["attacks"].items() if k in names}
    return cfg


def skip_attacks(cfg: dict, skip: str, path: str) -> dict:
    """Drop the named attacks of a config (comma-separated); the rest keep the config's order."""
    from transferlab.errors import ConfigError

    names = [n.strip() for n in skip.split(",") if n.strip()]
    unknown = [n for n in names if n not in cfg["attacks"]]
    if unknown:
        raise ConfigError(
            f"{path}: --skip names attacks not in the config: {unknown}; it has {list(cfg['attacks'])}"
        )
    return select_attacks(cfg, ",".join(a for a in cfg["attacks"] if a not in names) or " ", path)


def cmd_models(args: argparse.Namespace) -> int:
    from transferlab.models import format_models_table, list_models

    if args.layers:
        from transferlab.attacks.taps import tap_points
        from transferlab.models import load_model

        model = load_model(args.layers, weights_dir=args.weights_dir, device="cpu")
        print(f"tap points of {args.layers} (name, layer type); use them in a component's taps():")
        for name, kind in tap_points(model):
            print(f"  {name:<40} {kind}")
        return 0
    print(format_models_table(list_models(weights_dir=args.weights_dir)))
    return 0


def cmd_check_attack(args: argparse.Namespace) -> int:
    """The shared battery on one method (a registered name, an import path or a composition)."""
    from transferlab.config import yaml_load
    from transferlab.plugins import load_plugins
    from transferlab.testing import run_battery

    load_plugins(args.plugin)
    params = yaml_load(args.params) if args.params else None
    if params is not None and not isinstance(params, dict):
        raise RunError(f"--params must be a mapping of component -> parameters, got {args.params!r}")
    failed = 0
    for norm in ("linf", "l2") if args.norm == "both" else (args.norm,):
        print(f"{args.method} ({norm}):")
        for check in run_battery(args.method, norm, params):
            failed += not check.ok
            print(f"  {'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0


def cmd_attacks(args: argparse.Namespace) -> int:
    from transferlab.attacks.registry import BASE_NAMES, ENSEMBLE_SHOWN, PRESETS, describe_components
    from transferlab.plugins import load_plugins

    load_plugins(args.plugin)

    print("Base loop: pgd (I-FGSM; loop parameters norm, eps, alpha, steps, random_start in 1/255 steps)")
    print(f"  also spelled: {', '.join(BASE_NAMES[1:])}\n")
    print("Components (compose with '+', e.g. mi+sgm+ir); passes: forward+backward passes per image per")
    print("step with PGD at the defaults (224 px; multiply by the steps for an attack's total):")
    import textwrap

    for row in describe_components():
        params = ", ".join(f"{k}={v!r}" for k, v in row["params"].items()) or "-"
        origin = "" if row["module"].startswith("transferlab.") else f"  [plug-in: {row['module']}]"
        passes = "?" if row["passes"] is None else f"{row['passes']:g}"
        if row.get("ensemble") and row["passes"] is not None:
            passes += f" (member passes, {ENSEMBLE_SHOWN}-model ensemble source)"
        doc = textwrap.wrap(row["doc"] + origin, 100) or [""]
        print(f"  {row['name']:<6} {doc[0]}")
        for line in doc[1:]:
            print(f"         {line}")
        print(f"         passes/step: {passes}   params: {params}")
    print("\nPresets:")
    for name, parts in PRESETS.items():
        print(f"  {name:<10} = {'+'.join(parts)}")
    print("\nPlug-ins: name a component by import path, e.g. method: mi+my_pkg.my_attack:MyComponent")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from transferlab.config import load_config
    from transferlab.launch.slurm import submit

    cfg = load_config(args.config, args.overrides, args.plugin)  # a bad config fails here, not on the cluster
    if args.only:
        select_attacks(cfg, args.only, args.config)
    out = str(args.out or Path("runs") / cfg["name"])
    jobs = submit(
        str(args.config), args.overrides, out, nodes=args.nodes, tasks_per_node=args.tasks_per_node,
        gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, partition=args.partition,
        time_min=args.time, mem_gb=args.mem_gb, array=args.array, cluster=args.cluster, logs=args.logs,
        only=args.only, plugins=args.plugin,
    )
    if args.wait:
        for job in jobs:
            job.results()
        print(f"all shards finished; tables in {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment config (resumes where a killed run stopped)")
    run.add_argument("config", help="YAML experiment config, e.g. configs/demo.yaml")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. data.limit=20")
    run.add_argument("--out", help="output directory (default: runs/<config name>)")
    run.add_argument(
        "--dry-run", action="store_true", help="resolve models, weights and attacks; print the plan"
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="first remove the transferlab run in --out (refuses any other folder; see README)",
    )
    run.add_argument("--only", metavar="A,B", help="run only these attacks of the config (comma-separated)")
    run.add_argument("--skip", metavar="A,B", help="run all attacks but these (comma-separated)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--shard",
        metavar="K/N",
        help="attack only shard K of N (blocks of batch_size eligible images, every N-th; K = 0..N-1); "
        "shards share --out or each has its own (then merge with `transferlab report`)",
    )
    run.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="torch threads of this process (default: cores / processes on this node; see README)",
    )
    run.add_argument("--device", help="run on this device instead of the config's (e.g. cuda:1, cpu)")
    run.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    run.set_defaults(func=cmd_run)

    submit = sub.add_parser(
        "submit", help="run a config as SLURM tasks through submitit, one shard per task (see README)"
    )
    submit.add_argument("config")
    submit.add_argument("overrides", nargs="*", help="key.path=value overrides")
    submit.add_argument("--out", help="output directory on a filesystem every node sees")
    submit.add_argument("--nodes", type=int, default=1)
    submit.add_argument("--gpus-per-node", type=int, default=0)
    submit.add_argument("--tasks-per-node", type=int, help="shards per node (default: one per GPU, else 1)")
    submit.add_argument("--cpus-per-task", type=int)
    submit.add_argument("--partition")
    submit.add_argument("--time", type=int, default=240, help="minutes per task (requeued when exceeded)")
    submit.add_argument("--mem-gb", type=float)
    submit.add_argument("--array", action="store_true", help="a job array of one-task jobs, not one job")
    submit.add_argument("--only", metavar="A,B")
    submit.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    submit.add_argument("--cluster", choices=("slurm", "local", "debug"),
                        help="submitit's executor (default: SLURM when sbatch exists, else local)")
    submit.add_argument("--logs", help="submitit's log folder (default: beside --out)")
    submit.add_argument("--wait", action="store_true", help="wait for every shard and fail if one fails")
    submit.set_defaults(func=cmd_submit)

    report = sub.add_parser(
        "report",
        help="write the tables of a run from its directory, merging the shards of one or more directories",
    )
    report.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (shards of one run)")
    report.add_argument(
        "--out", help="merge into this directory (default: the first DIR; with several DIRs, required)"
    )
    report.add_argument(
        "--records-only", action="store_true",
        help="re-render a finished run's tables and plots from its committed tables (records.csv, "
             "results.csv, costs.csv, manifest.json, shards/) without its adversarial images",
    )
    report.set_defaults(func=cmd_report)

    models = sub.add_parser("models", help="list model names, their weight sources and availability")
    models.add_argument("--weights-dir", help="folder holding the CIFAR checkpoints")
    models.add_argument("--layers", metavar="NAME", help="list the tap points (layers) of model NAME")
    models.set_defaults(func=cmd_models)

    attacks = sub.add_parser("attacks", help="list attack components, their parameters and defaults")
    attacks.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    attacks.set_defaults(func=cmd_attacks)

    check = sub.add_parser("check-attack", help="run the shared attack battery on a method or plug-in")
    check.add_argument("method", help="a component, preset or composition, e.g. mi+my_pkg.mod:MyComponent")
    check.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    check.add_argument("--norm", choices=("linf", "l2", "both"), default="both")
    check.add_argument("--params", help="component parameters as YAML, e.g. '{mi: {mu: 0.5}}'")
    check.set_defaults(func=cmd_check_attack)

    for module in ("transferlab.interaction.commands", "transferlab.zoo.commands"):
        try:
            commands = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not module.startswith(str(exc.name)):
                raise
            continue
        commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`run CONFIG --out DIR data.limit=20`)
    if (
        extra
        and getattr(args, "command", None) in ("run", "submit")
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except (TransferlabError, FileNotFoundError) as exc:
        print(f"transferlab: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder, ...: name the file, not a traceback
        where = f" writing {exc.filename}" if exc.filename else ""
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
        print(f"transferlab: error:{where}: {reason}; finished work is saved, fix this and run the same "
              "command again to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ntransferlab: interrupted; finished work is saved, run the same command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
