"""Compare the two "other" class policies on one run's perturbations: per attack, the mean interaction under
each game (95% t interval), its rank, and each attack's paired difference from a reference attack (PGD) per
policy (95% paired bootstrap over images). Reads RUN_DIR/interaction.csv after

    transferlab interaction RUN_DIR                 # per-coalition
    transferlab interaction RUN_DIR --other fixed   # fixed

and writes RUN_DIR/interaction_policies.csv (tidy) and interaction_policies.manifest.json:

    python scripts/interaction_policies.py RUN_DIR [--reference pgd] [--estimator average]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from transferlab.eval.correlation import t_interval
from transferlab.io import atomic_write_csv, atomic_write_json
from transferlab.provenance import provenance


def paired_bootstrap(diff: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-image differences."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def compare(table: pd.DataFrame, reference: str, estimator: str) -> pd.DataFrame:
    table = table[(table.estimator == estimator) & (table.score == "margin")]
    table = table.assign(other=table.other.fillna("(none)"))
    per_image = table.groupby(["other", "source", "attack", "image_id"]).value.mean().reset_index()
    rows = []
    for (other, source), group in per_image.groupby(["other", "source"]):
        wide = group.pivot(index="image_id", columns="attack", values="value")
        for attack in wide.columns:
            mean, lo, hi = t_interval(wide[attack].dropna().to_numpy())
            row = {"other": other, "source": source, "attack": attack, "n": int(wide[attack].notna().sum()),
                   "mean": mean, "ci_low": lo, "ci_high": hi}
            if reference in wide and attack != reference:
                pair = wide[[attack, reference]].dropna()
                diff = (pair[attack] - pair[reference]).to_numpy()
                d_lo, d_hi = paired_bootstrap(diff)
                row.update(reference=reference, diff=float(diff.mean()), diff_low=d_lo, diff_high=d_hi)
            rows.append(row)
    out = pd.DataFrame(rows)
    out["rank"] = out.groupby(["other", "source"])["mean"].rank(ascending=True).astype(int)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--reference", default="pgd")
    p.add_argument("--estimator", default="average")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    path = run / "interaction.csv"
    if not path.is_file():
        print(f"{path} not found: run `transferlab interaction {run}` (and with --other fixed) first",
              file=sys.stderr)
        return 2
    table = pd.read_csv(path, dtype={"image_id": str})
    if "other" not in table or table.other.dropna().nunique() < 2:
        print(f"{path} holds one 'other' class policy only: measure both", file=sys.stderr)
        return 2
    out = compare(table, args.reference, args.estimator)
    atomic_write_csv(run / "interaction_policies.csv", out)
    atomic_write_json(run / "interaction_policies.manifest.json",
                      {"reference": args.reference, "estimator": args.estimator, "n_boot": 2000, "seed": 0,
                       **provenance()})
    for (other, source), group in out.groupby(["other", "source"]):
        print(f"{source}, other class {other} (mean interaction ×10³ [95% t]; minus {args.reference} "
              "[95% paired bootstrap]; rank, 1 = lowest):")
        for r in group.sort_values("mean").itertuples():
            diff = ("" if pd.isna(getattr(r, "diff", np.nan)) else
                    f"   {1e3 * r.diff:+.2f} [{1e3 * r.diff_low:+.2f}, {1e3 * r.diff_high:+.2f}]")
            print(f"  {r.rank:>2}  {r.attack:<16} {1e3 * r.mean:+.2f} [{1e3 * r.ci_low:+.2f}, "
                  f"{1e3 * r.ci_high:+.2f}]{diff}  n={r.n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
