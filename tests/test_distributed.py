"""torchrun on CPU (gloo): two ranks write the files of a one-process run, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import CIFAR_JPG, CIFAR_WEIGHTS, REPO, need

SMALL = [
    "--only", "pgd,mi", "--threads", "1", "--quiet",
    "data.limit=8", "attack_defaults.batch_size=2", "attack_defaults.steps=2", "eval.record_every=1",
    "models.targets=[cifar10_resnet20,cifar10_resnet32]",
]


def transferlab(*args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *launcher, "-m", "transferlab", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


def test_torchrun_two_ranks_write_the_one_process_files(tmp_path):
    need(CIFAR_JPG), need(CIFAR_WEIGHTS)
    config = "configs/cpu/cifar10_resnets.yaml"
    one = transferlab("run", config, "--out", str(tmp_path / "one"), *SMALL)
    assert one.returncode == 0, one.stderr
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    dist = transferlab("run", config, "--out", str(tmp_path / "dist"), *SMALL, launcher=torchrun)
    assert dist.returncode == 0, dist.stderr
    a, b = tmp_path / "one", tmp_path / "dist"
    for name in ("results.csv", "records.csv", "clean.csv", "eligible.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pngs = sorted(p.relative_to(a) for p in a.glob("adv/**/*.png"))
    assert len(pngs) == 16
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in pngs)
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    ranks = {s["world"]["rank"]: s for s in manifest["shards"]}
    assert set(ranks) == {0, 1} and all(s["world"]["backend"] == "gloo" for s in ranks.values())
    assert all(s["threads"]["threads"] == 1 for s in ranks.values())
    split = [set(ranks[r]["images"]["pgd/cifar10_resnet20"]) for r in (0, 1)]
    assert not split[0] & split[1] and len(split[0] | split[1]) == 8  # split, not repeated
