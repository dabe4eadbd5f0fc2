"""Transfer metrics from per-image records, each with n and a 95% Wilson interval.

- ``transfer_success``: the target misclassifies the quantised adversarial image, counted over the
  attacked images the target classifies correctly when clean (on the source itself: white-box success);
- ``error_rate``: the target misclassifies the adversarial image, over all attacked images;
- ``targeted_success`` (targeted runs): the target predicts the image's target class, over the images
  it classifies correctly when clean (the untargeted two above are reported beside it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from transferlab.eval.stats import wilson_interval

RESULT_COLUMNS = [
    "attack",
    "method",
    "source",
    "target",
    "white_box",
    "norm",
    "eps",
    "alpha",
    "steps",
    "passes_per_step",
    "passes",
    "metric",
    "n",
    "successes",
    "success_rate",
    "ci_low",
    "ci_high",
]


def rate_row(successes: int, n: int) -> dict:
    lo, hi = wilson_interval(successes, n)
    return {
        "n": n,
        "successes": successes,
        "success_rate": successes / n if n else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
    }


BEST_STEP = "best_step_loo_target_informed"


def best_step_loo(fooled: pd.DataFrame) -> tuple[int, int]:
    """Leave-one-out best step (the reference code's metric): each image is scored at the step that
    maximises success on the *other* images. `fooled`: images x steps booleans. Returns (successes, n).

    The step is chosen with the target's labels, so the metric is target-informed: label it so.
    """
    m = fooled.to_numpy(dtype=bool)
    if m.size == 0:
        return 0, 0
    totals = m.sum(0)
    others = totals[None, :] - m  # success count of the other images at each step
    best = others.argmax(1)  # first best step for each held-out image
    return int(m[np.arange(len(m)), best].sum()), len(m)


def summarise(records: pd.DataFrame, attacks: dict[str, dict], steps: dict | None = None,
              passes: dict | None = None) -> pd.DataFrame:
    """One row per attack x source x target x metric. Fixed budget (the final step): transfer_success
    and error_rate; with per-step records (`steps[(attack, source)]`): the target-informed best step.
    ``passes[(attack, source)]``: (forward+backward passes per image per step, in total per image), counted
    in source-model passes (an ensemble's members each count); NaN when not recorded."""
    rows = []
    keys = ["attack", "source", "target"]
    for (attack, source, target), group in records.groupby(keys, sort=False):
        spec = attacks[attack]
        base = {
            "attack": attack,
            "method": group.method.iloc[0],
            "source": source,
            "target": target,
            "white_box": bool(group.white_box.iloc[0]) if "white_box" in group else source == target,
            "norm": spec["norm"],
            "eps": spec["eps"],
            "alpha": spec["alpha"],
            "steps": spec["steps"],
            "passes_per_step": (passes or {}).get((attack, source), (np.nan, np.nan))[0],
            "passes": (passes or {}).get((attack, source), (np.nan, np.nan))[1],
        }
        correct = group[group.target_clean_correct]
        if "hit" in group:
            hits = rate_row(int(correct.hit.sum()), len(correct))
            rows.append({**base, "metric": "targeted_success", **hits})
        rows.append(
            {**base, "metric": "transfer_success", **rate_row(int(correct.fooled.sum()), len(correct))}
        )
        rows.append({**base, "metric": "error_rate", **rate_row(int(group.fooled.sum()), len(group))})
        per_step = (steps or {}).get((attack, source))
        if per_step is not None:
            sub = per_step[(per_step.target == target) & per_step.image_id.isin(set(correct.image_id))]
            if sub.empty:
                continue
            table = sub.pivot(index="image_id", columns="step", values="fooled")
            rows.append({**base, "metric": BEST_STEP, **rate_row(*best_step_loo(table))})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
