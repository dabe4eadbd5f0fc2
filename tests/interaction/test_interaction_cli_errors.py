"""`transferlab interaction` and `transferlab correlate` on bad input: one line on stderr, exit code 2, and
(for every refused call) no model loaded and not a byte of the run folder changed.

One small finished run (`transferlab run` on a tiny offline model, 3 images of 16 px, one attack) is made per
module; each row copies it, breaks the copy as its RUN placeholder says and calls ``cli.main`` in-process.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ChannelNet, make_folder_dataset

from transferlab import cli
from transferlab.config import load_config
from transferlab.experiment import Experiment
from transferlab.interaction import measure

MODELS = {"tiny_a": 0, "tiny_b": 1}
BAD = "class1_0000"  # the image a row breaks (one of the 3 the tiny run attacks)

# RUN placeholders: the finished run, or a copy of it broken in one way (see `broken_run`)
RUN, NO_RECORDS, NO_MANIFEST, MISSING = "{run}", "{no_records}", "{no_manifest}", "{missing}"
BAD_CLEAN, BAD_ADV, TRUNCATED_ADV = "{bad_clean}", "{bad_adv}", "{truncated_adv}"

I = ["interaction"]
C = ["correlate"]
RANGE_16PX = ("16x16 px", "2..16")

CASES = [
    # a valid call on the same fixture, so the refusals below are not an artefact of a broken run
    (I + [RUN, "--grid", "4"], 0, "interaction (average, grid 4, margin, other class per-coalition): 3 rows"),
    # argparse's own errors (usage line, exit 2)
    (I + [RUN, "--grid", "abc"], 2, "argument --grid: invalid int value: 'abc'"),
    # grid
    (I + [RUN, "--grid", "0"], 2, ("--grid 0 is out of range: the run's images", *RANGE_16PX)),
    (I + [RUN, "--grid", "64"], 2, ("--grid 64 is out of range: the run's images", *RANGE_16PX)),
    (I + [RUN, "--grid", "1"], 2, ("--grid 1 gives n = 1 player, but the average estimator needs pairs",
                                   *RANGE_16PX)),
    (I + [RUN, "--grid", "1", "--estimator", "pairs"], 2, "--grid 1 gives n = 1 player, but the pairs "
                                                          "estimator needs pairs"),
    # counts
    (I + [RUN, "--batch-size", "0"], 2, "--batch-size must be at least 1 (images per batched game), got 0"),
    (I + [RUN, "--batch-size", "-3"], 2, "--batch-size must be at least 1 (images per batched game), got -3"),
    (I + [RUN, "--chunk", "0"], 2, "--chunk must be at least 1 (model inputs per forward), got 0"),
    (I + [RUN, "--estimator", "pairs", "--samples", "0"], 2, "--samples must be at least 1 (samples per pair "
                                                             "and order), got 0"),
    (I + [RUN, "--players", "0"], 2, "--players must be at least 1 (rows i sampled by the average "
                                     "estimator), got 0"),
    (I + [RUN, "--grid", "4", "--players", "17"], 2, "--players 17 is more than the n = 16 players of the "
                                                     "4x4 grid: use 1..16"),
    # pairs
    (I + [RUN, "--estimator", "pairs", "--pairs", "a,b"], 2, "--pairs: a pair is 'i,j' (two cell indices), "
                                                             "got 'a,b'"),
    (I + [RUN, "--estimator", "pairs", "--pairs", "0,1,2"], 2, "--pairs: a pair is 'i,j'"),
    (I + [RUN, "--estimator", "pairs", "--grid", "4", "--pairs", "0,999"], 2,
     "--pairs 0,999: cell 999 is out of range 0..15 (n = 16 cells of the 4x4 grid)"),
    (I + [RUN, "--estimator", "pairs", "--pairs", "0,1", "3,3"], 2, "--pairs 3,3: the two cells of a pair "
                                                                    "must differ"),
    (I + [RUN, "--estimator", "pairs", "--pairs", "0"], 2, "--pairs 0: the number of random pairs must be "
                                                           "at least 1"),
    # orders
    (I + [RUN, "--estimator", "orders", "--grid", "4", "--orders", "0", "15"], 2,
     "--orders 15 is out of range: for the 4x4 grid (n = 16 players) an order m lies in 0..14 (0..n-2)"),
    (I + [RUN, "--estimator", "orders", "--grid", "4", "--orders", "-1"], 2,
     "--orders -1 is out of range: for the 4x4 grid (n = 16 players) an order m lies in 0..14"),
    # the run folder
    (I + [RUN, "--pairs", "0,1"], 2, "--pairs has no effect with --estimator average: it applies to "
                                     "--estimator pairs or orders"),
    (I + [RUN, "--estimator", "pairs", "--orders", "1"], 2, "--orders has no effect with --estimator pairs"),
    (I + [RUN, "--estimator", "orders", "--players", "4"], 2,
     "--players has no effect with --estimator orders"),
    (I + [BAD_CLEAN], 2, f"clean/{BAD}.png is not a readable PNG (not a PNG image): the run folder is "
                         "damaged"),
    (I + [BAD_ADV], 2, f"adv/pgd/tiny_a/{BAD}.png is not a readable PNG (not a PNG image)"),
    (I + [TRUNCATED_ADV], 2, f"adv/pgd/tiny_a/{BAD}.png is not a readable PNG"),
    (I + [NO_RECORDS], 2, ("has no records.csv: it is not a finished transferlab run; run "
                           "`transferlab run CONFIG --out", "` to completion first")),
    (I + [MISSING], 2, ("run folder", "not found: RUN_DIR must be a folder written by `transferlab run`")),
    (I + [NO_MANIFEST], 2, "manifest.json not found: the manifest records which weights the run used"),
    # correlate
    (C + [NO_RECORDS], 2, ("has no records.csv: it is not a finished transferlab run", "to completion, then "
                           "`transferlab interaction")),
    (C + [RUN], 2, ("has no interaction.csv: run `transferlab interaction", "first")),
    (C + [MISSING], 2, ("run folder", "not found")),
    (C + [RUN, "--bootstrap", "0"], 2, "--bootstrap must be at least 1 (bootstrap resamples over images; "
                                       "default 1000), got 0"),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """`transferlab run` to completion on a tiny offline model (as tests/test_experiment.py does)."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[str, ChannelNet] = {}
    cfg = {
        "name": "tiny", "seed": 3, "device": "cpu",
        "data": {"kind": "folder", "root": str(make_folder_dataset(root / "images", per_class=1)),
                 "resolution": 16, "crop_pct": 1.0},
        "models": {"sources": ["tiny_a"], "targets": list(MODELS)},
        "attack_defaults": {"eps": 8, "alpha": 2, "steps": 2, "batch_size": 4},
        "attacks": {"pgd": {"method": "pgd"}},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Experiment, "load_single",
                   lambda self, name: cache.setdefault(name, ChannelNet(seed=MODELS[name])))
        Experiment(load_config(path), root / "run", progress=False, config_path=str(path)).run()
    run = root / "run"
    assert (run / "records.csv").is_file() and (run / "adv" / "pgd" / "tiny_a" / f"{BAD}.png").is_file()
    return run


