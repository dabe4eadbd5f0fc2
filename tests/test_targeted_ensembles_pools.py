"""Targeted runs, source ensembles and image pools through `transferlab run` (tiny offline models)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_experiment import run, tiny_models, write_config  # noqa: F401 (fixture)

from transferlab.attacks.registry import COMPONENTS, _load_builtins
from transferlab.plugins import load_plugins
from transferlab.runner import RunError

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
pytestmark = pytest.mark.usefixtures("tiny_models")


def test_targeted_run_reports_targeted_and_untargeted_rates(tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path, targeted=True, target_class="random",
                          attacks={"pgd": {"method": "pgd"}, "margin": {"method": "mi+margin"}})
    report = run(config, out, "attack_defaults.steps=10")
    results = report["results"]
    assert {"targeted_success", "transfer_success", "error_rate"} <= set(results.metric)
    records = pd.read_csv(out / "records.csv")
    assert (records.target_class != records.label).all()
    assert (records.hit == (records.adv_pred == records.target_class)).all()
    white = results.query("metric == 'targeted_success' and white_box")
    assert (white.success_rate > 0).all()  # the attack reaches its target classes on the source
    table = (out / "table.md").read_text()
    assert "TARGETED attack" in table and "## Targeted success" in table
    eligible = pd.read_csv(out / "eligible.csv")
    assert eligible.target.notna().all()
    # the dataset has no target classes: a clear error, not a silent untargeted run
    with pytest.raises(RunError, match="gives no target class"):
        run(write_config(tmp_path, targeted=True), tmp_path / "no-targets")
    # the same class for every image: images of that class are not attacked
    run(write_config(tmp_path, targeted=True, target_class=1), tmp_path / "fixed")
    fixed = pd.read_csv(tmp_path / "fixed" / "records.csv")
    assert (fixed.target_class == 1).all() and (fixed.label != 1).all()


def test_ensemble_source_runs_and_counts_its_members_as_white_box(tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path, **{"models.sources": [["tiny_a", "tiny_b"]],
                                       "attacks": {"pgd": {"method": "pgd"}, "sgm": {"method": "mi"}}})
    for fusion in ("logits", "probs", "loss"):
        report = run(config, out / fusion, f"models.fusion={fusion}")
        records = report["records"]
        assert set(records.source) == {"tiny_a+tiny_b"}
        assert (out / fusion / "adv" / "pgd" / "tiny_a+tiny_b").is_dir()
        wb = records.groupby("target").white_box.first()
        assert wb.to_dict() == {"tiny_a": True, "tiny_b": True, "tiny_c": False}
        table = (out / fusion / "table.md").read_text()
        assert "tiny_a (white-box)" in table and "tiny_b (white-box)" in table
        assert "tiny_c (white-box)" not in table


def test_pool_component_extends_byte_identically(tmp_path):
    _load_builtins()
    before = dict(COMPONENTS)
    load_plugins([str(EXAMPLES / "admix_batchmates.py")])
    try:
        config = write_config(tmp_path, attacks={"admix": {"method": "mi+admix_pool_example"}},
                              **{"attack_defaults.batch_size": 3})
        run(config, tmp_path / "fresh", "data.limit=8")
        run(config, tmp_path / "ext", "data.limit=4")
        run(config, tmp_path / "ext", "data.limit=8")
        pngs = sorted((tmp_path / "fresh" / "adv").rglob("*.png"))
        assert len(pngs) == 8
        for png in pngs:
            twin = tmp_path / "ext" / png.relative_to(tmp_path / "fresh")
            assert png.read_bytes() == twin.read_bytes(), png.name
    finally:
        for key in set(COMPONENTS) - set(before):
            del COMPONENTS[key]


def test_passes_per_image_are_in_results_tables_and_plot(tmp_path):
    """results.csv and table.md carry each job's forward+backward passes per image; an ensemble's members
    each count; passes.png is drawn."""
    out = tmp_path / "run"
    config = write_config(tmp_path, **{"models.sources": ["tiny_a", ["tiny_a", "tiny_b"]],
                                       "attacks": {"pgd": {"method": "pgd"},
                                                   "vr": {"method": "vr", "vr": {"copies": 3}}}})
    results = run(config, out, "attack_defaults.steps=4")["results"]
    got = results.groupby(["attack", "source"])[["passes_per_step", "passes"]].first()
    assert got.loc[("pgd", "tiny_a")].tolist() == [1, 4]
    assert got.loc[("vr", "tiny_a")].tolist() == [3, 12]
    assert got.loc[("vr", "tiny_a+tiny_b")].tolist() == [6, 24]
    table = (out / "table.md").read_text()
    assert "| attack | passes |" in table and "| vr | 24 |" in table
    assert (out / "passes.png").stat().st_size > 0


def test_svre_runs_on_an_ensemble_source_and_counts_member_passes(tmp_path, capsys):
    """mi+svre through `transferlab run`: per step 2 (data term) + 2 anchors + 3 inner member passes; a
    single-model source is refused by the dry run and the run, naming the fix."""
    from transferlab.cli import main

    config = write_config(tmp_path, **{"models.sources": [["tiny_a", "tiny_b"]],
                                       "attacks": {"svre": {"method": "mi+svre", "svre": {"inner": 3}}}})
    main(["run", str(config), "--out", str(tmp_path / "plan"), "--dry-run"])  # 5 steps (the config's)
    plan = capsys.readouterr().out
    assert "tiny_a+tiny_b" in plan and "2 members fused by logits" in plan and "~35 passes/image" in plan
    results = run(config, tmp_path / "run", "attack_defaults.steps=2")["results"]
    assert results.groupby("attack")[["passes_per_step", "passes"]].first().loc["svre"].tolist() == [7, 14]
    with pytest.raises(Exception, match="list of models in models.sources"):
        run(config, tmp_path / "single", "models.sources=[tiny_a]", "attack_defaults.steps=2")


def test_compute_matched_gains_pair_each_attack_with_the_mi_entry_of_equal_passes(tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path, attacks={
        "mi": {"method": "mi"}, "mi_x3": {"method": "mi", "steps": 12},
        "vr": {"method": "vr", "vr": {"copies": 3}}, "pgd": {"method": "pgd"}})
    run(config, out, "attack_defaults.steps=4")
    matched = pd.read_csv(out / "matched_gains.csv")
    # vr (4 steps × 3 copies = 12 passes) against mi_x3 (12 steps); pgd (4) against mi (4)
    assert dict(zip(matched.attack, matched.baseline, strict=False)) == {"vr": "mi_x3", "pgd": "mi"}
    records = pd.read_csv(out / "records.csv")
    sub = records[records.target_clean_correct & (records.target == "tiny_c")]
    want = (sub[sub.attack == "vr"].set_index("image_id").fooled.astype(float)
            - sub[sub.attack == "mi_x3"].set_index("image_id").fooled.astype(float)).mean()
    got = matched[(matched.attack == "vr") & (matched.target == "tiny_c")].gain.item()
    assert got == pytest.approx(want)
    assert "## Compute-matched gains over MI" in (out / "table.md").read_text()
