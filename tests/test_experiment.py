"""End-to-end runs on a tiny offline model: output contract, determinism, resume, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ChannelNet, ShapeSensitiveNet, make_folder_dataset

from transferlab import cli
from transferlab.attacks.base import Attack
from transferlab.config import load_config
from transferlab.data import DataError
from transferlab.errors import ConfigError
from transferlab.experiment import Experiment, RunError
from transferlab.io import read_png
from transferlab.rundir import job_key

MODELS = {"tiny_a": 0, "tiny_b": 1, "tiny_c": 2}


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_models(monkeypatch):
    cache = {}

    def model(self, name):
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}")
        return cache.setdefault(name, ChannelNet(seed=MODELS[name]))

    monkeypatch.setattr(Experiment, "load_single", model)
    return cache


def write_config(tmp_path: Path, **changes) -> Path:
    data_root = make_folder_dataset(tmp_path / "images")
    cfg = {
        "name": "tiny",
        "seed": 3,
        "device": "cpu",
        "data": {"kind": "folder", "root": str(data_root), "resolution": 16, "crop_pct": 1.0},
        "models": {"sources": ["tiny_a"], "targets": ["tiny_a", "tiny_b", "tiny_c"]},
        "attack_defaults": {"eps": 8, "alpha": 2, "steps": 5, "batch_size": 4},
        "attacks": {
            "pgd": {"method": "pgd", "random_start": True},
            "pgd_l2": {"method": "pgd", "norm": "l2", "eps": 2, "alpha": 1, "random_start": True},
        },
    }
    for key, value in changes.items():
        node = cfg
        *head, last = key.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(config: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config(config, list(overrides))
    return Experiment(cfg, out, progress=False, config_path=str(config)).run()


def test_output_contract(tmp_path, tiny_models):
    out = tmp_path / "run"
    report = run(write_config(tmp_path), out)
    for name in ("results.csv", "records.csv", "table.md", "transfer.png", "manifest.json", "clean.csv"):
        assert (out / name).is_file(), name
    results = pd.read_csv(out / "results.csv")
    need = {
        "attack",
        "source",
        "target",
        "norm",
        "eps",
        "steps",
        "metric",
        "n",
        "successes",
        "success_rate",
        "ci_low",
        "ci_high",
    }
    assert need <= set(results.columns)
    assert set(results.metric) == {"transfer_success", "error_rate"}
    assert len(results) == 2 * 3 * 2  # attacks x targets x metrics
    assert ((results.ci_low <= results.success_rate) & (results.success_rate <= results.ci_high)).all()
    records = pd.read_csv(out / "records.csv", dtype={"image_id": str})
    assert {"image_id", "attack", "source", "target", "clean_pred", "adv_pred", "fooled"} <= set(
        records.columns
    )
    # every attacked image has its clean and adversarial PNG, and the files alone verify the ε-ball
    for row in records[records.target == "tiny_a"].itertuples():
        clean = read_png(out / "clean" / f"{row.image_id}.png").astype(int)
        adv = read_png(out / "adv" / row.attack / row.source / f"{row.image_id}.png").astype(int)
        if row.attack == "pgd":
            assert np.abs(adv - clean).max() <= 8
        else:
            assert np.sqrt(((adv - clean) ** 2).sum()) <= 2 * np.sqrt(3 * 16 * 16) + 1e-6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["versions"]["torch"]
    assert "git" in manifest and "timings" in manifest
    # the commit that ran each job is recorded with the job and gathered in the manifest
    assert manifest["job_commits"] == [manifest["git"]["commit"] or ""]
    # cost per step: wall and CPU time recorded per job, ratios to PGD on CPU time
    costs = pd.read_csv(out / "costs.csv").set_index("attack")
    assert (costs.cpu_s_per_image_step > 0).all() and (costs.cost_basis == "cpu").all()
    assert costs.cost_vs_baseline["pgd"] == 1.0 and (costs.baseline == "pgd").all()
    white = report["results"].query("white_box and metric == 'transfer_success' and attack == 'pgd'")
    assert white.success_rate.iloc[0] > 0.5  # the attack works on its source


def test_same_seed_same_bytes_and_batch_independence(tmp_path, tiny_models):
    config = write_config(tmp_path)
    run(config, tmp_path / "a")
    run(config, tmp_path / "a2")
    for name in ("results.csv", "records.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "a2" / name).read_bytes(), name
    run(config, tmp_path / "b", "attack_defaults.batch_size=1")
    assert (tmp_path / "a" / "results.csv").read_bytes() == (tmp_path / "b" / "results.csv").read_bytes()
    # targets evaluate a job's images in its blocks: their losses may differ in the last bits only
    a, b = (pd.read_csv(tmp_path / d / "records.csv") for d in ("a", "b"))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
    for png in (tmp_path / "a" / "adv").rglob("*.png"):
        twin = tmp_path / "b" / png.relative_to(tmp_path / "a")
        assert png.read_bytes() == twin.read_bytes()


def test_other_seed_other_bytes(tmp_path, tiny_models):
    config = write_config(tmp_path)
    run(config, tmp_path / "a")
    run(config, tmp_path / "b", "seed=4")
    pngs = sorted((tmp_path / "a" / "adv" / "pgd").rglob("*.png"))
    assert any(p.read_bytes() != (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in pngs)


def test_killed_run_resumes_identically(tmp_path, tiny_models, monkeypatch):
    config = write_config(tmp_path)
    run(config, tmp_path / "full")

    calls = {"n": 0}
    original = Experiment.attack_job

    def dying(self, job, items):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, job, items)

    monkeypatch.setattr(Experiment, "attack_job", dying)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "resumed")
    monkeypatch.setattr(Experiment, "attack_job", original)
    attacked = []
    original_run = Attack.run

    def counting(self, *args, **kwargs):
        attacked.append(self.name)
        return original_run(self, *args, **kwargs)

    monkeypatch.setattr(Attack, "run", counting)
    run(config, tmp_path / "resumed")
    assert "pgd" not in attacked and "pgd_l2" in attacked  # the finished job was not redone
    for name in ("results.csv", "records.csv"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()


def test_cpu_time_per_image_step_counts_only_timed_images(tmp_path, tiny_models):
    """A job extended from a job.json of an older run (accounting kept in it, before CPU time was kept)
    moves its accounting to cost/run.json and divides its CPU time by the images attacked since."""
    config = write_config(tmp_path)
    out = tmp_path / "run"
    run(config, out, "data.limit=4")
    job_dir = out / "adv" / "pgd" / "tiny_a"
    cost = json.loads((job_dir / "cost" / "run.json").read_text())
    legacy = json.loads((job_dir / "job.json").read_text())
    legacy.update({k: cost[k] for k in ("seconds", "images", "forwards")})
    (job_dir / "job.json").write_text(json.dumps(legacy))
    (job_dir / "cost" / "run.json").unlink()
    run(config, out, "data.limit=8")
    cost = json.loads((job_dir / "cost" / "run.json").read_text())
    assert cost["images"] == 8 and cost["cpu_images"] == 4
    assert "seconds" not in json.loads((job_dir / "job.json").read_text())  # identity only now
    costs = pd.read_csv(out / "costs.csv").set_index("attack")
    per_step = cost["cpu_seconds"] / (4 * 5)
    assert costs.cpu_s_per_image_step["pgd"] == pytest.approx(per_step, rel=1e-4)
    assert costs.images["pgd"] == 8


def test_changed_settings_in_same_dir_are_refused(tmp_path, tiny_models):
    config = write_config(tmp_path)
    run(config, tmp_path / "run")
    with pytest.raises(RunError, match="other settings"):
        run(config, tmp_path / "run", "attack_defaults.steps=4")


def test_limit_runs_on_first_eligible_images(tmp_path, tiny_models):
    out = tmp_path / "run"
    run(write_config(tmp_path), out, "data.limit=4")
    records = pd.read_csv(out / "records.csv")
    assert records[records.attack == "pgd"].image_id.nunique() == 4
    # round-robin across classes: the first images come from different classes
    assert records.label.nunique() == 3


def test_a_run_in_parts_by_skip_gives_the_whole_runs_images_and_bytes(tmp_path, tiny_models):
    config = write_config(tmp_path)
    run(config, tmp_path / "whole", "data.limit=8")
    run(config, tmp_path / "first", "data.limit=3")
    run(config, tmp_path / "rest", "data.skip=3", "data.limit=5")
    whole, first, rest = (pd.read_csv(tmp_path / d / "eligible.csv") for d in ("whole", "first", "rest"))
    assert list(whole.image_id) == list(first.image_id) + list(rest.image_id)  # the same images, in order
    keep = ["image_id", "attack", "target", "adv_pred", "fooled"]
    parts = pd.concat([pd.read_csv(tmp_path / d / "records.csv")[keep] for d in ("first", "rest")])
    whole_records = pd.read_csv(tmp_path / "whole" / "records.csv")[keep]
    key = ["attack", "target", "image_id"]
    pd.testing.assert_frame_equal(parts.sort_values(key).reset_index(drop=True),
                                  whole_records.sort_values(key).reset_index(drop=True))
    for png in (tmp_path / "rest" / "adv").rglob("*.png"):  # an image's result does not depend on its part
        assert png.read_bytes() == (tmp_path / "whole" / png.relative_to(tmp_path / "rest")).read_bytes()
    # the parts' records pooled by scripts/paired_gains.py give the whole run's paired gains
    import importlib.util

    spec = importlib.util.spec_from_file_location("paired_gains", REPO / "scripts" / "paired_gains.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path / "first"), str(tmp_path / "rest"), "--reference", "pgd",
                        "--out", str(tmp_path / "pooled")]) == 0
    pooled = pd.read_csv(tmp_path / "pooled" / "gains_over_pgd.csv")
    reference = pd.read_csv(tmp_path / "whole" / "gains.csv")
    reference = reference[reference.baseline == "pgd"].reset_index(drop=True)
    pd.testing.assert_frame_equal(pooled, reference[pooled.columns])
    with pytest.raises(SystemExit, match="shares images"):
        script.main([str(tmp_path / "first"), str(tmp_path / "whole"), "--reference", "pgd",
                     "--out", str(tmp_path / "pooled")])
    # in the same directory another skip selects again, as another data.limit does; results stay per image
    run(config, tmp_path / "rest", "data.skip=2", "data.limit=5")
    again = pd.read_csv(tmp_path / "rest" / "eligible.csv")
    assert list(again.image_id) == list(whole.image_id)[2:7]


def test_skip_must_be_a_non_negative_integer(tmp_path):
    with pytest.raises(ConfigError, match="data.skip"):
        load_config(write_config(tmp_path, **{"data.skip": -1}))


def test_unknown_key_names_key_and_file(tmp_path):
    config = write_config(tmp_path, **{"data.limt": 3})
    with pytest.raises(ConfigError, match=r"tiny\.yaml.*data\.limt.*did you mean 'data\.limit'"):
        load_config(config)


def test_unknown_attack_parameter_and_component(tmp_path):
    config = write_config(tmp_path, **{"attacks.pgd": {"method": "pgd", "stepz": 3}})
    with pytest.raises(ConfigError, match=r"tiny\.yaml.*attacks\.pgd\.stepz"):
        load_config(config)
    config = write_config(tmp_path, **{"attacks.pgd": {"method": "pgd+nosuch"}})
    with pytest.raises(ConfigError, match="unknown attack component 'nosuch'"):
        load_config(config)


def test_bad_values_rejected(tmp_path):
    with pytest.raises(ConfigError, match="data.kind"):
        load_config(write_config(tmp_path, **{"data.kind": "imagenet"}))
    with pytest.raises(ConfigError, match="data.limit"):
        load_config(write_config(tmp_path), ["data.limit=0"])
    with pytest.raises(ConfigError, match="steps"):
        load_config(write_config(tmp_path, **{"attack_defaults.steps": "ten"}))


def test_corrupt_image_fails_naming_file_or_is_skipped(tmp_path, tiny_models):
    config = write_config(tmp_path)
    bad = tmp_path / "images" / "class1" / "0000.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="0000.png"):
        run(config, tmp_path / "a")
    run(config, tmp_path / "b", "data.on_error=skip")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert len(manifest["skipped_files"]) == 1 and "0000.png" in manifest["skipped_files"][0][0]


def test_label_out_of_range(tmp_path, tiny_models):
    config = write_config(tmp_path)
    (tmp_path / "images" / "class3").mkdir()
    (tmp_path / "images" / "class1" / "0000.png").rename(tmp_path / "images" / "class3" / "0000.png")
    with pytest.raises(RunError, match="out of range"):
        run(config, tmp_path / "a")


def test_cli_reports_errors_cleanly(tmp_path, capsys):
    config = write_config(tmp_path, **{"data.limt": 3})
    assert cli.main(["run", str(config), "--out", str(tmp_path / "x")]) == 2
    assert "data.limt" in capsys.readouterr().err


def test_best_step_metric_is_recorded_and_labelled(tmp_path, tiny_models):
    out = tmp_path / "run"
    run(write_config(tmp_path), out, "eval.record_every=2")
    results = pd.read_csv(out / "results.csv")
    best = results[results.metric == "best_step_loo_target_informed"]
    assert len(best) == 2 * 3
    steps = pd.concat(pd.read_csv(f) for f in (out / "steps").rglob("*.csv"))
    assert sorted(steps.step.unique()) == [2, 4, 5]  # every 2 steps and the final step
    assert "TARGET-INFORMED" in (out / "table.md").read_text()
    # the final step recorded in memory agrees with the evaluation of the saved PNGs
    records = pd.read_csv(out / "records.csv", dtype={"image_id": str})
    pgd_steps = pd.concat(
        pd.read_csv(f, dtype={"image_id": str}) for f in (out / "steps" / "pgd").rglob("*.csv")
    )
    final = pgd_steps[pgd_steps.step == 5].merge(
        records[records.attack == "pgd"], on=["image_id", "target"], suffixes=("_step", "")
    )
    assert len(final) and (final.fooled_step == final.fooled).all()


def test_plugin_runs_in_transferlab_run(tmp_path, tiny_models, monkeypatch):
    """docs/plugins.md §5: a component in the researcher's own file, named by import path in a config."""
    import re
    import sys

    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", guide, flags=re.S) if b.startswith("# my_pkg/")]
    pkg = tmp_path / "plug" / "my_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "my_attack.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    path = "my_pkg.my_attack:GradientNoise"
    config = write_config(tmp_path, attacks={"pgd": {"method": "pgd"},
                                             "my_attack": {"method": f"mi+{path}", path: {"sigma": 0.2}}})
    try:
        assert cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    finally:
        from transferlab.attacks.registry import COMPONENTS

        COMPONENTS.pop("gradnoise", None)
        for name in [m for m in sys.modules if m.startswith("my_pkg")]:
            del sys.modules[name]
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(results.attack) == {"pgd", "my_attack"}
    meta = json.loads((tmp_path / "run" / "adv" / "my_attack" / "tiny_a" / "job.json").read_text())
    assert meta["spec"]["params"] == {path: {"sigma": 0.2}}


