"""CLI subcommands: ``transferlab interaction RUN_DIR`` and ``transferlab correlate RUN_DIR``.

``transferlab/cli.py`` calls ``register(subparsers)``; each subcommand sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import json
import math

from ..rundir import RunDir
from .game_spec import OTHER_POLICIES
from .measure import ESTIMATORS, InteractionError
from .scores import SCORES


def parse_pairs(tokens: list[str] | None) -> int | list[tuple[int, int]] | None:
    """``--pairs 16`` → 16 random pairs; ``--pairs 0,1 5,9`` (or 0-1) → those pairs of grid cells."""
    if not tokens:
        return None
    if len(tokens) == 1 and tokens[0].isdigit():
        return int(tokens[0])
    pairs = []
    for tok in tokens:
        parts = tok.replace("-", ",").split(",")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"a pair is 'i,j' (two cell indices), got {tok!r}")
        pairs.append((int(parts[0]), int(parts[1])))
    return pairs


def register(subparsers) -> None:
    """Add the ``interaction`` and ``correlate`` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser(
        "interaction", help="measure Shapley interactions inside a run's perturbations",
        description="Measure each adversarial perturbation's interactions on its source model; "
                    "writes RUN_DIR/interaction.csv (resumable).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--grid", type=int, default=None, help="cells per side (default 16 if ≥128 px, else 8)")
    p.add_argument("--estimator", choices=ESTIMATORS, default="average",
                   help="average: exact average pairwise interaction (2n+2 forwards); pairs: sampled I_ij; "
                        "orders: sampled m-order interactions")
    p.add_argument("--samples", type=int, default=None, help="samples per pair (and order)")
    p.add_argument("--pairs", nargs="+", default=None, metavar="PAIR",
                   help="a count of random pairs, or explicit pairs i,j ...")
    p.add_argument("--orders", type=int, nargs="+", default=None, help="orders m for --estimator orders")
    p.add_argument("--players", type=int, default=None,
                   help="average: sample this many rows i instead of all n (unbiased, with stderr)")
    p.add_argument("--score", choices=SCORES, default="margin",
                   help="margin z_other − z_y, or logodds log(1−p_y)/p_y; both larger = more adversarial")
    p.add_argument("--other", choices=OTHER_POLICIES, default=None,
                   help="the margin's other class: per-coalition (default; the paper's max over c≠y for "
                        "every coalition) or fixed (argmax over c≠y at the full perturbation: the game IR "
                        "penalises)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batched game")
    p.add_argument("--chunk", type=int, default=256, help="model inputs per forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_interaction)

    c = subparsers.add_parser(
        "correlate", help="correlate measured interactions with transfer",
        description="Correlate RUN_DIR/interaction.csv with RUN_DIR/records.csv; writes correlation.csv, "
                    "correlation.png, interaction_by_attack.png.")
    c.add_argument("run_dir", metavar="RUN_DIR")
    c.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over images")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--setting", default=None, help="interaction setting to use (default: the last measured)")
    c.add_argument("--include-white-box", action="store_true", help="also correlate with target = source")
    c.set_defaults(func=run_correlate)


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def run_interaction(args: argparse.Namespace) -> int:
    from ..eval.correlation import t_interval
    from .measure import measure_run

    try:
        pairs = parse_pairs(args.pairs)
    except argparse.ArgumentTypeError as exc:  # not an argparse type: cli.main would not catch it
        raise InteractionError(f"--pairs: {exc}") from None
    frame = measure_run(args.run_dir, grid=args.grid, estimator=args.estimator,
                        pairs=pairs, samples=args.samples, orders=args.orders,
                        score=args.score, batch_size=args.batch_size, device=args.device, seed=args.seed,
                        players=args.players, chunk=args.chunk, progress=not args.no_progress,
                        other=args.other)
    game = args.score if frame.other.isna().all() else f"{args.score}, other class {frame.other.iloc[0]}"
    print(f"interaction ({args.estimator}, grid {frame.grid.iloc[0]}, {game}): {len(frame)} rows "
          f"-> {args.run_dir}/interaction.csv")
    manifest = json.loads(RunDir(args.run_dir).interaction_manifest.read_text())
    if manifest["measured"]:
        print(f"  measured {manifest['measured']} perturbations, "
              f"{manifest['evaluations']:,} game evaluations "
              f"in {manifest['seconds']:.1f} s ({manifest['evaluations_per_second']:,.0f} evaluations/s, "
              f"image loading included)")
    per_image = frame.groupby(["source", "attack", "image_id"]).value.mean().reset_index()
    for (source, attack), sub in per_image.groupby(["source", "attack"]):
        mean, lo, hi = t_interval(sub.value.to_numpy())
        print(f"  {source:>24s}  {attack:<24s} mean {_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]  n={len(sub)}")
    return 0


def run_correlate(args: argparse.Namespace) -> int:
    from ..eval.correlation import CorrelationError, correlate_run

    if args.bootstrap < 1:
        raise CorrelationError(f"--bootstrap must be at least 1 (bootstrap resamples over images; default "
                               f"1000), got {args.bootstrap}")
    out = correlate_run(args.run_dir, n_boot=args.bootstrap, seed=args.seed, setting=args.setting,
                        include_white_box=args.include_white_box)
    corr = out["correlation"]
    pooled = corr[(corr.attack == "all") & (corr.method == "pearson")]
    print(f"correlation (Pearson, pooled over attacks, {args.bootstrap} bootstrap resamples over images;"
          " images: all, or only perturbations that fool their source):")
    for row in pooled.itertuples():
        print(f"  {row.source} -> {row.target:<24s} {row.outcome:<17s} {row.images:<13s} r = {_fmt(row.r)} "
              f"[{_fmt(row.ci_low)}, {_fmt(row.ci_high)}]  n={row.n}")
    print("by attack (mean interaction [95% t]; transfer rate [95% Wilson]):")
    for row in out["by_attack"].itertuples():
        print(f"  {row.source} -> {row.target:<20s} {row.attack:<20s} interaction {_fmt(row.interaction)} "
              f"[{_fmt(row.interaction_low)}, {_fmt(row.interaction_high)}]  transfer "
              f"{_fmt(row.transfer_rate)} [{_fmt(row.rate_low)}, {_fmt(row.rate_high)}] n={row.n}")
    print(f"wrote {args.run_dir}/correlation.csv, correlation.png, interaction_by_attack.png")
    return 0
