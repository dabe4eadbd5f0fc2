"""Relate a run's measured interactions to how well its perturbations transfer.

Reads RUN_DIR/interaction.csv (``transferlab interaction``) and RUN_DIR/records.csv (``transferlab run``) and
reports, per source → target: Pearson and Spearman correlations between an image's interaction and its
transfer utility (the target's cross-entropy increase) and its transfer success (0/1), with bootstrap 95%
intervals over images (pooled across attacks — resampling whole images — and per attack); the mean
interaction per attack (95% t interval) and the transfer rate per attack (95% Wilson interval).
Writes correlation.csv, interaction_by_attack.csv, correlation.png, interaction_by_attack.png and
correlation.manifest.json.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import TransferlabError
from ..io import atomic_write_bytes, atomic_write_csv, atomic_write_json
from ..rng import stable_seed
from ..rundir import RunDir, RunLock
from .stats import wilson_interval

OUTCOMES = ("transfer_utility", "fooled")
METHODS = ("pearson", "spearman")
CORRELATION_COLUMNS = ["target", "source", "attack", "outcome", "method", "r", "ci_low", "ci_high", "n",
                       "n_images", "p_value", "images"]
KEYS = ["image_id", "attack", "source"]


class CorrelationError(TransferlabError, ValueError):
    """The run cannot be correlated as asked; the message says what to do."""


# --------------------------------------------------------------------------- statistics


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every row of x (B, m) with the same row of y; NaN when either row is constant."""
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    r[(np.ptp(x, -1) == 0) | (np.ptp(y, -1) == 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def correlation(x: np.ndarray, y: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Row-wise Pearson or Spearman (Pearson of average ranks) correlation; x, y (..., m)."""
    x, y = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    if method == "spearman":
        x, y = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
    elif method != "pearson":
        raise ValueError(f"unknown correlation method {method!r}; choose one of {METHODS}")
    return _rowwise_pearson(x, y)


def cluster_bootstrap_indices(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of ``n_boot`` resamples that draw whole groups (images) with replacement.

    Rows of one image (one per attack when pooled) stay together, so the interval reflects the number of
    images, not the number of rows. Returned as a list of 2-D blocks (resamples × rows) of equal length.
    """
    codes, groups = np.unique(groups, return_inverse=True)
    g = len(codes)
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=g)
    picks = rng.integers(0, g, size=(n_boot, g))
    if np.all(counts == counts[0]):
        return [order.reshape(g, counts[0])[picks].reshape(n_boot, -1)]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    blocks = []
    for sel in picks:
        c = counts[sel]
        offsets = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        blocks.append(order[np.repeat(starts[sel], c) + offsets][None])
    return blocks


def bootstrap_correlation(x: np.ndarray, y: np.ndarray, groups: np.ndarray, method: str, n_boot: int,
                          rng: np.random.Generator, blocks: list[np.ndarray] | None = None,
                          level: float = 0.95) -> tuple[float, float, float]:
    """(r, ci_low, ci_high): the point correlation and its percentile bootstrap interval over groups."""
    r = float(correlation(x, y, method)[0])
    if n_boot <= 0 or len(x) < 3:
        return r, math.nan, math.nan
    blocks = blocks if blocks is not None else cluster_bootstrap_indices(groups, n_boot, rng)
    boots = np.concatenate([correlation(x[b], y[b], method) for b in blocks])
    if np.isnan(boots).all():
        return r, math.nan, math.nan
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(boots, [tail, 100 - tail])
    return r, float(lo), float(hi)


def _p_value(x: np.ndarray, y: np.ndarray, method: str, r: float) -> float:
    if len(x) < 3 or not np.isfinite(r):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = stats.pearsonr(x, y) if method == "pearson" else stats.spearmanr(x, y)
    return float(test.pvalue)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval for a mean; NaN bounds with fewer than 2 values."""
    values = np.asarray(values, float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


# --------------------------------------------------------------------------- loading


def _chosen_setting(run_dir: Path, table: pd.DataFrame, setting: str | None) -> str:
    """The requested setting, else the one ``transferlab interaction`` last wrote, else the last row's."""
    available = list(dict.fromkeys(table.setting))
    if setting is not None:
        if setting not in available:
            raise CorrelationError(f"setting {setting!r} not in interaction.csv; available: {available}")
        return setting
    manifest = RunDir(run_dir).interaction_manifest
    if manifest.exists():
        last = json.loads(manifest.read_text()).get("settings", {}).get("setting")
        if last in available:
            return last
    return available[-1]


def _check_inputs(run_dir: Path) -> None:
    """The folder holds records.csv (`transferlab run`) and interaction.csv (`transferlab interaction`)."""
    if not run_dir.is_dir():
        what = "not found" if not run_dir.exists() else "is not a folder"
        raise CorrelationError(f"run folder {run_dir} {what}: RUN_DIR must be a folder written by "
                               "`transferlab run` and measured by `transferlab interaction`")
    if not RunDir(run_dir).records_csv.is_file():
        raise CorrelationError(f"{run_dir} has no records.csv: it is not a finished transferlab run; run "
                               f"`transferlab run CONFIG --out {run_dir}` to completion, then "
                               f"`transferlab interaction {run_dir}`, first")
    if not RunDir(run_dir).interaction_csv.is_file():
        raise CorrelationError(f"{run_dir} has no interaction.csv: run `transferlab interaction {run_dir}` "
                               "first")


def load_interactions(run_dir: str | Path, setting: str | None = None) -> tuple[pd.DataFrame, str]:
    """One interaction per (image_id, attack, source): the mean of that image's rows for one setting."""
    run_dir = Path(run_dir)
    path = RunDir(run_dir).interaction_csv
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `transferlab interaction {run_dir}` first")
    table = pd.read_csv(path, dtype={"image_id": str, "setting": str})
    if table.empty:
        raise CorrelationError(f"{path} has no rows: run `transferlab interaction {run_dir}`")
    chosen = _chosen_setting(run_dir, table, setting)
    sub = table[table.setting == chosen]
    agg = sub.groupby(KEYS, sort=True).agg(interaction=("value", "mean"), estimator=("estimator", "first"),
                                           grid=("grid", "first"), score=("score", "first")).reset_index()
    return agg, chosen


def load_merged(run_dir: str | Path, setting: str | None = None,
                include_white_box: bool = False) -> tuple[pd.DataFrame, str]:
    """records.csv rows joined with each image's interaction (rows without an interaction dropped)."""
    run_dir = Path(run_dir)
    inter, chosen = load_interactions(run_dir, setting)
    records = pd.read_csv(RunDir(run_dir).records_csv, dtype={"image_id": str})
    white = records[records.target == records.source][KEYS + ["fooled"]]
    records = records.merge(white.rename(columns={"fooled": "source_fooled"}), on=KEYS, how="left")
    if not include_white_box:
        records = records[records.target != records.source]
    merged = records.merge(inter, on=KEYS, how="inner")
    merged["fooled"] = merged.fooled.astype(bool)
    merged["target_clean_correct"] = merged.target_clean_correct.astype(bool)
    return merged, chosen


def ir_settings(run_dir: str | Path) -> pd.DataFrame:
    """Per attack of the run: its method and, when it carries the IR component, IR's variant and λ (from the
    manifest's resolved config; IR's defaults where the config leaves them out). Lets plots draw a λ sweep
    as one series per (method, variant)."""
    from ..attacks.interaction_reduction import InteractionReduction
    from ..attacks.registry import parse_method

    run = RunDir(run_dir)
    attacks = run.read_config().get("attacks", {}) if run.manifest_json.exists() else {}
    rows = []
    for name, spec in attacks.items():
        method = str(spec.get("method", name))
        try:
            components = parse_method(method)
        except TransferlabError:  # a plug-in that is not importable here
            components = []
        ir = (spec.get("params") or {}).get("ir")
        if ir is None and "ir" not in components:
            rows.append({"attack": name, "method": method, "ir_variant": None, "ir_lam": math.nan})
            continue
        ir = ir or {}
        rows.append({"attack": name, "method": method,
                     "ir_variant": ir.get("variant", InteractionReduction.variant),
                     "ir_lam": float(ir.get("lam", InteractionReduction.lam))})
    return pd.DataFrame(rows, columns=["attack", "method", "ir_variant", "ir_lam"])


# --------------------------------------------------------------------------- tables


def correlation_table(merged: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                      clean_correct_only: bool = True) -> pd.DataFrame:
    """Tidy correlations per target × source × attack ('all' = pooled) × outcome × method × image subset.

    Subsets (column ``images``): 'all' rows, and 'source_fooled' — only the perturbations that fool their
    own source (white-box success), when the run evaluated the source; a perturbation that failed on its
    source says little about transfer, and IR's failures carry its lowest interactions.
    """
    rows = []
    subsets = {"all": None}
    if "source_fooled" in merged and merged.source_fooled.notna().all():
        subsets["source_fooled"] = "source_fooled"
    for (target, source), sub in merged.groupby(["target", "source"], sort=True):
        if clean_correct_only:
            sub = sub[sub.target_clean_correct]
        for images, column in subsets.items():
            chosen = sub if column is None else sub[sub[column].astype(bool)]
            for attack in ["all", *sorted(chosen.attack.unique())]:
                part = chosen if attack == "all" else chosen[chosen.attack == attack]
                rows.extend(_correlation_rows(part, n_boot, seed, target, source, attack, images))
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def _correlation_rows(part: pd.DataFrame, n_boot: int, seed: int, target: str, source: str, attack: str,
                      images: str) -> list[dict[str, Any]]:
    x = part.interaction.to_numpy(float)
    groups = part.image_id.to_numpy()
    rng = np.random.default_rng(stable_seed(seed, target, source, attack, images))
    blocks = cluster_bootstrap_indices(groups, n_boot, rng) if n_boot > 0 and len(part) >= 3 else None
    rows = []
    for outcome in OUTCOMES:
        y = part[outcome].to_numpy(float)
        for method in METHODS:
            r, lo, hi = bootstrap_correlation(x, y, groups, method, n_boot, rng, blocks)
            rows.append({"target": target, "source": source, "attack": attack, "outcome": outcome,
                         "method": method, "r": r, "ci_low": lo, "ci_high": hi, "n": len(part),
                         "n_images": part.image_id.nunique(), "p_value": _p_value(x, y, method, r),
                         "images": images})
    return rows


def interaction_table(merged: pd.DataFrame) -> pd.DataFrame:
    """Mean interaction per source × attack over its images, with a 95% t interval."""
    rows = []
    per_image = merged.drop_duplicates(KEYS)
    for (source, attack), sub in per_image.groupby(["source", "attack"], sort=True):
        mean, lo, hi = t_interval(sub.interaction.to_numpy(float))
        rows.append({"source": source, "attack": attack, "interaction": mean, "interaction_low": lo,
                     "interaction_high": hi, "n_images": len(sub)})
    return pd.DataFrame(rows)


def transfer_table(merged: pd.DataFrame) -> pd.DataFrame:
    """Transfer rate per source × target × attack over images the target gets right when clean (Wilson 95%),
    plus the error rate over all attacked images."""
    rows = []
    for (source, target, attack), sub in merged.groupby(["source", "target", "attack"], sort=True):
        ok = sub[sub.target_clean_correct]
        k, n = int(ok.fooled.sum()), len(ok)
        lo, hi = wilson_interval(k, n)
        rows.append({"source": source, "target": target, "attack": attack,
                     "transfer_rate": k / n if n else math.nan, "rate_low": lo, "rate_high": hi,
                     "n": n, "fooled": k,
                     "error_rate_all": float(sub.fooled.mean()), "n_all": len(sub),
                     "mean_transfer_utility": float(ok.transfer_utility.mean()) if n else math.nan})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- plots


def _panel_grid(count: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, max(1, count))
    rows = math.ceil(max(1, count) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def _save(plt, fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _colours(attacks: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(attacks) <= 10 else "tab20"]
    return {a: cmap(k % cmap.N) for k, a in enumerate(attacks)}


def plot_correlation(merged: pd.DataFrame, table: pd.DataFrame, path: Path,
                     clean_correct_only: bool = True) -> None:
    """Interaction vs transfer utility, one panel per source → target, coloured by attack, pooled fit line."""
    pairs = sorted(set(zip(merged.source, merged.target, strict=True)))
    plt, fig, axes = _panel_grid(len(pairs))
    colours = _colours(sorted(merged.attack.unique()))
    for ax, (source, target) in zip(axes, pairs, strict=False):
        sub = merged[(merged.source == source) & (merged.target == target)]
        if clean_correct_only:
            sub = sub[sub.target_clean_correct]
        for attack, part in sub.groupby("attack", sort=True):
            ax.scatter(part.interaction, part.transfer_utility, s=14, alpha=0.75, color=colours[attack],
                       label=attack)
        x, y = sub.interaction.to_numpy(float), sub.transfer_utility.to_numpy(float)
        if len(x) >= 2 and np.ptp(x) > 0:
            slope, icpt = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 50)
            ax.plot(xs, slope * xs + icpt, color="black", lw=1.2)
        row = table[(table.source == source) & (table.target == target) & (table.attack == "all")
                    & (table.images == "all")
                    & (table.outcome == "transfer_utility") & (table.method == "pearson")]
        r = row.iloc[0] if len(row) else None
        text = "" if r is None else f"\nPearson r = {r.r:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}], n = {r.n}"
        ax.set_title(f"{source} → {target}{text}", fontsize=9)
        ax.set_xlabel("interaction (per image)")
        ax.set_ylabel("transfer utility (Δ CE on target)")
        ax.grid(alpha=0.3)
    if pairs:  # one legend for all panels, outside the last one, so that no panel's points are hidden
        axes[len(pairs) - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), markerscale=1.5)
    _save(plt, fig, path)


def plot_by_attack(by_attack: pd.DataFrame, path: Path) -> None:
    """Mean interaction (95% t) against transfer rate (95% Wilson) per attack, one panel per target."""
    pairs = sorted(set(zip(by_attack.source, by_attack.target, strict=True)))
    plt, fig, axes = _panel_grid(len(pairs))
    colours = _colours(sorted(by_attack.attack.unique()))
    for ax, (source, target) in zip(axes, pairs, strict=False):
        sub = by_attack[(by_attack.source == source) & (by_attack.target == target)]
        for row in sub.sort_values("interaction").itertuples():
            xerr = np.nan_to_num([[row.interaction - row.interaction_low],
                                  [row.interaction_high - row.interaction]])
            yerr = np.nan_to_num([[row.transfer_rate - row.rate_low], [row.rate_high - row.transfer_rate]])
            ax.errorbar(row.interaction, row.transfer_rate, xerr=xerr, yerr=yerr, fmt="o", capsize=3,
                        color=colours[row.attack], label=row.attack)
            ax.annotate(str(row.attack), (row.interaction, row.transfer_rate), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        _draw_lambda_series(ax, sub)
        title = f"{source} → {target}"
        ok = sub.dropna(subset=["interaction", "transfer_rate"])
        if len(ok) >= 3:
            r = float(correlation(ok.interaction.to_numpy(), ok.transfer_rate.to_numpy())[0])
            title += f"\nacross {len(ok)} attacks: Pearson r = {r:.2f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("mean interaction (95% t)")
        ax.set_ylabel("transfer rate (95% Wilson)")
        ax.grid(alpha=0.3)  # every point carries its attack's name: no legend to cover points
    _save(plt, fig, path)


def _draw_lambda_series(ax, sub: pd.DataFrame) -> None:
    """Join the attacks that differ only in IR's λ (same method and variant) by a dashed line, in λ order."""
    if "ir_lam" not in sub:
        return
    swept = sub.dropna(subset=["ir_lam", "interaction", "transfer_rate"])
    for _, series in swept.groupby(["method", "ir_variant"], sort=True):
        if series.ir_lam.nunique() < 2:
            continue
        series = series.sort_values("ir_lam")
        ax.plot(series.interaction, series.transfer_rate, ls="--", lw=0.8, color="grey", zorder=0)
        for row in series.itertuples():
            ax.annotate(f"λ={row.ir_lam:g}", (row.interaction, row.transfer_rate), fontsize=6, color="grey",
                        xytext=(4, -9), textcoords="offset points")


# --------------------------------------------------------------------------- entry point


def correlate_run(run_dir: str | Path, n_boot: int = 1000, seed: int = 0, setting: str | None = None,
                  clean_correct_only: bool = True, include_white_box: bool = False,
                  plots: bool = True) -> dict[str, pd.DataFrame]:
    """Correlate interaction with transfer for a measured run; write tables, plots and a manifest.

    Returns {'correlation', 'interaction', 'transfer', 'by_attack', 'merged'}. Correlations use the images
    each target classifies correctly when clean (``clean_correct_only``); white-box rows (target = source) are
    left out unless ``include_white_box``. ``plots=False`` skips the two PNGs.
    """
    from ..provenance import provenance

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    _check_inputs(run_dir)
    with RunLock(run_dir):  # one writer: not beside a run or an interaction measurement
        merged, chosen = load_merged(run_dir, setting, include_white_box)
        if merged.empty:
            raise CorrelationError(f"no records in {run_dir} match the measured interactions "
                                   f"(setting {chosen!r})")
        corr = correlation_table(merged, n_boot, seed, clean_correct_only)
        inter = interaction_table(merged)
        transfer = transfer_table(merged)
        by_attack = transfer.merge(inter, on=["source", "attack"], how="left")
        by_attack = by_attack.merge(ir_settings(run_dir), on="attack", how="left")
        t1 = time.perf_counter()
        atomic_write_csv(RunDir(run_dir).correlation_csv, corr)
        atomic_write_csv(RunDir(run_dir).by_attack_csv, by_attack)
        if plots:
            plot_correlation(merged, corr, RunDir(run_dir).correlation_png, clean_correct_only)
            plot_by_attack(by_attack, RunDir(run_dir).by_attack_png)
        t2 = time.perf_counter()
        atomic_write_json(RunDir(run_dir).correlation_manifest, {
            "settings": {"n_boot": n_boot, "seed": seed, "setting": chosen,
                         "clean_correct_only": clean_correct_only, "include_white_box": include_white_box,
                         "interval": "95% percentile bootstrap over images"},
            "inputs": ["interaction.csv", "records.csv"],
            "outputs": ["correlation.csv", "interaction_by_attack.csv"]
            + (["correlation.png", "interaction_by_attack.png"] if plots else []),
            "counts": {"rows": len(merged), "images": int(merged.image_id.nunique()),
                       "attacks": sorted(merged.attack.unique()), "targets": sorted(merged.target.unique())},
            "timings": {"statistics_s": round(t1 - t0, 3), "plots_s": round(t2 - t1, 3)},
            **provenance(),
        })
        return {"correlation": corr, "interaction": inter, "transfer": transfer, "by_attack": by_attack,
                "merged": merged}
