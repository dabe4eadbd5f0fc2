"""Gains of each attack over a baseline attack on the same images, with paired bootstrap intervals.

Both attacks are run on the same images, so their transfer outcomes are paired: the interval of the
difference comes from resampling images (not from two independent Wilson intervals, which would be too
wide when the outcomes are correlated).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GAIN_COLUMNS = [
    "attack",
    "baseline",
    "source",
    "target",
    "white_box",
    "n",
    "rate",
    "baseline_rate",
    "gain",
    "ci_low",
    "ci_high",
    "n_boot",
]


def baseline_of(cfg: dict) -> str | None:
    """The attack gains and costs are measured against: `eval.baseline` when set, else the first attack
    of the config whose method is the plain base loop (PGD/I-FGSM, no components), found by its method,
    not its name; None when there is none (no gains are then reported)."""
    from transferlab.attacks.registry import parse_method

    named = cfg.get("eval", {}).get("baseline")
    if named:
        return named
    for name, spec in cfg["attacks"].items():
        if not parse_method(spec["method"]):
            return name
    return None


def empty_gains() -> pd.DataFrame:
    return pd.DataFrame(columns=GAIN_COLUMNS)


def paired_gain(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) − mean(b) for paired 0/1 outcomes, with a 95% percentile bootstrap interval over pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        return float("nan"), float("nan"), float("nan")
    diff = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n_boot, diff.size))
    boots = diff[idx].mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(diff.mean()), float(lo), float(hi)


def gains_over(
    records: pd.DataFrame, baseline: str = "pgd", n_boot: int = 2000, seed: int = 0, outcome: str = "fooled"
) -> pd.DataFrame:
    """Transfer-success gain of every attack over `baseline`, per source and target, over the images the
    target classifies correctly when clean (the same images for both attacks). `outcome`: the per-image
    success column (`fooled`; `hit` for targeted success)."""
    rows = []
    if baseline not in set(records.attack):
        return empty_gains()
    correct = records[records.target_clean_correct]
    for (source, target), group in correct.groupby(["source", "target"], sort=False):
        table = group.pivot_table(index="image_id", columns="attack", values=outcome, aggfunc="first")
        if baseline not in table:
            continue
        for attack in dict.fromkeys(group.attack):
            if attack == baseline:
                continue
            pair = table[[attack, baseline]].dropna().astype(float)
            gain, lo, hi = paired_gain(pair[attack].to_numpy(), pair[baseline].to_numpy(), n_boot, seed)
            rows.append(
                {
                    "attack": attack,
                    "baseline": baseline,
                    "source": source,
                    "target": target,
                    "white_box": bool(group.white_box.iloc[0]) if "white_box" in group else source == target,
                    "n": len(pair),
                    "rate": pair[attack].mean(),
                    "baseline_rate": pair[baseline].mean(),
                    "gain": gain,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_boot": n_boot,
                }
            )
    return pd.DataFrame(rows, columns=GAIN_COLUMNS)


def matched_gains(records: pd.DataFrame, passes: dict, methods: dict[str, str], reference: str = "mi",
                  n_boot: int = 2000, seed: int = 0, outcome: str = "fooled") -> pd.DataFrame:
    """Compute-matched gains: each attack's gain over the `reference`-method entry (default MI) of the same
    source that spends the same forward+backward passes per image (e.g. MI with 20× the steps beside a
    20-copy method), paired over images as `gains_over`. `passes[(attack, source)]` = total passes per
    image; `methods[attack]` = its method string. Attacks without a matched entry are left out."""
    frames = []
    for source in dict.fromkeys(records.source):
        here = {a: p for (a, s), p in passes.items() if s == source and not pd.isna(p)}
        refs = {p: a for a, p in here.items() if methods.get(a) == reference}
        for attack, p in here.items():
            ref = refs.get(p)
            if ref is None or attack == ref:
                continue
            sub = records[(records.source == source) & records.attack.isin([attack, ref])]
            frames.append(gains_over(sub, baseline=ref, n_boot=n_boot, seed=seed, outcome=outcome))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else empty_gains()


def _target_heads(group: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The group's targets in order, and their column heads (white-box ones marked)."""
    targets = list(dict.fromkeys(group.target))
    white = set(group[group.white_box.astype(bool)].target)
    return targets, [f"{t} (white-box)" if t in white else t for t in targets]


def _gain_cells(rows: pd.DataFrame) -> dict[str, str]:
    """target -> 'gain [95% CI]' in percentage points."""
    return {r.target: f"{100 * r.gain:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
            for r in rows.itertuples()}


def matched_markdown(gains: pd.DataFrame, passes: dict) -> str:
    """Attack rows (with the matched reference entry and the passes) x target columns of gains in points."""
    if gains.empty:
        return ""
    lines = []
    for source, group in gains.groupby("source", sort=False):
        targets, heads = _target_heads(group)
        lines += [f"**source: {source}**\n", "| attack | over | passes | " + " | ".join(heads) + " |",
                  "|---|---|---|" + "---|" * len(targets)]
        for (attack, ref), rows in group.groupby(["attack", "baseline"], sort=False):
            cells = _gain_cells(rows)
            lines.append(f"| {attack} | {ref} | {passes[(attack, source)]:g} | "
                         + " | ".join(cells.get(t, "") for t in targets) + " |")
        lines.append("")
    return "\n".join(lines)


def gains_markdown(gains: pd.DataFrame) -> str:
    """Attack rows x target columns of 'gain [95% CI]' in percentage points."""
    if gains.empty:
        return ""
    lines = []
    for source, group in gains.groupby("source", sort=False):
        targets, heads = _target_heads(group)
        lines += [
            f"**source: {source}**, gain over {group.baseline.iloc[0]} in points\n",
            "| attack | " + " | ".join(heads) + " |",
            "|---|" + "---|" * len(targets),
        ]
        for attack, rows in group.groupby("attack", sort=False):
            cells = _gain_cells(rows)
            lines.append(f"| {attack} | " + " | ".join(cells.get(t, "") for t in targets) + " |")
        lines.append("")
    return "\n".join(lines)
