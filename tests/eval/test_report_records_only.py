"""`transferlab report --records-only`: a finished run's committed tables alone re-render its report."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from test_experiment import run, tiny_models, write_config  # noqa: F401

from transferlab import cli

pytestmark = pytest.mark.usefixtures("tiny_models")

COMMITTED = ("records.csv", "results.csv", "costs.csv", "manifest.json", "run.json", "clean.csv",
             "eligible.csv")
RENDERED = ("results.csv", "gains.csv", "matched_gains.csv", "costs.csv", "table.md", "records.csv")


def committed_copy(out, to):
    """What results/ keeps of a run (no adv/, evals/, steps/, clean/)."""
    to.mkdir()
    for name in COMMITTED:
        if (out / name).exists():
            shutil.copy(out / name, to / name)
    shutil.copytree(out / "shards", to / "shards")
    return to


@pytest.mark.parametrize("record_every", [0, 2])
def test_committed_tables_re_render_the_same_report(tmp_path, record_every):
    attacks = {"pgd": {"method": "pgd"}, "mi": {"method": "mi"}, "mi_steps9": {"method": "mi", "steps": 9}}
    config = write_config(tmp_path, attacks=attacks, **{"eval.record_every": record_every})
    out = tmp_path / "run"
    run(config, out)
    copy = committed_copy(out, tmp_path / "clone")
    assert cli.main(["report", str(copy), "--records-only"]) == 0
    for name in RENDERED:
        assert (copy / name).read_bytes() == (out / name).read_bytes(), name
    assert (copy / "transfer.png").stat().st_size > 0 and (copy / "passes.png").stat().st_size > 0
    results = pd.read_csv(copy / "results.csv")
    assert (results.metric == "best_step_loo_target_informed").any() == bool(record_every)
    manifest = json.loads((copy / "manifest.json").read_text())
    old = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"] == old["finished"] and "git" in manifest["rendered_from_records"]
    assert manifest["job_commits"] == old["job_commits"] and manifest["jobs"] == old["jobs"]


def test_the_rates_are_recomputed_from_records_csv_not_copied(tmp_path):
    out = tmp_path / "run"
    run(write_config(tmp_path), out)
    copy = committed_copy(out, tmp_path / "clone")
    records = pd.read_csv(copy / "records.csv")
    pgd_c = (records.attack == "pgd") & (records.target == "tiny_c")
    transfer = records[pgd_c & records.target_clean_correct]
    records.loc[transfer.index, "fooled"] = True
    records.to_csv(copy / "records.csv", index=False)
    assert cli.main(["report", str(copy), "--records-only"]) == 0
    results = pd.read_csv(copy / "results.csv")
    row = results[(results.attack == "pgd") & (results.target == "tiny_c")
                  & (results.metric == "transfer_success")].iloc[0]
    assert row.success_rate == 1.0 and row.n == len(transfer)


def test_a_directory_without_the_tables_is_refused_naming_them(tmp_path, capsys):
    out = tmp_path / "run"
    run(write_config(tmp_path), out)
    copy = committed_copy(out, tmp_path / "clone")
    (copy / "costs.csv").unlink()
    assert cli.main(["report", str(copy), "--records-only"]) != 0
    assert "costs.csv" in capsys.readouterr().err


def test_a_plain_report_of_a_committed_copy_names_records_only(tmp_path, capsys):
    out = tmp_path / "run"
    run(write_config(tmp_path), out)
    copy = committed_copy(out, tmp_path / "clone")
    assert cli.main(["report", str(copy)]) != 0
    assert f"transferlab report {copy} --records-only" in capsys.readouterr().err


def test_a_run_tabled_before_passes_were_kept_re_renders_with_passes_unknown(tmp_path):
    out = tmp_path / "run"
    run(write_config(tmp_path), out)
    copy = committed_copy(out, tmp_path / "clone")
    results = pd.read_csv(copy / "results.csv").drop(columns=["passes_per_step", "passes"])
    results.to_csv(copy / "results.csv", index=False)
    assert cli.main(["report", str(copy), "--records-only"]) == 0
    assert pd.read_csv(copy / "results.csv").passes.isna().all()
    table = (copy / "table.md").read_text()
    assert "| pgd | ? |" in table and "`?`: not recorded" in table
    assert "`?`" not in (out / "table.md").read_text()


def test_a_cost_that_rounds_twice_re_renders_the_same_table(tmp_path, monkeypatch):
    """costs.csv keeps 6 digits and table.md shows 4: the table is drawn from the kept digits, so a value such
    as 3.7764951e-4 (6 digits: 3.77650e-4 -> 3.777e-4; 4 digits from the raw value: 3.776e-4) reads the same
    in the run's table and in one re-rendered from the committed CSV."""
    from transferlab.eval import report

    made = report.cost_table

    def rounding_twice(*args, **kwargs):
        frame = made(*args, **kwargs)
        frame["cpu_s_per_image_step"] = 2.0004951e-4
        return frame

    monkeypatch.setattr(report, "cost_table", rounding_twice)
    out = tmp_path / "run"
    run(write_config(tmp_path), out)
    assert "| 0.0002001 |" in (out / "table.md").read_text()
    copy = committed_copy(out, tmp_path / "clone")
    assert cli.main(["report", str(copy), "--records-only"]) == 0
    assert (copy / "table.md").read_bytes() == (out / "table.md").read_bytes()
