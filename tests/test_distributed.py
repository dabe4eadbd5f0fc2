"""Launchers on CPU: torchrun (gloo), submitit's local executor and the sbatch array script each write
the files of a one-process run, byte for byte (small CIFAR config, ../shared assets)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CIFAR_JPG, CIFAR_WEIGHTS, REPO, need

CONFIG = "configs/cpu/cifar10_resnets.yaml"
SMALL = [
    "--only", "pgd,mi", "--quiet",
    "data.limit=8", "attack_defaults.batch_size=2", "attack_defaults.steps=2", "eval.record_every=1",
    "models.targets=[cifar10_resnet20,cifar10_resnet32]",
]
COMPARED = ("results.csv", "records.csv", "clean.csv", "eligible.csv")


def transferlab(*args: str, launcher: tuple[str, ...] = (), env: dict | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, *launcher, "-m", "transferlab", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    need(CIFAR_JPG), need(CIFAR_WEIGHTS)
    out = tmp_path_factory.mktemp("one") / "run"
    transferlab("run", CONFIG, "--out", str(out), "--threads", "1", *SMALL)
    return out


def same_files(a: Path, b: Path) -> None:
    for name in COMPARED:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pngs = sorted(p.relative_to(a) for p in a.glob("adv/**/*.png"))
    assert len(pngs) == 16
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in pngs)


def split_of(out: Path) -> list[set[str]]:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    shards = sorted(manifest["shards"], key=lambda s: s["shard"])
    split = [set(s["images"]["pgd/cifar10_resnet20"]) for s in shards]
    assert not split[0] & split[1] and len(split[0] | split[1]) == 8  # split, not repeated
    return shards


def test_torchrun_two_ranks_write_the_one_process_files(one_process, tmp_path):
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    transferlab("run", CONFIG, "--out", str(tmp_path / "dist"), "--threads", "1", *SMALL, launcher=torchrun)
    same_files(one_process, tmp_path / "dist")
    shards = split_of(tmp_path / "dist")
    assert [s["world"]["rank"] for s in shards] == [0, 1]
    assert all(s["world"]["backend"] == "gloo" and s["threads"]["threads"] == 1 for s in shards)


def test_submit_through_submitit_local_executor(one_process, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "sub"
    transferlab("submit", CONFIG, "--out", str(out), "--cluster", "local", "--tasks-per-node", "2",
                "--wait", *[a for a in SMALL if a != "--quiet"], env={"OMP_NUM_THREADS": ""})
    same_files(one_process, out)
    shards = split_of(out)
    # two tasks on one node, not bound to cores: the thread rule gives each half of them
    cores = shards[0]["threads"]["cores"]
    assert all(s["threads"]["threads"] == max(1, cores // 2) for s in shards)


def test_sbatch_array_script(one_process, tmp_path):
    out = tmp_path / "array"
    command = shutil.which("transferlab") or str(Path(sys.executable).with_name("transferlab"))
    for task in ("1", "0"):  # array tasks run in any order; the last one writes the tables
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CONFIG": CONFIG, "OUT": str(out),
               "SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_COUNT": "2", "TRANSFERLAB": command}
        cmd = ["bash", "scripts/slurm/shards.sbatch", "--threads", "1", *SMALL]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    same_files(one_process, out)
    split_of(out)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_by_rendezvous(one_process, tmp_path):
    """Two torchrun agents (`--nnodes 2`, c10d rendezvous), as on two machines sharing --out."""
    out = tmp_path / "nodes"
    rdzv = ("--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "transferlab-test")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", *rdzv, "-m", "transferlab", "run", CONFIG,
           "--out", str(out), "--threads", "1", *SMALL]
    agents = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]
    for agent in agents:
        _, err = agent.communicate(timeout=600)
        assert agent.returncode == 0, err
    same_files(one_process, out)
    assert sorted(s["world"]["rank"] for s in split_of(out)) == [0, 1]
