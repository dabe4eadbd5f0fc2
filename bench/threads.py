"""Processes × threads on this machine: one CIFAR run three ways, wall times and ratios in one run.

The run: configs/cpu/cifar10_resnets.yaml with data.limit=200 and pgd, mi, vmi (10 steps; 200 images in
blocks of 50, so that two shards get two blocks each), clean predictions and target evaluations included.
Launched as

  1x2  one process, 2 torch threads
  2x1  two shard processes (--shard 0/2, 1/2, one directory), 1 thread each
  2x2  two shard processes, 2 threads each (2 × 2 = 4 threads on the cores: oversubscribed)

Each arrangement starts from an empty directory and is timed from the launch to the last process's exit
(the last shard writes the tables); the arrangements are interleaved over --repeats and each ratio is the
median of the per-repeat ratios. The bytes of results.csv and records.csv are compared across the
arrangements (thread counts may change the floats' last bits; the README says where).

Run:  python bench/threads.py                 (3 repeats, about 15 min on 2 cores)
      python bench/threads.py --repeats 1 --limit 100
Writes results/bench/threads.csv, threads.txt and threads.manifest.json (or --out DIR).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transferlab.io import atomic_write_csv, atomic_write_json, atomic_write_text  # noqa: E402
from transferlab.provenance import provenance  # noqa: E402

ARRANGEMENTS = {"1x2": (1, 2), "2x1": (2, 1), "2x2": (2, 2)}


def command(out: Path, limit: int, shard: str | None, threads: int) -> list[str]:
    cmd = [
        sys.executable, "-m", "transferlab", "run", "configs/cpu/cifar10_resnets.yaml", "--out", str(out),
        "--only", "pgd,mi,vmi", "--quiet", "--threads", str(threads),
        f"data.limit={limit}", "attack_defaults.batch_size=50", "eval.record_every=0",
    ]
    return cmd + (["--shard", shard] if shard else [])


def launch(out: Path, limit: int, processes: int, threads: int) -> float:
    """Wall seconds from launch to the last process's exit."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    t0 = time.perf_counter()
    shards = [None] if processes == 1 else [f"{k}/{processes}" for k in range(processes)]
    procs = [
        subprocess.Popen(command(out, limit, s, threads), cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for s in shards
    ]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t0
    for p, err in zip(procs, errors):
        if p.returncode:
            raise SystemExit(f"a run failed ({p.args}):\n{err}")
    if not (out / "results.csv").exists():
        raise SystemExit(f"no tables in {out}: the last shard did not write them\n{errors}")
    return seconds


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--out", default=str(REPO / "results" / "bench"))
    args = parser.parse_args()
    out = Path(args.out)
    load_before = os.getloadavg()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="transferlab-threads-"))
    try:
        for repeat in range(args.repeats):
            for name, (processes, threads) in ARRANGEMENTS.items():
                run_dir = work / f"{name}-{repeat}"
                seconds = launch(run_dir, args.limit, processes, threads)
                rows.append({
                    "repeat": repeat, "arrangement": name, "processes": processes, "threads": threads,
                    "wall_s": seconds, "results_sha": digest(run_dir / "results.csv"),
                    "records_sha": digest(run_dir / "records.csv"),
                })
                print(f"repeat {repeat} {name}: {seconds:.1f} s", flush=True)
                shutil.rmtree(run_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = pd.DataFrame(rows)
    wide = table.pivot(index="repeat", columns="arrangement", values="wall_s")
    ratios = []
    for name in ("2x1", "2x2"):
        per = wide["1x2"] / wide[name]
        ratios.append({"ratio": f"1x2 / {name}", "median": statistics.median(per), "min": per.min(),
                       "max": per.max(), "repeats": len(per)})
    ratios.append({"ratio": "2x2 / 2x1", "median": statistics.median(wide["2x2"] / wide["2x1"]),
                   "min": (wide["2x2"] / wide["2x1"]).min(), "max": (wide["2x2"] / wide["2x1"]).max(),
                   "repeats": len(wide)})
    ratios = pd.DataFrame(ratios)
    same = table.groupby("arrangement").records_sha.first()
    lines = [
        f"configs/cpu/cifar10_resnets.yaml (ResNet-20 source, 7 targets), data.limit={args.limit}, "
        f"pgd+mi+vmi, 10 steps, batch 50; {os.cpu_count()} cores; load average before {load_before[0]:.2f}",
        "",
        "wall seconds per arrangement (median over repeats):",
        *[f"  {n:<4} {wide[n].median():7.1f} s   ({p} process(es) x {t} thread(s))"
          for n, (p, t) in ARRANGEMENTS.items()],
        "",
        "wall-time ratios A / B (< 1: A is faster):",
        *[f"  {r.ratio:<10} {r.median:5.2f}  [{r.min:.2f}, {r.max:.2f}] over {r.repeats} repeats"
          for r in ratios.itertuples()],
        "",
        "records.csv identical across arrangements: "
        + ("yes" if same.nunique() == 1 else f"no ({dict(same)}: thread counts change last bits)"),
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    atomic_write_csv(out / "threads.csv", table)
    atomic_write_csv(out / "threads_ratios.csv", ratios)
    atomic_write_text(out / "threads.txt", text)
    atomic_write_json(out / "threads.manifest.json", {
        "command": " ".join(sys.argv), "repeats": args.repeats, "limit": args.limit,
        "load_before": load_before, "load_after": os.getloadavg(),
        "run_command": command(Path("DIR"), args.limit, "K/N", 1), **provenance(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
