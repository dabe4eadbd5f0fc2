"""`transferlab report DIR [DIR ...]`: check that the shards of one run are complete and write its tables.

With one directory (shards that shared `--out`, or a one-process run) the tables are written in place.
With several (each shard had its own `--out`), they must hold shards of the same run (same plan: every
job's settings, the images, targets and seed; the same eligible images and weights); their files are
gathered into `--out` (hard links where the filesystem allows, else copies) so that it becomes the
directory a one-process run would have written, and the tables are written there. Everything is checked
before anything is written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from transferlab.eval.records import assemble_records
from transferlab.eval.report import IncompleteRun, _plan_records, check_complete, write_reports
from transferlab.io import remove_stale_temporaries
from transferlab.rundir import (
    LOCKS,
    MARKER,
    RunDir,
    RunDirError,
    RunLock,
    check_output_dir,
    is_run,
    jobs_of,
    make_dir,
    read_marker,
)
from transferlab.rundir.layout import ordered_config

__all__ = ["IncompleteRun", "report_dirs"]


def report_dirs(dirs: list[Path], out: Path | None = None) -> dict[str, Any]:
    """Report the run whose shards `dirs` hold; into `out` (default: the first directory)."""
    if not dirs:
        raise RunDirError("report: name at least one run directory")
    for d in dirs:
        if not d.is_dir() or not is_run(d):
            raise RunDirError(f"{d} is not a transferlab run directory (no {MARKER})")
    dirs = list(dict.fromkeys(Path(d).resolve() for d in dirs))
    if out is None and len(dirs) > 1:
        raise RunDirError(
            "report of several directories: give --out, the directory to gather them into (it becomes "
            "the directory a one-process run would have written)"
        )
    target = Path(out).resolve() if out is not None else dirs[0]
    runs = [RunDir(d) for d in dirs]
    plan, _ = _plan_records(runs[:1], None)  # the first directory's run is the reference
    _, writers = _plan_records(runs, plan)
    cfg = ordered_config(writers[0])
    _check_same_run(runs, plan)
    check_complete(runs, cfg, writers)
    if target not in dirs:
        check_output_dir(target)
    make_dir(target)
    with RunLock(target):
        remove_stale_temporaries(target, skip=(LOCKS,))
        into = RunDir(target)
        for run in runs:
            if run.root != target:
                _gather(run, into, cfg, plan)
        _, writers = _plan_records([into], plan)
        check_complete([into], cfg, writers)  # a stale file already in the target would shadow a shard's
        return write_reports(into, cfg, assemble_records(into, cfg), writers)


def _check_same_run(runs: list[RunDir], plan: str) -> None:
    """Every directory holds a writer of `plan`, the same identity and the same eligible images."""
    first = runs[0]
    first_writers = [r for r in first.read_shards().values() if r.get("plan") == plan]
    cfg = ordered_config(first_writers[0]) if first_writers else None
    identity = (read_marker(first.root) or {}).get("identity")
    eligible = first.read_eligible()
    for run in runs:
        writers = list(run.read_shards().values())
        if not any(w.get("plan") == plan for w in writers):
            other = max(writers, key=lambda w: w.get("updated", ""), default=None)
            diff = _config_difference(cfg, (other or {}).get("config")) if cfg else "unknown"
            raise RunDirError(
                f"{run.root} holds no shard of the same run as {first.root}: it was run with {diff}. "
                "Report the directories of one run together"
            )
        mine = (read_marker(run.root) or {}).get("identity")
        if identity and mine and mine != identity:
            raise RunDirError(f"{run.root} and {first.root} record other data settings or weights (run.json)")
        theirs = run.read_eligible()
        if eligible is None or theirs is None or not theirs.equals(eligible):
            raise RunDirError(
                f"{run.root} and {first.root} attacked different eligible images (eligible.csv differs): "
                "their clean predictions disagree (other weights, data or hardware); they are not shards "
                "of one run"
            )


def _config_difference(a: dict | None, b: dict | None, prefix: str = "") -> str:
    """The first few settings in which two resolved configs differ, as 'key: x vs y'."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return f"{prefix or 'config'}: {a!r} vs {b!r}"
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in ("description", "device", "reference"):
            continue
        x, y = a.get(key), b.get(key)
        if x != y:
            path = f"{prefix}.{key}" if prefix else key
            diffs.append(_config_difference(x, y, path) if isinstance(x, dict) and isinstance(y, dict)
                         else f"{path}: {y!r} there vs {x!r} here")
    return "; ".join(diffs[:4]) or "the same settings but other weights"


def _link(src: Path, dst: Path) -> None:
    """dst becomes src's bytes (a hard link when possible), written atomically."""
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _gather(run: RunDir, into: RunDir, cfg: dict, plan: str) -> None:
    """Bring a shard directory's files of `plan` into `into` (files already there are kept)."""
    for name in (MARKER, "clean.csv", "eligible.csv"):
        if (run.root / name).exists():
            _link(run.root / name, into.root / name)
    for png in sorted((run.root / "clean").glob("*.png")):
        _link(png, into.clean_png(png.stem))
    for job in jobs_of(cfg):
        for folder in (run.job_dir(job.attack, job.source), run.root / "evals" / job.attack / job.source,
                       run.root / "steps" / job.attack / job.source):
            if not folder.is_dir():
                continue
            for f in sorted(folder.rglob("*")):
                if f.is_file() and not f.name.endswith(".tmp"):
                    _link(f, into.root / f.relative_to(run.root))
    for scope, writer in run.read_shards().items():
        if writer.get("plan") == plan:
            _link(run.shard_file(scope), into.shard_file(scope))
