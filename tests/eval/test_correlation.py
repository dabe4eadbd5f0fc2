"""correlate_run on synthetic runs with a planted relation between interaction and transfer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from transferlab.eval.correlation import (
    cluster_bootstrap_indices,
    correlate_run,
    correlation,
    ir_settings,
    t_interval,
)
from transferlab.eval.stats import wilson_interval
from transferlab.io import atomic_write_json

ATTACKS = ["pgd", "ir_0.1", "ir_1"]
TARGETS = ["t1", "t2"]


def make_run(root, n_images: int = 40, slope: float = -2.0, noise: float = 0.2, seed: int = 0):
    """records.csv + interaction.csv where transfer utility = slope·interaction + noise (per target)."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    run.mkdir()
    inter_rows, rec_rows = [], []
    for a, attack in enumerate(ATTACKS):
        for k in range(n_images):
            image_id = f"{k:04d}"
            value = rng.normal(1.0 - 0.4 * a, 0.5)
            inter_rows.append({"image_id": image_id, "attack": attack, "source": "src",
                               "estimator": "average", "grid": 8, "score": "margin", "value": value,
                               "stderr": np.nan, "evaluations": 130, "setting": "avg"})
            for target in [*TARGETS, "src"]:
                utility = slope * value + rng.normal(0, noise)
                rec_rows.append({"image_id": image_id, "label": 1, "attack": attack, "source": "src",
                                 "target": target, "clean_pred": 1, "adv_pred": 0,
                                 "target_clean_correct": k % 10 != 0, "fooled": utility > -1.0,
                                 "clean_loss": 0.1, "adv_loss": 0.1 + utility, "transfer_utility": utility,
                                 "white_box": target == "src"})
    pd.DataFrame(inter_rows).to_csv(run / "interaction.csv", index=False)
    pd.DataFrame(rec_rows).to_csv(run / "records.csv", index=False)
    return run


def test_planted_negative_correlation_is_recovered(tmp_path):
    run = make_run(tmp_path)
    out = correlate_run(run, n_boot=300, seed=1)
    corr = pd.read_csv(run / "correlation.csv")
    assert set(corr.images) == {"all", "source_fooled"}
    corr = corr[corr.images == "all"]
    assert list(corr.columns[:9]) == ["target", "source", "attack", "outcome", "method", "r", "ci_low",
                                      "ci_high", "n"]
    assert set(corr.target) == set(TARGETS)  # white-box rows (target = source) left out by default
    assert set(corr.attack) == {"all", *ATTACKS}
    util = corr[(corr.outcome == "transfer_utility")]
    assert (util.r < -0.9).all()
    assert (util.ci_low <= util.r).all() and (util.r <= util.ci_high).all() and (util.ci_high < 0).all()
    fooled = corr[(corr.outcome == "fooled") & (corr.attack == "all")]
    assert (fooled.r < -0.5).all()
    # n counts the rows each target classifies correctly when clean: 36 of 40 images per attack
    assert (corr[corr.attack == "all"].n == 3 * 36).all() and (corr[corr.attack == "pgd"].n == 36).all()
    assert (corr[corr.attack == "all"].n_images == 36).all()
    assert set(out) >= {"correlation", "interaction", "transfer", "by_attack"}


def test_point_estimates_match_scipy(tmp_path):
    run = make_run(tmp_path, noise=3.0)
    out = correlate_run(run, n_boot=0, plots=False)
    merged = out["merged"]
    sub = merged[(merged.target == "t1") & merged.target_clean_correct]
    corr = out["correlation"].query("images == 'all'").set_index(["target", "attack", "outcome", "method"])
    assert corr.loc[("t1", "all", "transfer_utility", "pearson"), "r"] == pytest.approx(
        stats.pearsonr(sub.interaction, sub.transfer_utility).statistic, abs=1e-12)
    assert corr.loc[("t1", "all", "fooled", "spearman"), "r"] == pytest.approx(
        stats.spearmanr(sub.interaction, sub.fooled.astype(float)).statistic, abs=1e-12)
    assert np.isnan(corr.loc[("t1", "all", "fooled", "spearman"), "ci_low"])  # no bootstrap requested


def test_transfer_rates_and_interaction_means(tmp_path):
    run = make_run(tmp_path)
    out = correlate_run(run, n_boot=20)
    merged = out["merged"]
    row = out["transfer"].set_index(["target", "attack"]).loc[("t2", "ir_1")]
    ok = merged[(merged.target == "t2") & (merged.attack == "ir_1") & merged.target_clean_correct]
    assert row.n == len(ok) == 36 and row.fooled == ok.fooled.sum()
    assert (row.rate_low, row.rate_high) == pytest.approx(wilson_interval(int(ok.fooled.sum()), 36))
    assert row.n_all == 40
    inter = out["interaction"].set_index("attack").loc["pgd"]
    values = pd.read_csv(run / "interaction.csv").query("attack == 'pgd'").value.to_numpy()
    assert inter.interaction == pytest.approx(values.mean())
    assert (inter.interaction_low, inter.interaction_high) == pytest.approx(t_interval(values)[1:])
    table = pd.read_csv(run / "interaction_by_attack.csv")
    assert len(table) == len(TARGETS) * len(ATTACKS)
    assert {"interaction", "transfer_rate", "rate_low", "interaction_high"} <= set(table.columns)
    manifest = json.loads((run / "correlation.manifest.json").read_text())
    assert manifest["settings"]["n_boot"] == 20 and "versions" in manifest and "timings" in manifest
    for name in ["correlation.png", "interaction_by_attack.png"]:
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pair_rows_are_averaged_per_image_and_setting_is_chosen(tmp_path):
    run = make_run(tmp_path, n_images=10)
    table = pd.read_csv(run / "interaction.csv", dtype={"image_id": str})
    pairs = table.assign(estimator="pairs", setting="pairs")
    pairs = pd.concat([pairs.assign(value=pairs.value + 1.0), pairs.assign(value=pairs.value + 3.0)])
    pd.concat([table, pairs]).to_csv(run / "interaction.csv", index=False)
    atomic_write_json(run / "interaction.manifest.json", {"settings": {"setting": "avg"}})
    avg = correlate_run(run, n_boot=0, plots=False)["merged"].drop_duplicates(["image_id", "attack"])
    both = correlate_run(run, n_boot=0, setting="pairs", plots=False)["merged"]
    both = both.drop_duplicates(["image_id", "attack"])
    assert np.allclose(both.interaction.to_numpy(), avg.interaction.to_numpy() + 2.0)
    with pytest.raises(ValueError, match="setting"):
        correlate_run(run, setting="nope", plots=False)


