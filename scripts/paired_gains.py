"""Paired transfer-success gains of chosen attacks over any reference attack of one run (the report's
gains are over PGD and compute-matched MI only): e.g. IR over its masking control, which isolates the
interaction term from the masks. Reads RUN_DIR/records.csv; writes RUN_DIR/gains_over_<reference>.csv
(tidy: attack, baseline, source, target, n, rate, baseline_rate, gain, ci_low, ci_high) with a manifest,
and prints a markdown table of gains in points [95% paired bootstrap over images, 2000 resamples]:

    python scripts/paired_gains.py RUN_DIR --reference pgd_ir_control --attacks pgd_ir
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from transferlab.eval.compare import gains_markdown, gains_over
from transferlab.io import atomic_write_csv, atomic_write_json
from transferlab.provenance import provenance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--reference", required=True, help="the attack the gains are measured against")
    parser.add_argument("--attacks", help="comma-separated attacks to compare (default: all others)")
    args = parser.parse_args(argv)
    records_path = args.run_dir / "records.csv"
    if not records_path.is_file():
        sys.exit(f"paired_gains: {records_path} is missing (run `transferlab report {args.run_dir}` first)")
    records = pd.read_csv(records_path)
    known = list(dict.fromkeys(records.attack))
    wanted = args.attacks.split(",") if args.attacks else [a for a in known if a != args.reference]
    missing = [a for a in [args.reference, *wanted] if a not in known]
    if missing:
        sys.exit(f"paired_gains: {', '.join(missing)} not in {records_path} (it holds {', '.join(known)})")
    records = records[records.attack.isin([args.reference, *wanted])]
    gains = gains_over(records, baseline=args.reference)
    out = args.run_dir / f"gains_over_{args.reference}.csv"
    atomic_write_csv(out, gains)
    manifest = {"script": "scripts/paired_gains.py", "run_dir": str(args.run_dir),
                "reference": args.reference, "attacks": wanted, "n_boot": 2000, "seed": 0, **provenance()}
    atomic_write_json(out.with_suffix(".manifest.json"), manifest)
    print(gains_markdown(gains))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
