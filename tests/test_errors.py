"""Bad inputs, kills and concurrent writers against `transferlab run`, as one table.

Each row is a command (config changes, overrides, flags), what to set up before it, the expected exit code
and a fragment of the expected message; rows marked `unchanged` also hash a folder (every path and byte)
before and after and require it untouched. Runs on the tiny offline ChannelNet models, in-process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ChannelNet, make_folder_dataset
from PIL import Image

from transferlab import cli
from transferlab.archs.cifar_resnet import cifar_resnet
from transferlab.experiment import Experiment
from transferlab.rundir import RunLock, RunLockedError

SEEDS = {"tiny_a": 0, "tiny_b": 1, "tiny_c": 2}


@pytest.fixture
def models(monkeypatch):
    """Tiny models by name; `SEEDS` may be changed by a row to stand for other weights. Other names load
    from the zoo as usual (used by the checkpoint rows)."""
    seeds = dict(SEEDS)
    real = Experiment.load_single

    def model(self, name):
        if name not in seeds:
            return real(self, name)
        if name not in self._models:
            self._models[name] = ChannelNet(seed=seeds[name])
        return self._models[name]

    monkeypatch.setattr(Experiment, "load_single", model)
    return seeds


def base_config(tmp_path: Path) -> dict:
    root = tmp_path / "images"
    if not root.exists():
        make_folder_dataset(root)
    return {
        "name": "tiny",
        "seed": 3,
        "device": "cpu",
        "data": {"kind": "folder", "root": str(root), "resolution": 16, "crop_pct": 1.0},
        "models": {"sources": ["tiny_a"], "targets": ["tiny_a", "tiny_b"]},
        "attack_defaults": {"eps": 8, "alpha": 2, "steps": 3, "batch_size": 4},
        "attacks": {"pgd": {"method": "pgd", "random_start": True}},
    }


def write(tmp_path: Path, cfg: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def tree_hash(path: Path) -> str:
    """Digest of every path (relative) and file's bytes under `path` (or of its absence)."""
    digest = hashlib.sha256()
    if not path.exists():
        return "absent"
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    for item in sorted(path.rglob("*")):
        digest.update(str(item.relative_to(path)).encode())
        if item.is_file():
            digest.update(item.read_bytes())
    return digest.hexdigest()


def finished_run(tmp_path: Path, out: Path) -> None:
    assert (
        cli.main(
            ["run", str(write(tmp_path, base_config(tmp_path), "first.yaml")), "--out", str(out), "--quiet"]
        )
        == 0
    )


def save_checkpoint(tmp_path: Path, kind: str) -> str:
    """A checkpoint file for cifar10_resnet20 that is broken in the way `kind` says."""
    path = tmp_path / f"resnet20_{kind}.pt"
    if kind == "wrong_arch":
        torch.save(ChannelNet().state_dict(), path)
    elif kind == "truncated":
        torch.save(cifar_resnet(20, "A").state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "not_zip":
        path.write_bytes(bytes(range(256)) * 64)
    elif kind == "text":
        path.write_text("these are not weights\n")
    return str(path)


@dataclass
class Case:
    id: str
    config: dict = field(default_factory=dict)  # dotted key -> value, applied to the base config
    args: list[str] = field(default_factory=list)  # after `run CONFIG`; {out} and {tmp} are filled in
    prepare: Callable[[Path, Path], None] | None = None  # (tmp_path, out) -> None, before the command
    code: int = 2
    message: str = ""
    unchanged: str | None = "out"  # folder that must stay byte-identical: out | victim | None
    out: str = "out"  # --out relative to tmp_path (None: no --out, the config's name decides)
    check: Callable[[Path, Path, str], None] | None = None  # (tmp_path, out, stderr) -> None, after


def _apply(cfg: dict, changes: dict) -> dict:
    for key, value in changes.items():
        node = cfg
        *head, last = key.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return cfg


# ---------------------------------------------------------------- set-ups


def foreign_folder(tmp_path: Path, out: Path) -> None:
    out.mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work\n")
    (out / "figures").mkdir()
    (out / "figures" / "f1.pdf").write_bytes(b"%PDF-1.4 ...")


def victim(tmp_path: Path, out: Path) -> None:
    foreign_folder(tmp_path, tmp_path / "victim")


def nips17(ids: list[str]) -> Callable[[Path, Path], None]:
    def prepare(tmp_path: Path, out: Path) -> None:
        root = tmp_path / "nips"
        (root / "images").mkdir(parents=True)
        rows = ["ImageId,TrueLabel,TargetClass"]
        for k, image_id in enumerate(ids):
            rows.append(f"{image_id},{k % 3 + 1},1")
            if "/" not in image_id:
                array = np.full((16, 16, 3), 60, np.uint8)
                Image.fromarray(array).save(root / "images" / f"{image_id}.png")
        (root / "images.csv").write_text("\n".join(rows) + "\n")

    return prepare


def duplicate_file(tmp_path: Path, out: Path) -> None:
    base_config(tmp_path)
    Image.open(tmp_path / "images" / "class0" / "0000.png").save(tmp_path / "images" / "class0" / "0000.bmp")


def run_then(change: Callable[[Path, Path], None] | None = None) -> Callable[[Path, Path], None]:
    def prepare(tmp_path: Path, out: Path) -> None:
        finished_run(tmp_path, out)
        if change is not None:
            change(tmp_path, out)

    return prepare


def held_lock(tmp_path: Path, out: Path) -> None:
    finished_run(tmp_path, out)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (out / ".locks" / "run.lock").write_text(
        json.dumps(
            {
                "pid": sleeper.pid,
                "host": socket.gethostname(),
                "since": "now",
                "command": "transferlab run other",
            }
        )
    )
    held_lock.process = sleeper


def plugin_breaks_on_import(tmp_path: Path, out: Path) -> None:
    pkg = tmp_path / "plug" / "broken_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "attack.py").write_text("raise RuntimeError('oops in the plug-in')\n")
    sys.path.insert(0, str(tmp_path / "plug"))


def corrupt_adv(tmp_path: Path, out: Path) -> None:
    finished_run(tmp_path, out)
    png = sorted((out / "adv" / "pgd" / "tiny_a").glob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:40])