def test_white_box_rows_can_be_included(tmp_path):
    run = make_run(tmp_path, n_images=10)
    corr = correlate_run(run, n_boot=0, include_white_box=True, plots=False)["correlation"]
    assert set(corr.target) == {*TARGETS, "src"}


def test_cluster_bootstrap_keeps_images_together():
    groups = np.repeat(np.arange(5), 3)  # 5 images × 3 attacks
    [block] = cluster_bootstrap_indices(groups, 50, np.random.default_rng(0))
    assert block.shape == (50, 15)
    for sample in block:
        counts = np.bincount(groups[sample], minlength=5)
        assert np.all(counts % 3 == 0)  # whole images only
    uneven = np.array([0, 0, 1, 2, 2, 2])
    blocks = cluster_bootstrap_indices(uneven, 30, np.random.default_rng(1))
    for b in blocks:
        counts = np.bincount(uneven[b[0]], minlength=3)
        assert counts[0] % 2 == 0 and counts[2] % 3 == 0 and counts.sum() == len(b[0])


def test_bootstrap_interval_covers_zero_without_relation():
    from transferlab.eval.correlation import bootstrap_correlation

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=300), rng.normal(size=300)
    r, lo, hi = bootstrap_correlation(x, y, np.arange(300), "pearson", 500, rng)
    assert lo < 0 < hi and lo < r < hi and hi - lo < 0.35


def test_correlation_helpers():
    x = np.array([1.0, 2.0, 2.0, 5.0, 3.0])
    y = np.array([0.0, 1.0, 3.0, 3.0, 2.0])
    assert correlation(x, y, "spearman")[0] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert correlation(x, y, "pearson")[0] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert np.isnan(correlation(x, np.ones(5))[0])
    with pytest.raises(ValueError):
        correlation(x, y, "kendall")


def test_ir_lambda_sweep_is_read_from_the_manifest(tmp_path):
    run = make_run(tmp_path)
    attacks = {  # as the run's manifest stores the resolved config
        "pgd": {"method": "pgd", "params": {}},
        "ir_0.1": {"method": "pgd+ir", "params": {"ir": {"variant": "official", "lam": 0.1}}},
        "ir_1": {"method": "pgd+ir", "params": {"ir": {"variant": "official"}}},
        "mi": {"method": "mi", "params": {}},
        "hybrid_ir": {"method": "hybrid_ir", "params": {}},
    }
    atomic_write_json(run / "manifest.json", {"config": {"attacks": attacks}})
    table = ir_settings(run).set_index("attack")
    assert table.ir_lam["ir_0.1"] == 0.1 and table.ir_variant["ir_0.1"] == "official"
    assert table.ir_lam["ir_1"] == 1.0  # IR's default λ where the config leaves it out
    assert table.ir_lam["hybrid_ir"] == 1.0 and table.ir_variant["hybrid_ir"] == "official"  # preset
    assert np.isnan(table.ir_lam["pgd"]) and pd.isna(table.ir_variant["mi"])
    out = correlate_run(run, n_boot=20)
    by = out["by_attack"].set_index(["attack", "target"])
    assert by.ir_lam.loc["ir_0.1"].eq(0.1).all() and by.ir_lam.loc["pgd"].isna().all()
    assert (run / "interaction_by_attack.png").stat().st_size > 0


def test_source_fooled_subset_keeps_only_perturbations_that_fool_their_source(tmp_path):
    run = make_run(tmp_path)
    out = correlate_run(run, n_boot=20)
    records = pd.read_csv(run / "records.csv", dtype={"image_id": str})
    white = records[records.target == "src"].set_index(["image_id", "attack"]).fooled
    t1 = records[(records.target == "t1") & records.target_clean_correct]
    keep = white.loc[list(zip(t1.image_id, t1.attack, strict=True))].to_numpy()
    corr = out["correlation"].set_index(["images", "target", "attack", "outcome", "method"])
    row = corr.loc[("source_fooled", "t1", "all", "transfer_utility", "pearson")]
    assert row.n == keep.sum() < len(t1)
    inter = pd.read_csv(run / "interaction.csv", dtype={"image_id": str}).set_index(["image_id", "attack"])
    x = inter.value.loc[list(zip(t1.image_id, t1.attack, strict=True))].to_numpy()[keep]
    want = stats.pearsonr(x, t1.transfer_utility.to_numpy()[keep]).statistic
    assert row.r == pytest.approx(want, abs=1e-12)
