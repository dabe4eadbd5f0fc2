"""Runs whose attacks differ only in steps share one trajectory: the same bytes, fewer attack runs."""

from __future__ import annotations

import pytest
from test_experiment import run, tiny_models, write_config  # noqa: F401

from transferlab import cli
from transferlab.attacks.base import Attack
from transferlab.rundir import RunDir
from transferlab.runner import experiment as experiment_module

pytestmark = pytest.mark.usefixtures("tiny_models")

ATTACKS = {
    "mi": {"method": "mi"},  # 5 steps (the config's default)
    "pgd_rs": {"method": "pgd", "random_start": True},
    "mi_steps9": {"method": "mi", "steps": 9},
    "mi_steps3": {"method": "mi", "steps": 3},
    "mi_mu": {"method": "mi", "steps": 9, "mi": {"mu": 0.5}},  # another attack
}


def adv_files(out) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "adv").rglob("*.png"))}


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, int]]:
    """(attack, steps) of every Attack.run."""
    seen: list[tuple[str, int]] = []
    original = Attack.run

    def counting(self, *args, **kwargs):
        seen.append((self.name, self.steps))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Attack, "run", counting)
    return seen


def run_alone(config, out, monkeypatch) -> None:
    """The run with every job attacked on its own, as before trajectories were shared."""
    with monkeypatch.context() as m:
        m.setattr(experiment_module, "trajectory_groups", lambda exp, jobs: [[j] for j in jobs])
        run(config, out)


def assert_same_as_alone(config, tmp_path, monkeypatch, calls, attacks, pngs: int) -> None:
    """Run `config` with every job alone into tmp_path/alone: each attack runs, and the PNGs, results.csv
    and records.csv equal those of the shared run in tmp_path/shared."""
    calls.clear()
    run_alone(config, tmp_path / "alone", monkeypatch)
    assert {name for name, _ in calls} == set(attacks)
    shared = adv_files(tmp_path / "shared")
    assert shared == adv_files(tmp_path / "alone") and len(shared) >= pngs
    for name in ("results.csv", "records.csv"):
        assert (tmp_path / "shared" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


def test_shared_trajectories_give_the_bytes_of_separate_runs(tmp_path, monkeypatch, calls):
    config = write_config(tmp_path, attacks=ATTACKS)
    run(config, tmp_path / "shared")
    assert {name for name, _ in calls} == {"mi_steps9", "pgd_rs", "mi_mu"}
    assert_same_as_alone(config, tmp_path, monkeypatch, calls, ATTACKS, pngs=5 * 4)
    cost = next(iter(RunDir(tmp_path / "shared").read_costs("mi_steps3", "tiny_a").values()))
    assert cost["trajectory_of"] == "mi_steps9" and cost["forwards"] == 3 * cost["images"]
    assert 0 < cost["seconds"]
    longest = next(iter(RunDir(tmp_path / "shared").read_costs("mi_steps9", "tiny_a").values()))
    assert "trajectory_of" not in longest and longest["forwards"] == 9 * longest["images"]


def test_a_resumed_group_runs_only_as_far_as_its_missing_jobs_need(tmp_path, monkeypatch, calls):
    config = write_config(tmp_path, attacks=ATTACKS)
    out = str(tmp_path / "r")
    assert cli.main(["run", str(config), "--out", out, "--only", "mi_steps9", "--quiet"]) == 0
    calls.clear()
    assert cli.main(["run", str(config), "--out", out, "--quiet"]) == 0
    assert {c for c in calls if c[0].startswith("mi")} == {("mi", 5), ("mi_mu", 9)}
    run_alone(config, tmp_path / "alone", monkeypatch)
    assert adv_files(tmp_path / "r") == adv_files(tmp_path / "alone")


def test_runs_recording_per_step_predictions_do_not_share(tmp_path, calls):
    config = write_config(tmp_path, attacks=ATTACKS, **{"eval.record_every": 2})
    run(config, tmp_path / "r")
    assert {name for name, _ in calls} == set(ATTACKS)


def test_the_plan_counts_a_shared_trajectory_once(tmp_path, capsys):
    config = write_config(tmp_path, attacks=ATTACKS)
    cli.main(["run", str(config), "--out", str(tmp_path / "p"), "--dry-run"])
    out = capsys.readouterr().out
    assert "one trajectory: mi, mi_steps3, mi_steps9 share the run of mi_steps9" in out  # yaml sorts
    assert "(9 passes/image for all, not 17)" in out
    images = 12  # the tiny folder dataset
    passes = 9 + 5 + 9  # the MI trajectory, pgd_rs, mi_mu
    assert f"about {passes * images:,} image forward+backward passes" in out


def test_a_shared_trajectory_on_an_ensemble_source_costs_what_separate_runs_cost(tmp_path, monkeypatch,
                                                                                 calls):
    """An ensemble source (two members, logit fusion) shares as a single model does: the same bytes as
    separate runs; each entry's cost counts its own steps' forwards of the ensemble (in full forwards of the
    source, as a separate run counts them) and its passes column both members."""
    attacks = {"mi_steps3": {"method": "mi", "steps": 3}, "mi_steps7": {"method": "mi", "steps": 7}}
    config = write_config(tmp_path, attacks=attacks, **{"models.sources": [["tiny_a", "tiny_b"]]})
    report = run(config, tmp_path / "shared")
    assert calls and set(calls) == {("mi_steps7", 7)}
    assert_same_as_alone(config, tmp_path, monkeypatch, calls, attacks, pngs=2 * 4)
    for attack, steps in (("mi_steps3", 3), ("mi_steps7", 7)):
        costs = {d: list(RunDir(tmp_path / d).read_costs(attack, "tiny_a+tiny_b").values())
                 for d in ("shared", "alone")}
        images = sum(c["images"] for c in costs["shared"])
        assert [c["forwards"] for c in costs["shared"]] == [c["forwards"] for c in costs["alone"]] \
            == [steps * images], attack
        passes = report["results"].groupby("attack")[["passes_per_step", "passes"]].first()
        assert passes.loc[attack].tolist() == [2, 2 * steps]
    assert {c.get("trajectory_of") for c in RunDir(tmp_path / "shared").read_costs(
        "mi_steps3", "tiny_a+tiny_b").values()} == {"mi_steps7"}