def broken_run(finished: Path, where: Path, kind: str) -> Path:
    """A copy of the finished run under ``where``, broken as ``kind`` says."""
    run = where / kind.strip("{}")
    if kind == MISSING:
        return run
    shutil.copytree(finished, run)
    adv = run / "adv" / "pgd" / "tiny_a" / f"{BAD}.png"
    if kind == NO_RECORDS:
        (run / "records.csv").unlink()
    elif kind == NO_MANIFEST:
        (run / "manifest.json").unlink()
    elif kind == BAD_CLEAN:
        (run / "clean" / f"{BAD}.png").write_bytes(b"not a png")
    elif kind == BAD_ADV:
        adv.write_bytes(b"not a png")
    elif kind == TRUNCATED_ADV:  # a valid header, so only the full check sees it
        adv.write_bytes(adv.read_bytes()[:-40])
    return run


def folder_digest(folder: Path) -> str:
    """Every path under the folder and every file's bytes."""
    h = hashlib.sha256()
    if not folder.exists():
        return "absent"
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        if path.is_file():
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


class Loader:
    """Stands in for the model zoo (`measure._default_loader`); records which models were loaded."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, name, weights=None, weights_dir=None, device="cpu"):
        self.calls.append(name)
        return ChannelNet(seed=MODELS[name])


def call_main(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse errors
        return int(exc.code)


@pytest.mark.parametrize(("argv", "code", "fragment"), CASES,
                         ids=[" ".join(a).replace("{", "").replace("}", "") for a, _, _ in CASES])
def test_cli_errors(argv, code, fragment, finished_run, tmp_path, monkeypatch, capsys):
    loader = Loader()
    monkeypatch.setattr(measure, "_default_loader", loader)
    kind = argv[1]
    run = broken_run(finished_run, tmp_path, kind)
    argv = [argv[0], str(run), *argv[2:], *(["--no-progress"] if argv[0] == "interaction" else [])]
    before = folder_digest(run)

    assert call_main(argv) == code
    out, err = capsys.readouterr()
    text = out if code == 0 else err
    for part in (fragment,) if isinstance(fragment, str) else fragment:
        assert part in text, f"{part!r} not in {text!r}"
    assert "Traceback" not in err
    if code == 0:
        assert loader.calls == ["tiny_a"] and (run / "interaction.csv").is_file()
        return
    if not err.startswith("usage:"):  # ours, not argparse's: exactly one line
        assert err.startswith("transferlab: error: ") and err.count("\n") == 1, err
    assert loader.calls == []  # refused before any model was loaded
    assert folder_digest(run) == before  # and before any file was written