def tampered_adv(tmp_path: Path, out: Path) -> None:
    finished_run(tmp_path, out)
    png = sorted((out / "adv" / "pgd" / "tiny_a").glob("*.png"))[1]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(png)


def leftover_tmp(tmp_path: Path, out: Path) -> None:
    finished_run(tmp_path, out)
    (out / "adv" / "pgd" / "tiny_a" / ".class0_0000.png.x1y2z3.tmp").write_bytes(b"half")
    (out / ".records.csv.abc123.tmp").write_bytes(b"half")


def other_weights(tmp_path: Path, out: Path) -> None:
    finished_run(tmp_path, out)
    SEEDS_NOW["tiny_b"] = 7  # the next command's tiny_b has other weights


def disk_full(tmp_path: Path, out: Path) -> None:
    import transferlab.io as tio

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "clean.csv"))

    disk_full.monkeypatch.setattr(tio.os, "fsync", full)


SEEDS_NOW: dict[str, int] = {}


# ---------------------------------------------------------------- checks after a command


def same_as_fresh(tmp_path: Path, out: Path, err: str) -> None:
    reference = tmp_path / "reference"
    finished_run(tmp_path, reference)
    for name in ("results.csv", "records.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    for png in (reference / "adv").rglob("*.png"):
        assert png.read_bytes() == (out / png.relative_to(reference)).read_bytes(), png


def no_tmp_left(tmp_path: Path, out: Path, err: str) -> None:
    assert not list(out.rglob("*.tmp"))
    same_as_fresh(tmp_path, out, err)


def readable_modes(tmp_path: Path, out: Path, err: str) -> None:
    mask = os.umask(0)
    os.umask(mask)
    for name in ("results.csv", "manifest.json", "run.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    png = next((out / "adv").rglob("*.png"))
    assert png.stat().st_mode & 0o777 == 0o666 & ~mask


def fresh_removed_only_run_files(tmp_path: Path, out: Path, err: str) -> None:
    assert (out / "notes.txt").read_text() == "mine\n"  # not written by transferlab: kept
    assert "keeping what transferlab did not write: notes.txt" in err
    same_as_fresh(tmp_path, out, err)


def steps_in_table(tmp_path: Path, out: Path, err: str) -> None:
    table = (out / "table.md").read_text()
    assert "| pgd | pgd | linf | 8 | 2 | 2 |" in table and "attack_defaults.steps=2" in table
    assert json.loads((out / "manifest.json").read_text())["overrides"] == ["attack_defaults.steps=2"]


def manifest_has_machine_and_digests(tmp_path: Path, out: Path, err: str) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["machine"]["cpu_model"] and manifest["machine"]["isa"]
    assert "torch_cpu_capability" in manifest["machine"]
    assert set(manifest["weights"]) == {"tiny_a", "tiny_b"}
    assert all(w["digest"].startswith("state-sha256:") for w in manifest["weights"].values())
    assert (
        json.loads((out / "run.json").read_text())["identity"]["models"]["tiny_a"]
        == (manifest["weights"]["tiny_a"]["digest"])
    )


def pinned_digest_recorded(tmp_path: Path, out: Path, err: str) -> None:
    digest = hashlib.sha256((tmp_path / "resnet20_good.pt").read_bytes()).hexdigest()
    weights = json.loads((out / "manifest.json").read_text())["weights"]["cifar10_resnet20"]
    assert weights == {"path": str(tmp_path / "resnet20_good.pt"), "digest": f"sha256:{digest}"}


CASES = [
    # ---- data loss and escapes
    Case(
        "fresh-on-foreign-folder", args=["--fresh"], prepare=foreign_folder, message="not a transferlab run"
    ),
    Case("run-into-foreign-folder", prepare=foreign_folder, message="not empty and is not a transferlab run"),
    Case(
        "fresh-with-bad-data-root",
        {"data.root": "/nonexistent"},
        ["--fresh"],
        run_then(),
        message="image folder not found: /nonexistent",
    ),
    Case(
        "fresh-with-broken-weights",
        {
            "models.sources": ["cifar10_resnet20"],
            "models.targets": ["cifar10_resnet20"],
            "models.weights": {"cifar10_resnet20": "{tmp}/resnet20_text.pt"},
        },
        ["--fresh"],
        lambda t, o: (run_then()(t, o), save_checkpoint(t, "text")),
        message="resnet20_text.pt",
    ),
    Case(
        "name-escapes-runs",
        {"name": "../../victim"},
        ["--fresh"],
        victim,
        message="'name' is '../../victim'",
        unchanged="victim",
        out=None,
    ),
    Case(
        "attack-name-escapes",
        {"attacks": {"../../escaped_attack": {"method": "pgd"}}},
        message="attack name 'attacks.../../escaped_attack'",
        unchanged="tmp",
    ),
    Case(
        "image-id-escapes",
        {"data": {"kind": "nips17", "root": "{tmp}/nips", "resolution": 16}},
        prepare=nips17(["a1", "../../x"]),
        message="image id '../../x'",
    ),
    Case(
        "fresh-names-what-it-removes",
        args=["--fresh"],
        prepare=run_then(lambda t, o: (o / "notes.txt").write_text("mine\n")),
        code=0,
        message="--fresh: removing the run in",
        unchanged=None,
        check=fresh_removed_only_run_files,
    ),
    # ---- silent wrong results
    Case("other-weights-same-out", prepare=other_weights, message="other weights for tiny_b"),
    Case(
        "other-data-same-out",
        {"data.resolution": 12},
        prepare=run_then(),
        message="other data settings (data.resolution: 16 -> 12)",
    ),
    Case("second-writer-refused", prepare=held_lock, message="is in use: pid"),
    Case(
        "duplicate-image-id-in-folder", prepare=duplicate_file, message="two images have the id 'class0_0000'"
    ),
    Case(
        "duplicate-row-in-images-csv",
        {"data": {"kind": "nips17", "root": "{tmp}/nips", "resolution": 16}},
        prepare=nips17(["a1", "b2", "a1"]),
        message="image 'a1' is listed twice",
    ),
    Case(
        "random-start-string",
        {"attacks.pgd.random_start": "false"},
        message="'attacks.pgd.random_start' must be true, false or null",
    ),
    Case(
        "steps-not-integer",
        args=["attacks.pgd.steps=2.5"],
        message="'attacks.pgd.steps' must be a positive integer, got 2.5",
    ),
    Case(
        "weights-key-typo",
        {"models.weights": {"tiny_bb": "x.pt"}},
        message="'models.weights.tiny_bb' names no model of the run (did you mean 'models.weights.tiny_b'?)",
    ),
    Case(
        "eps-huge",
        args=["attack_defaults.eps=1000000000"],
        message="'attack_defaults.eps' must be in (0, 255]",
    ),
    Case(
        "eps-exponent-is-a-number",
        args=["attacks.pgd.eps=1e9"],
        message="'attacks.pgd.eps' must be in (0, 255] (1/255 steps), got 1000000000.0",
    ),
    # ---- one-line errors instead of tracebacks
    Case("eps-not-a-number", args=["attacks.pgd.eps=abc"], message="'attacks.pgd.eps' must be a number"),
    Case("steps-negative", args=["attacks.pgd.steps=-1"], message="'attacks.pgd.steps' must be a positive"),
    Case("eps-negative", args=["attacks.pgd.eps=-4"], message="'attacks.pgd.eps' must be in (0, 255]"),
    Case("alpha-zero", args=["attacks.pgd.alpha=0"], message="'attacks.pgd.alpha' must be in (0, 255]"),
    Case(
        "batch-size-zero",
        args=["attack_defaults.batch_size=0"],
        message="'attack_defaults.batch_size' must be a positive integer, got 0",
    ),
    Case("max-forward-zero", args=["attacks.pgd.max_forward=0"], message="'attacks.pgd.max_forward'"),
    Case("limit-not-integer", args=["data.limit=2.5"], message="'data.limit' must be a positive integer"),
    Case(
        "crop-out-of-range", args=["data.crop_pct=1.5"], message="'data.crop_pct' must be a number in (0, 1]"
    ),
    Case("record-every-negative", args=["eval.record_every=-2"], message="'eval.record_every'"),
    Case("override-not-mapping", args=["attacks.pgd.method.x=1"], message="is not a mapping"),
    Case(
        "model-name-with-slash",
        {"models.targets": ["tiny_a", "../tiny_b"]},
        message="model name 'models.targets[1]'",
    ),
    Case("only-names-nothing", args=["--only", ","], message="--only ',' names no attack"),
    Case("device-missing", {"device": "mps"},
         message="device 'mps' (config key 'device' or --device) is not"),
    Case("model-twice", {"models.targets": ["tiny_a", "tiny_a"]}, message="more than once"),
    *[
        Case(
            f"checkpoint-{kind}",
            {
                "models.targets": ["tiny_a", "cifar10_resnet20"],
                "models.weights": {"cifar10_resnet20": f"{{tmp}}/resnet20_{kind}.pt"},
            },
            prepare=lambda t, o, kind=kind: save_checkpoint(t, kind),
            message=f"resnet20_{kind}.pt",
        )
        for kind in ("truncated", "not_zip", "text", "wrong_arch")
    ],
    *[
        Case(
            f"weights-pin-{name}",
            {
                "models.targets": ["tiny_a", "cifar10_resnet20"],
                "models.weights": {"cifar10_resnet20": f"{{tmp}}/resnet20_good.pt#sha256={pin}"},
            },
            prepare=lambda t, o: torch.save(cifar_resnet(20, "A").state_dict(), t / "resnet20_good.pt"),
            message=message,
            code=code,
            unchanged="out" if code else None,
            check=check,
        )
        for name, pin, message, code, check in (
            ("ok", "{good_sha}", "", 0, pinned_digest_recorded),
            ("mismatch", "12345678", "checksum mismatch for", 2, None),
            ("malformed", "abc", "'models.weights.cifar10_resnet20': malformed weights pin", 2, None),
        )
    ],
    Case("out-is-a-file", prepare=lambda t, o: o.write_text("a file\n"), message="is a file"),
    Case("fresh-out-is-a-file", args=["--fresh"], prepare=lambda t, o: o.write_text("a file\n"),
         message="is a file, not a run directory; nothing removed"),
    Case(
        "out-under-a-file",
        out="afile/run",
        prepare=lambda t, o: (t / "afile").write_text("x\n"),
        message="lies under",
        unchanged="tmp",
    ),
    Case("disk-full", prepare=disk_full, message="No space left on device", unchanged=None),
    Case(
        "plugin-fails-on-import",
        {"attacks.plug": {"method": "pgd+broken_pkg.attack:Thing"}},
        prepare=plugin_breaks_on_import,
        message="'attacks.plug.method': cannot import plug-in module 'broken_pkg.attack'",
        unchanged="tmp",
    ),
    # ---- resumes that repair, and the smaller items
    Case(
        "corrupt-cached-png-recomputed",
        prepare=corrupt_adv,
        code=0,
        message="is not a readable PNG",
        unchanged=None,
        check=same_as_fresh,
    ),
    Case(
        "tampered-cached-png-recomputed",
        prepare=tampered_adv,
        code=0,
        message="lies outside the ε-ball",
        unchanged=None,
        check=same_as_fresh,
    ),
    Case(
        "killed-run-temporaries-removed",
        prepare=leftover_tmp,
        code=0,
        message="removed 2 temporary files",
        unchanged=None,
        check=no_tmp_left,
    ),
    Case("files-readable-by-others", code=0, unchanged=None, check=readable_modes),
    Case(
        "fewer-eligible-than-asked",
        args=["data.limit=1000"],
        code=0,
        message="data.limit=1000 but only",
        unchanged=None,
    ),
    Case(
        "table-shows-overridden-steps",
        args=["attack_defaults.steps=2"],
        code=0,
        unchanged=None,
        check=steps_in_table,
    ),
    Case("manifest-machine-and-digests", code=0, unchanged=None, check=manifest_has_machine_and_digests),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, models, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    SEEDS_NOW.clear()
    disk_full.monkeypatch = monkeypatch
    out = tmp_path / case.out if case.out else tmp_path / "runs" / "tiny"
    if case.prepare is not None:
        case.prepare(tmp_path, out)
    models.update(SEEDS_NOW)
    text = json.dumps(_apply(base_config(tmp_path), case.config)).replace("{tmp}", str(tmp_path))
    good = tmp_path / "resnet20_good.pt"
    if good.exists():
        text = text.replace("{good_sha}", hashlib.sha256(good.read_bytes()).hexdigest())
    config = write(tmp_path, json.loads(text))
    watched = {"out": out, "victim": tmp_path / "victim", "tmp": tmp_path, None: None}[case.unchanged]
    before = tree_hash(watched) if watched is not None else None
    capsys.readouterr()
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    argv = ["run", str(config), *(["--out", str(out)] if case.out else []), "--quiet", *args]
    try:
        code = cli.main(argv)
    finally:
        if hasattr(held_lock, "process"):
            held_lock.process.kill()
            del held_lock.process
        sys.path[:] = [p for p in sys.path if not p.endswith("plug")]
    err = capsys.readouterr().err
    assert code == case.code, err
    assert case.message in err, err
    if code == 2:
        assert err.startswith("transferlab: error: ") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
    if watched is not None:
        assert tree_hash(watched) == before, f"{watched} changed"
    if case.check is not None:
        case.check(tmp_path, out, err)


# ---------------------------------------------------------------- the lock on its own


def test_lock_scopes_and_stale_locks(tmp_path):
    run = tmp_path / "run"
    with RunLock(run, "shard-0-of-2"), RunLock(run, "shard-1-of-2"):  # shards share a directory
        with pytest.raises(RunLockedError, match="shard-0-of-2.lock"):
            RunLock(run, "run").acquire()  # the whole-run lock excludes every shard
        with pytest.raises(RunLockedError):
            RunLock(run, "shard-1-of-2").acquire()  # and a shard excludes itself
    assert not list((run / ".locks").glob("*.lock"))  # released on exit
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = {"pid": int(finished.stdout), "host": socket.gethostname(), "since": "earlier"}
    (run / ".locks" / "run.lock").write_text(json.dumps(dead))
    with RunLock(run) as lock:  # the holder is gone: the stale lock is taken over
        assert lock.took_over and lock.took_over[0]["pid"] == dead["pid"]
    elsewhere = {"pid": 1, "host": "another-host", "since": "earlier"}
    (run / ".locks" / "run.lock").write_text(json.dumps(elsewhere))
    with pytest.raises(RunLockedError, match="another-host"):  # never broken across hosts
        RunLock(run).acquire()


def test_a_waiting_lock_says_it_waits_and_goes_on_when_released(tmp_path):
    import threading

    run = tmp_path / "run"
    said: list[str] = []
    holder = RunLock(run, "select")
    holder.acquire()
    waiter = RunLock(run, "select", wait=True, poll_s=0.05, on_wait=said.append)
    thread = threading.Thread(target=waiter.acquire)
    thread.start()
    while not said:
        time.sleep(0.01)
    assert waiter.held is False
    holder.release()
    thread.join(timeout=10)
    assert waiter.held
    waiter.release()
    assert len(said) == 1
    assert "holds select.lock" in said[0] and "goes on when it is released" in said[0]
    assert "use another --out" not in said[0]  # the refusal's advice does not apply to a waiting process


def test_interaction_refuses_other_weights_and_a_held_lock(tmp_path, models, monkeypatch):
    from transferlab.interaction.measure import measure_run
    from transferlab.rundir import RunDirError

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    finished_run(tmp_path, out)

    def loader(seed):
        return lambda name, **kw: ChannelNet(seed=seed)

    with pytest.raises(RunDirError, match="are not those .* was made with"):
        measure_run(out, grid=4, model_loader=loader(9), progress=False)
    with RunLock(out, command="transferlab run other"):
        with pytest.raises(RunLockedError, match="transferlab run other"):
            measure_run(out, grid=4, model_loader=loader(SEEDS["tiny_a"]), progress=False)
    frame = measure_run(out, grid=4, model_loader=loader(SEEDS["tiny_a"]), progress=False)
    assert len(frame) and frame.value.notna().all()
