"""Paired transfer-success gains of chosen attacks over any reference attack (the report's gains are over
PGD and compute-matched MI only): e.g. IR over its masking control, which isolates the interaction term
from the masks. Several run directories are parts of one run made with `data.skip` (the same config but
for the image window): their records are pooled, after checking that they share attacks, sources and
targets and hold disjoint images.

Reads RUN_DIR/records.csv of each directory; writes OUT/gains_over_<reference>.csv (tidy: attack,
baseline, source, target, n, rate, baseline_rate, gain, ci_low, ci_high; default OUT: the only or first
directory) with a manifest, and prints a markdown table of gains in points [95% paired bootstrap over
images, 2000 resamples]:

    python scripts/paired_gains.py RUN_DIR --reference pgd_ir_control --attacks pgd_ir
    python scripts/paired_gains.py PART_A PART_B --reference pgd --out results/pooled
    python scripts/paired_gains.py RUN_DIR --across-sources --reference pgd@cifar10_resnet20

`--across-sources` compares sources too: each attack is named ATTACK@SOURCE and paired with the reference
on the images both attacked (e.g. PGD on an LGV collection against PGD on the surrogate it came from).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from transferlab.eval.compare import gains_markdown, gains_over
from transferlab.eval.stats import format_rate
from transferlab.io import atomic_write_csv, atomic_write_json, atomic_write_text
from transferlab.provenance import provenance


def pooled_records(run_dirs: list[Path]) -> pd.DataFrame:
    """The records of the parts of one run, checked to be parts (same jobs and targets, no shared image)."""
    frames = []
    for d in run_dirs:
        path = d / "records.csv"
        if not path.is_file():
            sys.exit(f"paired_gains: {path} is missing (run `transferlab report {d}` first)")
        frames.append(pd.read_csv(path))
    def jobs(frame: pd.DataFrame) -> set[tuple]:
        return set(zip(frame.attack, frame.source, frame.target))

    seen: set[str] = set()
    for d, frame in zip(run_dirs, frames):
        if jobs(frame) != jobs(frames[0]):
            sys.exit(f"paired_gains: {d} holds other attacks, sources or targets than {run_dirs[0]}")
        ids = set(frame.image_id)
        if ids & seen:
            sys.exit(f"paired_gains: {d} shares images with an earlier directory (parts must not overlap: "
                     "give each its own data.skip window)")
        seen |= ids
    return pd.concat(frames, ignore_index=True)


def rates_markdown(records: pd.DataFrame) -> str:
    """Transfer success per attack and target over the pooled images, with n and a 95% Wilson interval."""
    correct = records[records.target_clean_correct]
    targets = list(dict.fromkeys(correct.target))
    lines = ["| attack | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for attack, group in correct.groupby("attack", sort=False):
        cells = []
        for t in targets:
            fooled = group[group.target == t].fooled.astype(bool)
            cells.append(f"{format_rate(int(fooled.sum()), len(fooled))} n={len(fooled)}")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--reference", required=True, help="the attack the gains are measured against")
    parser.add_argument("--attacks", help="comma-separated attacks to compare (default: all others)")
    parser.add_argument("--across-sources", action="store_true",
                        help="name attacks ATTACK@SOURCE and pair them across sources")
    parser.add_argument("--out", type=Path, help="folder for the tables (default: the first run directory)")
    args = parser.parse_args(argv)
    records = pooled_records(args.run_dirs)
    if args.across_sources:
        records = records.assign(attack=records.attack + "@" + records.source, source="any source")
    known = list(dict.fromkeys(records.attack))
    wanted = args.attacks.split(",") if args.attacks else [a for a in known if a != args.reference]
    missing = [a for a in [args.reference, *wanted] if a not in known]
    if missing:
        sys.exit(f"paired_gains: {', '.join(missing)} not in the records (they hold {', '.join(known)})")
    records = records[records.attack.isin([args.reference, *wanted])]
    gains = gains_over(records, baseline=args.reference)
    out_dir = args.out or args.run_dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"gains_over_{args.reference.replace('@', '_at_')}.csv"
    atomic_write_csv(out, gains)
    manifest = {"script": "scripts/paired_gains.py", "run_dirs": [str(d) for d in args.run_dirs],
                "reference": args.reference, "attacks": wanted, "n_boot": 2000, "seed": 0,
                "images": int(records.image_id.nunique()), **provenance()}
    atomic_write_json(out.with_suffix(".manifest.json"), manifest)
    text = gains_markdown(gains)
    if len(args.run_dirs) > 1:
        text = rates_markdown(records) + "\n" + text
        atomic_write_text(out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
