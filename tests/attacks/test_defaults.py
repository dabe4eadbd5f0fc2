"""Changed defaults in a run's identity (`transferlab.attacks.defaults`): DI's default moved from 'resample'
to 'original'; a run made under the old default is never resumed as the new one, and tables say which
value ran."""

from __future__ import annotations

import pytest
from test_experiment import run, tiny_models, write_config  # noqa: F401  (fixture)

from transferlab.attacks import defaults
from transferlab.attacks.input_diversity import InputDiversity
from transferlab.config import load_config
from transferlab.eval.report import settings_section
from transferlab.experiment import RunError
from transferlab.rundir import jobs_of
from transferlab.rundir.jobs import job_key

ATTACKS = {"di": {"method": "mi+di"}, "di_resample": {"method": "mi+di", "di": {"variant": "resample"}},
           "pgd": {"method": "pgd"}}


def test_di_default_is_the_official_procedure_and_was_resample():
    di = InputDiversity()
    assert (di.variant, di.p, di.resize_rate, di.fill) == ("original", 0.5, 1.1, 0.5)
    assert InputDiversity.former_defaults == {"variant": "resample"}


def test_an_entry_leaving_the_variant_unset_records_the_default_and_only_then(tmp_path):
    cfg = load_config(write_config(tmp_path, attacks=ATTACKS))
    attacks = cfg["attacks"]
    assert attacks["di"]["defaults"] == {"di": {"variant": "original"}}
    assert "defaults" not in attacks["di_resample"] and "defaults" not in attacks["pgd"]


def test_the_key_of_the_new_default_is_not_that_of_a_run_made_before(tmp_path):
    cfg = load_config(write_config(tmp_path, attacks=ATTACKS))
    jobs = {job.attack: job for job in jobs_of(cfg)}
    new = job_key(cfg, jobs["di"], "w")
    jobs["di"].spec.pop("defaults")  # the spec as resolved before the change
    assert job_key(cfg, jobs["di"], "w") != new
    assert job_key(cfg, jobs["di_resample"], "w") not in (new, job_key(cfg, jobs["di"], "w"))


def test_a_directory_made_under_the_former_default_is_refused(tmp_path, tiny_models, monkeypatch):  # noqa: F811
    config = write_config(tmp_path, attacks={"di": {"method": "di"}}, **{"attack_defaults.steps": 2})
    with monkeypatch.context() as m:  # the code before the change recorded nothing
        m.setattr(defaults, "recorded_defaults", lambda method, params: {})
        run(config, tmp_path / "run")
    with pytest.raises(RunError, match="other settings"):
        run(config, tmp_path / "run")


def test_settings_tables_label_the_value_that_ran(tmp_path):
    cfg = load_config(write_config(tmp_path, attacks=ATTACKS))
    table = settings_section(cfg)
    assert "di: {'variant': 'original'} (default)" in table
    cfg["attacks"]["di"].pop("defaults")  # a run recorded before the change
    assert "di: {'variant': 'resample'} (the default when this ran)" in settings_section(cfg)
    assert "| di_resample | mi+di |" in table and "di: {'variant': 'resample'} |" in table