def test_only_runs_the_named_attacks(tmp_path, tiny_models, capsys):
    config = write_config(tmp_path)
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), "--only", "pgd_l2", "--quiet"]) == 0
    assert set(pd.read_csv(tmp_path / "r" / "results.csv").attack) == {"pgd_l2"}
    allocator = json.loads((tmp_path / "r" / "manifest.json").read_text())["threads"]["allocator"]
    assert allocator.startswith(("glibc, freed memory kept", "system"))  # what the run did, recorded
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), "--only", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err
    attacks = list(load_config(config)["attacks"])
    assert cli.main(["run", str(config), "--out", str(tmp_path / "s"), "--skip", "pgd_l2", "--quiet"]) == 0
    assert set(pd.read_csv(tmp_path / "s" / "results.csv").attack) == set(attacks) - {"pgd_l2"}
    assert cli.main(["run", str(config), "--out", str(tmp_path / "s"), "--skip", "nosuch"]) == 2
    assert "--skip names attacks not in the config" in capsys.readouterr().err
    # an --only run into a directory tabled with more attacks says which left the tables, and how to
    # table them again without recomputing
    assert cli.main(["run", str(config), "--out", str(tmp_path / "s"), "--only", "pgd_l2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "now cover only the attacks" in err and "pgd" in err.split("tabled before")[0]
    assert cli.main(["run", str(config), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert set(pd.read_csv(tmp_path / "s" / "results.csv").attack) == set(attacks)
    assert "now cover only" not in capsys.readouterr().err


def test_extended_and_resumed_runs_end_with_a_fresh_runs_bytes_under_batch_shape_rounding(
    tmp_path, monkeypatch
):
    """Kernels may round differently for another batch shape (ShapeSensitiveNet makes that large): a batch
    left incomplete by a smaller data.limit or a kill is redone whole, as the fresh run attacks it."""
    cache = {}
    def shaped(self, name):
        return cache.setdefault(name, ShapeSensitiveNet())

    monkeypatch.setattr(Experiment, "load_single", shaped)
    config = write_config(
        tmp_path,
        **{"models.targets": ["tiny_a"], "attack_defaults.batch_size": 8,
           "attacks": {"pgd": {"method": "pgd"}}},
    )
    folder = ("adv", "pgd", "tiny_a")

    def pngs(out):
        return {p.name: p.read_bytes() for p in sorted(out.joinpath(*folder).glob("*.png"))}

    run(config, tmp_path / "fresh", "data.limit=8")
    fresh = pngs(tmp_path / "fresh")
    run(config, tmp_path / "extended", "data.limit=4")
    partial = pngs(tmp_path / "extended")
    assert any(partial[name] != fresh[name] for name in partial)  # the 4-image batch rounds otherwise
    run(config, tmp_path / "extended", "data.limit=8")
    assert pngs(tmp_path / "extended") == fresh
    manifest = json.loads((tmp_path / "extended" / "manifest.json").read_text())
    assert any("redoing an incomplete batch" in n for n in manifest["notices"])
    # a kill after 5 of the batch's 8 PNGs were written
    for name in sorted(fresh)[5:]:
        (tmp_path / "fresh").joinpath(*folder, name).unlink()
    run(config, tmp_path / "fresh", "data.limit=8")
    assert pngs(tmp_path / "fresh") == fresh


def test_a_resumed_job_keeps_the_micro_batch_it_started_with(tmp_path, monkeypatch):
    """The automatic `max_forward` is recorded in job.json: a job extended after the rule changed (a newer
    version) keeps the model-call size its finished images were made with, so it ends with the bytes of a
    fresh run of its time; a record without the field resumes with the rule's value."""
    cache = {}
    monkeypatch.setattr(Experiment, "load_single",
                        lambda self, name: cache.setdefault(name, ShapeSensitiveNet()))
    config = write_config(
        tmp_path,
        **{"models.targets": ["tiny_a"], "attack_defaults.batch_size": 4,
           "attacks": {"pgd": {"method": "pgd"}}},
    )
    folder = ("adv", "pgd", "tiny_a")

    def rule(inputs):
        monkeypatch.setattr("transferlab.runner.experiment.auto_max_forward", lambda resolution: inputs)

    def pngs(out):
        return {p.name: p.read_bytes() for p in sorted(out.joinpath(*folder).glob("*.png"))}

    rule(4)
    run(config, tmp_path / "then", "data.limit=8")
    then = pngs(tmp_path / "then")
    rule(2)
    run(config, tmp_path / "now", "data.limit=8")
    assert pngs(tmp_path / "now") != then  # two rows per model call round otherwise (the test can fail)

    rule(4)
    run(config, tmp_path / "extended", "data.limit=4")
    rule(2)
    run(config, tmp_path / "extended", "data.limit=8")
    assert pngs(tmp_path / "extended") == then
    record = tmp_path.joinpath("extended", *folder, "job.json")
    assert json.loads(record.read_text())["max_forward"] == 4

    meta = json.loads(record.read_text())
    del meta["max_forward"]  # a record written before the field
    record.write_text(json.dumps(meta))
    for name in sorted(then)[4:]:
        tmp_path.joinpath("extended", *folder, name).unlink()
    rule(4)
    run(config, tmp_path / "extended", "data.limit=8")
    assert pngs(tmp_path / "extended") == then
    assert json.loads(record.read_text())["max_forward"] == 4


def test_legacy_run_is_adopted_but_not_its_ir_jobs(tmp_path, tiny_models):
    """A run made before run.json and weights digests: adopted after its clean predictions are checked,
    except IR jobs, whose images were attacked in shared micro-batches then."""
    config = write_config(
        tmp_path, attacks={"pgd": {"method": "pgd"}, "ir": {"method": "ir", "ir": {"grid": 4}}}
    )
    out = tmp_path / "run"
    run(config, out)
    exp = Experiment(load_config(config), out, progress=False)
    exp.load_models()
    (out / "run.json").unlink()
    for job in exp.jobs():
        meta_path = exp.adv_dir(job) / "job.json"
        meta = json.loads(meta_path.read_text())
        meta.pop("key_format")
        meta["key"] = job_key(exp.cfg, job, None)
        meta_path.write_text(json.dumps(meta))
    before = pd.read_csv(out / "results.csv").query("attack == 'pgd'").reset_index(drop=True)
    with pytest.raises(RunError, match="before IR ran one image per micro-batch"):
        run(config, out)
    cfg = load_config(config)
    cfg["attacks"].pop("ir")
    Experiment(cfg, out, progress=False).run()
    assert (out / "run.json").exists()
    assert json.loads((out / "adv" / "pgd" / "tiny_a" / "job.json").read_text())["key_format"] == 2
    # adopted, nothing redone (dtype: without IR's 66.1 passes per step the column reads back as integers)
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), before, check_dtype=False)


def test_evaluations_of_the_older_layout_are_replaced_per_block(tmp_path, tiny_models):
    config = write_config(tmp_path)
    out = tmp_path / "run"
    run(config, out)
    before = (out / "results.csv").read_bytes()
    stale = out / "evals" / "pgd__tiny_a__tiny_b.csv"
    stale.write_text("job_key,image_id,adv_pred\n")
    for block in (out / "evals" / "pgd" / "tiny_a").glob("*.csv"):
        block.unlink()
    run(config, out)
    assert not stale.exists() and any((out / "evals" / "pgd" / "tiny_a").glob("*.csv"))
    assert (out / "results.csv").read_bytes() == before
    notices = json.loads((out / "manifest.json").read_text())["notices"]
    assert any("older layout" in n for n in notices)


def test_gain_baseline_is_found_by_method_or_named(tmp_path, tiny_models, capsys):
    attacks = {"mi": {"method": "mi"}, "plain": {"method": "i-fgsm"}}
    out = tmp_path / "run"
    run(write_config(tmp_path, attacks=attacks), out)
    gains = pd.read_csv(out / "gains.csv")
    assert set(gains.baseline) == {"plain"} and set(gains.attack) == {"mi"}  # not the name "pgd"
    assert (pd.read_csv(out / "costs.csv").set_index("attack").cost_vs_baseline["plain"]) == 1.0
    run(write_config(tmp_path, attacks=attacks, **{"eval.baseline": "mi"}), tmp_path / "named")
    assert set(pd.read_csv(tmp_path / "named" / "gains.csv").baseline) == {"mi"}
    with pytest.raises(ConfigError, match="'eval.baseline' is 'pdg'.*did you mean 'pgd'"):
        load_config(write_config(tmp_path, **{"eval.baseline": "pdg"}))
    config = write_config(tmp_path, attacks=attacks, **{"eval.baseline": "plain"})
    assert cli.main(["run", str(config), "--out", str(tmp_path / "o"), "--only", "mi"]) == 2
    assert "leaves out 'plain', the baseline" in capsys.readouterr().err
    run(write_config(tmp_path, attacks={"mi": {"method": "mi"}}), tmp_path / "none")
    assert pd.read_csv(tmp_path / "none" / "gains.csv").empty
    assert "no plain PGD attack" in (tmp_path / "none" / "table.md").read_text()


def test_tables_keep_the_configs_attack_order(tmp_path, tiny_models):
    """JSON records are written with sorted keys; the attacks keep the config's order everywhere."""
    config = write_config(tmp_path, attacks={"zeta": {"method": "pgd"}, "alpha": {"method": "mi"}})
    raw = yaml.safe_load(config.read_text())
    raw["attacks"] = {"zeta": {"method": "pgd"}, "alpha": {"method": "mi"}}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "run"
    run(config, out)
    records = pd.read_csv(out / "records.csv")
    assert list(dict.fromkeys(records.attack)) == ["zeta", "alpha"]
    table = (out / "table.md").read_text()
    assert table.index("| zeta |") < table.index("| alpha |")
    from transferlab.rundir import RunDir

    assert list(RunDir(out).read_config()["attacks"]) == ["zeta", "alpha"]
