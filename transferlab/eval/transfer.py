"""Transfer metrics from per-image records, each with n and a 95% Wilson interval.

- ``transfer_success``: the target misclassifies the quantised adversarial image, counted over the
  attacked images the target classifies correctly when clean (on the source itself: white-box success);
- ``error_rate``: the target misclassifies the adversarial image, over all attacked images.
"""

from __future__ import annotations

import pandas as pd

from transferlab.eval.stats import wilson_interval

RESULT_COLUMNS = [
    "attack", "method", "source", "target", "white_box", "norm", "eps", "alpha", "steps", "metric",
    "n", "successes", "success_rate", "ci_low", "ci_high",
]


def rate_row(successes: int, n: int) -> dict:
    lo, hi = wilson_interval(successes, n)
    return {"n": n, "successes": successes, "success_rate": successes / n if n else float("nan"),
            "ci_low": lo, "ci_high": hi}


def summarise(records: pd.DataFrame, attacks: dict[str, dict]) -> pd.DataFrame:
    """One row per attack x source x target x metric (fixed budget: the final step)."""
    rows = []
    keys = ["attack", "source", "target"]
    for (attack, source, target), group in records.groupby(keys, sort=False):
        spec = attacks[attack]
        base = {
            "attack": attack, "method": group.method.iloc[0], "source": source, "target": target,
            "white_box": bool(source == target), "norm": spec["norm"], "eps": spec["eps"],
            "alpha": spec["alpha"], "steps": spec["steps"],
        }
        correct = group[group.target_clean_correct]
        rows.append({**base, "metric": "transfer_success", **rate_row(int(correct.fooled.sum()), len(correct))})
        rows.append({**base, "metric": "error_rate", **rate_row(int(group.fooled.sum()), len(group))})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
