"""Shards of one run: split by blocks, merged by `report`, byte-identical to a one-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ShapeSensitiveNet
from test_experiment import write_config

from transferlab import cli
from transferlab.config import load_config
from transferlab.eval.merge import report_dirs
from transferlab.eval.report import IncompleteRun
from transferlab.rundir import RunDirError, Shard, ShardError, parse_shard
from transferlab.runner import Experiment

COMPARED = ("results.csv", "records.csv", "gains.csv", "clean.csv", "eligible.csv")


@pytest.fixture
def shape_models(monkeypatch):
    """Models whose floats depend on the batch shape, so a shard that attacked an image in another
    batch than the one-process run would show in the bytes."""
    cache = {}
    def shaped(self, name):
        return cache.setdefault(name, ShapeSensitiveNet())

    monkeypatch.setattr(Experiment, "load_single", shaped)
    return cache


def tiny(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        **{
            "models.targets": ["tiny_a", "tiny_b"],
            "attack_defaults.batch_size": 3,
            "attacks": {"pgd": {"method": "pgd"}, "mi": {"method": "mi", "random_start": True}},
            "eval.record_every": 2,
            "data.limit": 10,  # blocks of 3, 3, 3, 1
        },
    )


def run(config: Path, out: Path, shard: Shard | None = None, *overrides: str):
    cfg = load_config(config, list(overrides))
    return Experiment(cfg, out, progress=False, config_path=str(config), shard=shard).run()


def files(out: Path) -> dict[str, bytes]:
    """The bytes a run's results are made of: the tables and every PNG."""
    found = {name: (out / name).read_bytes() for name in COMPARED}
    for png in sorted(out.glob("*/**/*.png")):
        found[str(png.relative_to(out))] = png.read_bytes()
    return found


def test_parse_shard_and_blocks():
    assert parse_shard("1/3") == Shard(1, 3) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    for bad, match in (("3/2", "must be in 0..1"), ("2/0", "at least 1"), ("1-2", "look like K/N"),
                       ("-1/2", "look like K/N")):
        with pytest.raises(ShardError, match=match):
            parse_shard(bad)
    items = list(range(10))
    assert Shard(0, 2).blocks(items, 3) == [[0, 1, 2], [6, 7, 8]]
    assert Shard(1, 2).blocks(items, 3) == [[3, 4, 5], [9]]
    assert Shard(1, 2).blocks(items, 1) == [[1], [3], [5], [7], [9]]  # batch 1: positions ≡ K (mod N)
    assert sorted(sum(Shard(0, 3).blocks(items, 2) + Shard(1, 3).blocks(items, 2)
                      + Shard(2, 3).blocks(items, 2), [])) == items


def test_shards_in_one_directory_give_the_one_process_bytes(tmp_path, shape_models):
    config = tiny(tmp_path)
    run(config, tmp_path / "one")
    assert run(config, tmp_path / "shared", Shard(0, 2)) is None  # shard 1 has not run: no tables yet
    assert not (tmp_path / "shared" / "results.csv").exists()
    report = run(config, tmp_path / "shared", Shard(1, 2))  # the last shard to finish writes them
    assert report is not None
    assert files(tmp_path / "shared") == files(tmp_path / "one")
    manifest = json.loads((tmp_path / "shared" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    shards = {s["scope"]: s for s in manifest["shards"]}
    assert set(shards) == {"shard-0-of-2", "shard-1-of-2"}
    # which images each shard attacked: disjoint, together every eligible image of the job
    a, b = (set(shards[f"shard-{k}-of-2"]["images"]["pgd/tiny_a"]) for k in (0, 1))
    assert not a & b and len(a | b) == 10 and len(a) == 6


def test_shards_in_own_directories_are_merged_by_report(tmp_path, shape_models):
    config = tiny(tmp_path)
    run(config, tmp_path / "one")
    run(config, tmp_path / "s0", Shard(0, 2))
    run(config, tmp_path / "s1", Shard(1, 2))
    assert cli.main(["report", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out",
                     str(tmp_path / "merged")]) == 0
    assert files(tmp_path / "merged") == files(tmp_path / "one")
    # the merged directory is a complete run: a one-process run over it recomputes nothing
    attacked = []
    from transferlab.attacks.base import Attack

    original = Attack.run
    try:
        Attack.run = lambda self, *a, **k: attacked.append(self.name) or original(self, *a, **k)
        run(config, tmp_path / "merged")
    finally:
        Attack.run = original
    assert attacked == []


def test_killed_shard_resumes_to_the_same_bytes(tmp_path, shape_models, monkeypatch):
    config = tiny(tmp_path)
    run(config, tmp_path / "one")
    from transferlab.runner import attacking

    original = attacking.attack_job
    calls = {"n": 0}

    def dying(exp, job, blocks):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(exp, job, blocks)

    monkeypatch.setattr(attacking, "attack_job", dying)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "shared", Shard(1, 2))
    monkeypatch.setattr(attacking, "attack_job", original)
    run(config, tmp_path / "shared", Shard(0, 2))
    run(config, tmp_path / "shared", Shard(1, 2))
    assert files(tmp_path / "shared") == files(tmp_path / "one")


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".locks" not in p.parts}


def test_a_shard_of_another_config_is_refused_and_nothing_written(tmp_path, shape_models):
    config = tiny(tmp_path)
    out = tmp_path / "shared"
    run(config, out, Shard(0, 2))
    before = snapshot(out)
    for overrides, what in ((("seed=4",), "another split"), (("attack_defaults.steps=3",), "another split"),
                            (("data.limit=8",), "another split")):
        with pytest.raises(RunDirError, match=what):
            run(config, out, Shard(1, 2), *overrides)
        assert snapshot(out) == before
    with pytest.raises(RunDirError, match="N = 2"):  # another shard count
        run(config, out, Shard(1, 3))
    assert snapshot(out) == before


def test_report_on_an_incomplete_set_lists_what_is_missing(tmp_path, shape_models, capsys):
    config = tiny(tmp_path)
    run(config, tmp_path / "s0", Shard(0, 2))
    with pytest.raises(IncompleteRun, match=r"shard 1/2 \(not run\): .*pgd on tiny_a: 2 blocks"):
        report_dirs([tmp_path / "s0"])
    assert not (tmp_path / "s0" / "records.csv").exists()
    assert cli.main(["report", str(tmp_path / "s0"), "--out", str(tmp_path / "m")]) == 2
    assert "shard 1/2" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()  # nothing written
    # a directory of another run is refused by name, with the setting that differs
    run(config, tmp_path / "other", Shard(1, 2), "seed=5")
    with pytest.raises(RunDirError, match="seed: 5 there vs 3 here"):
        report_dirs([tmp_path / "s0", tmp_path / "other"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_cli_shard_errors(tmp_path, capsys):
    config = tiny(tmp_path)
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), "--shard", "3/2"]) == 2
    assert "must be in 0..1" in capsys.readouterr().err
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), "--threads", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert cli.main(["run", str(config), "--out", str(tmp_path / "r"), "--shard", "0/2", "--fresh"]) == 2
    assert "--fresh cannot be combined" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
