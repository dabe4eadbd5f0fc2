"""bench/parity.py: its statistics, its resume, its pairs table, and one real pair on a tiny offline model."""

import dataclasses
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from transferlab.attacks.registry import build_attack
from transferlab.eval.quantize import quantize
from transferlab.testing import TinyResNet, tiny_batch

SPEC = importlib.util.spec_from_file_location("parity", Path(__file__).parents[1] / "bench" / "parity.py")
parity = importlib.util.module_from_spec(SPEC)
sys.modules["parity"] = parity  # dataclasses look their module up by name
SPEC.loader.exec_module(parity)

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 4


# ------------------------------------------------------------------------------------------------ statistics
def test_paired_bootstrap_of_identical_outcomes_is_zero_and_a_match():
    outcomes = np.random.default_rng(0).integers(0, 2, 60)
    diff, lo, hi = parity.paired_bootstrap(outcomes, outcomes, resamples=2000, seed=3)
    assert (diff, lo, hi) == (0.0, 0.0, 0.0)
    assert parity.verdict(lo, hi) == "match"


def test_clearly_different_outcomes_differ_and_the_interval_is_seeded():
    ours = np.ones(50, dtype=bool)
    theirs = np.zeros(50, dtype=bool)
    theirs[:5] = True  # ours − theirs = 0.9
    diff, lo, hi = parity.paired_bootstrap(ours, theirs, resamples=2000, seed=1)
    assert diff == pytest.approx(0.9) and 0.75 < lo <= diff <= hi <= 1.0
    assert parity.verdict(lo, hi) == "differs"
    assert parity.paired_bootstrap(ours, theirs, 2000, seed=1) == (diff, lo, hi)
    # the pairing matters: the same rates with discordant images only widen the interval, not move it
    _, lo_mixed, hi_mixed = parity.paired_bootstrap(np.r_[np.ones(25), np.zeros(25)],
                                                    np.r_[np.zeros(25), np.ones(25)], 2000, seed=1)
    assert lo_mixed < 0 < hi_mixed


def test_a_difference_is_explained_by_the_pairs_known_variant_or_called_unexplained():
    known = dataclasses.replace(parity.PAIRS[0], known="their kernel is wider")
    unknown = dataclasses.replace(parity.PAIRS[0], known=None)
    assert parity.explanation(known, "differs") == "their kernel is wider"
    assert parity.explanation(unknown, "differs") == "unexplained"
    assert parity.explanation(unknown, "match") == ""
    assert "their kernel is wider" in parity.explanation(known, "match")  # never hidden


# ------------------------------------------------------------------------------------------------- the table
def test_every_pair_names_a_real_class_and_keywords_it_accepts():
    for setting in parity.make_settings(Path("/nonexistent")).values():
        for pair in parity.PAIRS:
            assert pair.library in parity.LIBRARIES, pair
            lib = pytest.importorskip(pair.library)
            cls = getattr(lib, pair.cls)
            if setting.name in pair.only:
                continue
            reason = parity.readiness(pair, setting)
            if reason is not None:  # our component is not there yet: its row is skipped, saying so
                assert "not built yet" in reason or pair.library in reason, (pair, reason)
                continue
            kwargs = parity.their_kwargs(pair, setting, parity.build_ours(pair, setting))
            inspect.signature(cls).bind(None, **kwargs)  # the model, then only keywords it takes
            assert kwargs["eps"] == setting.eps and kwargs["steps"] == setting.steps


def test_a_missing_component_is_skipped_with_a_clear_message(tmp_path):
    pytest.importorskip("torchattack")
    pair = dataclasses.replace(parity.PAIRS[0], attack="nope", method="mi+no_such_component")
    prep = tiny_prepared()
    assert "not built yet" in parity.readiness(pair, prep.setting)
    results = parity.run_pairs(prep, [pair], tmp_path, progress=False, log=lambda _: None)
    assert results.rows.empty
    assert "not built yet" in results.manifest["skipped"]["tiny/nope/torchattack"]


# ---------------------------------------------------------------------------------------------------- resume
def tiny_prepared(steps: int = STEPS) -> "parity.Prepared":
    x, y = tiny_batch(6)
    setting = parity.Setting(name="tiny", data=None, source="src", targets=("src", "other"), eps=EPS,
                             alpha=ALPHA, steps=steps, limit=6, resolution=16, num_classes=5, batch=4,
                             their_inputs=64)
    source, other = TinyResNet(seed=0), TinyResNet(seed=1)
    return parity.Prepared(setting, x, y, [f"img{i}" for i in range(6)], source,
                           {"src": source, "other": other}, pool=tiny_batch(6, seed=9)[0])


def test_a_second_call_recomputes_nothing_and_a_changed_setting_recomputes(tmp_path, monkeypatch):
    pytest.importorskip("torchattack")
    pytest.importorskip("torchattacks")
    pairs = [p for p in parity.PAIRS if p.attack in ("pgd", "mi")]
    calls = {"ours": 0, "theirs": 0}
    real_ours, real_theirs = parity.attack_ours, parity.attack_theirs

    def counting(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(parity, "attack_ours", counting("ours", real_ours))
    monkeypatch.setattr(parity, "attack_theirs", counting("theirs", real_theirs))
    prep = tiny_prepared()
    results = parity.run_pairs(prep, pairs, tmp_path, progress=False, log=lambda _: None,
                               extra={"provenance": "the bench that computed"})
    assert calls == {"ours": 2, "theirs": 4}  # ours once per method, shared by both libraries' rows
    assert all(meta["computed"]["git"] for meta in results.manifest["rows"].values())
    rows = results.rows
    assert len(rows) == len(pairs) * 2 and set(rows.verdict) <= {"match", "differs"}
    # a target counts the images it classifies correctly clean
    other_ok = int((TinyResNet(seed=1)(prep.x).argmax(1) == prep.y).sum())
    assert set(rows[rows.target == "other"].n) == {other_ok} and set(rows[rows.target == "src"].n) == {6}
    # the same loop as torchattack's IFGSM, the same bytes; torchattacks' PGD too at float64
    assert results.manifest["rows"]["tiny/pgd/torchattack"]["same_bytes"] == 1.0
    assert {"parity.csv", "parity.md", "parity.manifest.json"} <= {p.name for p in tmp_path.iterdir()}
    before = (tmp_path / "parity.csv").read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished row was recomputed")

    monkeypatch.setattr(parity, "attack_ours", refuse)
    monkeypatch.setattr(parity, "attack_theirs", refuse)
    again = parity.run_pairs(tiny_prepared(), pairs, tmp_path, progress=False, log=lambda _: None,
                             extra={"provenance": "a bench that computed nothing"})
    assert len(again.rows) == len(rows)
    assert (tmp_path / "parity.csv").read_bytes() == before
    assert parity.Results(tmp_path).manifest["provenance"] == "the bench that computed"

    monkeypatch.setattr(parity, "attack_ours", real_ours)
    monkeypatch.setattr(parity, "attack_theirs", real_theirs)
    changed = parity.run_pairs(tiny_prepared(steps=2), pairs[:1], tmp_path, progress=False,
                               log=lambda _: None)
    assert len(changed.rows) == 2  # the old rows were for 4 steps: dropped, and only the chosen pair redone
    assert changed.manifest["settings"]["tiny"]["steps"] == 2


def test_a_held_rows_explanation_follows_the_pairs_current_text_without_recomputing(tmp_path, monkeypatch):
    pytest.importorskip("torchattack")
    pair = next(p for p in parity.PAIRS if p.attack == "pgd" and p.library == "torchattack")
    parity.run_pairs(tiny_prepared(), [pair], tmp_path, progress=False, log=lambda _: None)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished row was recomputed")

    monkeypatch.setattr(parity, "attack_ours", refuse)
    monkeypatch.setattr(parity, "attack_theirs", refuse)
    noted = dataclasses.replace(pair, known="a documented difference")
    results = parity.run_pairs(tiny_prepared(), [noted], tmp_path, progress=False, log=lambda _: None)
    expected = {parity.explanation(noted, v) for v in results.rows.verdict}
    assert set(results.rows.explanation) == expected and "a documented difference" in next(iter(expected))
    assert "a documented difference" in (tmp_path / "parity.md").read_text()


def test_a_row_made_under_a_former_default_is_recomputed(tmp_path, monkeypatch):
    """DI's default changed ('resample' -> 'original'): a held `di` row recorded before says nothing of the
    variant, so it is not taken as the new default's."""
    pytest.importorskip("torchattacks")
    pair = next(p for p in parity.PAIRS if p.attack == "di" and p.library == "torchattacks")
    setting = tiny_prepared().setting
    assert parity.ours_description(pair, setting).endswith('defaults {"di": {"variant": "original"}}')
    parity.run_pairs(tiny_prepared(), [pair], tmp_path, progress=False, log=lambda _: None)
    results = parity.Results(tmp_path)
    results.use_setting(setting, 0)
    assert results.finished(setting, pair)
    key = "/".join((setting.name, *pair.key))
    results.manifest["rows"][key]["ours"] = 'di {"di": {"p": 0.5}}'  # as recorded before the change
    assert not results.finished(setting, pair)
    resample = next(p for p in parity.PAIRS if p.attack == "di_resample" and p.library == "torchattacks")
    assert "defaults" not in parity.ours_description(resample, setting)


# ------------------------------------------------------------------------------------------- one real pair
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pgd_equals_torchattack_ifgsm_byte_for_byte(dtype):
    """The same arithmetic in the same order (δ + α·sign ∇, clamp to ε, clamp x + δ to [0,1]): their
    batch-mean loss only scales the gradient by 1/B, which leaves its signs, so the images are identical."""
    torchattack = pytest.importorskip("torchattack")
    model = TinyResNet().to(dtype)
    x, y = tiny_batch(5)
    x = x.to(dtype)
    ours = build_attack("pgd", eps=EPS, alpha=ALPHA, steps=STEPS).run(model, x, y)
    ifgsm = torchattack.IFGSM(model, normalize=None, device=x.device, eps=EPS, alpha=ALPHA, steps=STEPS)
    theirs = ifgsm(x, y)
    assert torch.equal(ours, theirs.detach())


def test_pgd_near_equals_torchattacks_pgd_and_equals_it_after_8_bit_quantisation():
    """torchattacks steps the image, not δ ((x + δ + α·s) − x, then x + clamp(·)): in float32 that rounds
    differently from δ + α·s in the last bit (at most one ulp of a pixel per step), which the 8-bit
    quantisation removes. In float64 the two agree exactly on this model."""
    torchattacks = pytest.importorskip("torchattacks")
    model = TinyResNet().float()
    x, y = tiny_batch(5)
    x = x.float()
    ours = build_attack("pgd", eps=EPS, alpha=ALPHA, steps=STEPS).run(model, x, y)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False)(x, y)
    assert (ours - theirs).abs().max() <= 1e-6
    assert torch.equal(parity.to_bytes(x, ours, EPS), parity.to_bytes(x, theirs, EPS))
    assert torch.equal(quantize(x, ours, EPS), quantize(x, theirs, EPS))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ni_equals_torchattacks_nifgsm_up_to_rounding(dtype):
    """The ni/torchattacks row compares one procedure (look-ahead x' + μα·g, unclipped; g ← μg + ∇/mean|∇|):
    in float64 the images agree to rounding, and after 8-bit quantisation byte for byte; in float32 too on
    this model (at 224 px the sign step amplifies the last-bit differences of their image stepping)."""
    torchattacks = pytest.importorskip("torchattacks")
    model = TinyResNet().to(dtype)
    x, y = tiny_batch(5)
    x = x.to(dtype)
    ours = build_attack("ni", eps=EPS, alpha=ALPHA, steps=STEPS).run(model, x, y)
    theirs = torchattacks.NIFGSM(model, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0)(x, y)
    assert (ours - theirs).abs().max() <= (1e-12 if dtype == torch.float64 else 1e-6)
    assert torch.equal(quantize(x, ours, EPS), quantize(x, theirs, EPS))


def test_fia_ports_equals_torchattack_fia_byte_for_byte_on_the_same_masks(monkeypatch):
    """The fia_ports row's differences are mask-draw noise, not procedure: given the same N masks (theirs from
    torch's global RNG one batch at a time, ours copy-major from per-image streams), the images agree."""
    torchattack = pytest.importorskip("torchattack")
    from transferlab.attacks.feature_importance import FeatureImportance

    model = TinyResNet()
    x, y = tiny_batch(5)
    g = torch.Generator().manual_seed(3)
    masks = [(torch.rand(x.shape, generator=g, dtype=x.dtype) < 0.7).to(x.dtype) for _ in range(6)]
    monkeypatch.setattr(FeatureImportance, "masks", lambda self, ctx: torch.cat(masks))
    ours = build_attack("mi+fia", {"fia": {"layer": "block", "copies": 6, "variant": "ports"}},
                        eps=EPS, alpha=ALPHA, steps=STEPS).run(model, x, y)
    fia = torchattack.FIA(model, normalize=None, device=x.device, eps=EPS, alpha=ALPHA, steps=STEPS,
                          feature_layer_cfg="block", num_ens=6, drop_rate=0.3, decay=1.0)
    theirs_masks = iter(masks)
    fia.drop_pixels = lambda images: (images * next(theirs_masks)).requires_grad_(True)
    assert torch.equal(ours, fia(x, y).detach())
    # and the official variant (keep 0.9, logit score) is a different attack on the same masks
    official = build_attack("mi+fia", {"fia": {"layer": "block", "copies": 6}},
                            eps=EPS, alpha=ALPHA, steps=STEPS).run(model, x, y)
    assert not torch.equal(official, ours)


NEIGHBOUR_SEED = 7


def their_neighbours(draw, n: int) -> list[torch.Tensor]:
    """The neighbour offsets a library's loop draws from torch's global RNG after seeding: `draw()` (their
    exact call, which fixes how much of the stream each draw consumes) n times per step, as our copy-major
    (n·B, C, H, W) block per step."""
    torch.manual_seed(NEIGHBOUR_SEED)
    return [torch.cat([draw() for _ in range(n)]) for _ in range(STEPS)]


def test_gra_value_equals_torchattack_gra_byte_for_byte_on_the_same_neighbours(monkeypatch):
    """The gra_value row's one differing target is neighbour-draw noise: with theirs' U(±βε) draws (torch's
    global RNG, N per step) given to ours, the images agree; the official 'sign' indicator differs."""
    torchattack = pytest.importorskip("torchattack")
    from transferlab.attacks.gradient_relevance import GradientRelevance

    model = TinyResNet()
    x, y = tiny_batch(5)
    n, beta = 5, 3.5
    offsets = their_neighbours(lambda: torch.empty_like(x).uniform_(-beta * EPS, beta * EPS), n)

    def run_ours(indicator: str) -> torch.Tensor:
        draws = iter(offsets)
        monkeypatch.setattr(GradientRelevance, "neighbour_offsets", lambda self, ctx: next(draws))
        return build_attack("mi+gra", {"gra": {"neighbours": n, "indicator": indicator}},
                            eps=EPS, alpha=ALPHA, steps=STEPS).run(model, x, y)

    torch.manual_seed(NEIGHBOUR_SEED)
    theirs = torchattack.GRA(model, normalize=None, device=x.device, eps=EPS, alpha=ALPHA, steps=STEPS,
                             beta=beta, eta=0.94, num_neighbors=n, decay=1.0)(x, y).detach()
    assert torch.equal(run_ours("value"), theirs)
    assert not torch.equal(run_ours("sign"), theirs)


def test_vmi_equals_torchattack_vmifgsm_byte_for_byte_on_the_same_neighbours(monkeypatch):
    """VMI's parity differences are neighbour-draw noise: given theirs' U(±βε) neighbours (torch's global RNG,
    N per step after each step's gradient), ours makes the same images."""
    torchattack = pytest.importorskip("torchattack")
    from transferlab.attacks.variance_tuning import VarianceTuning

    model = TinyResNet()
    x, y = tiny_batch(5)
    n, beta = 5, 1.5
    offsets = iter(their_neighbours(lambda: torch.randn_like(x).uniform_(-beta * EPS, beta * EPS), n))
    monkeypatch.setattr(VarianceTuning, "neighbour_offsets", lambda self, ctx: next(offsets))
    ours = build_attack("vmi", {"vt": {"neighbours": n, "beta": beta}}, eps=EPS, alpha=ALPHA,
                        steps=STEPS).run(model, x, y)
    torch.manual_seed(NEIGHBOUR_SEED)
    theirs = torchattack.VMIFGSM(model, normalize=None, device=x.device, eps=EPS, alpha=ALPHA, steps=STEPS,
                                 beta=beta, n=n, decay=1.0)(x, y).detach()
    assert torch.equal(ours, theirs)


def test_a_clone_elsewhere_keeps_the_rows_and_a_new_memory_format_recomputes(tmp_path):
    """The shared folder's location is not a parameter of a row (the committed manifest holds this machine's
    absolute paths); the models' memory format is, except the default, which older rows ran in."""
    def setting(shared: str, **extra) -> "parity.Setting":
        return parity.Setting(name="s", data={"kind": "folder", "root": f"{shared}/data/imgs"}, source="a",
                              targets=("a", "b"), eps=EPS, alpha=ALPHA, steps=STEPS, limit=4, resolution=16,
                              num_classes=5, weights_dir=f"{shared}/weights/c", **extra)

    assert "memory_format" not in setting("/x").describe()
    results = parity.Results(tmp_path)
    results.rows = pd.DataFrame([{"setting": "s", "attack": "pgd", "library": "torchattack",
                                  "verdict": "match"}], columns=parity.COLUMNS + parity.EXTRA_COLUMNS)
    assert results.use_setting(setting("/work/shared")) == 0
    assert results.use_setting(setting("/elsewhere/shared")) == 0 and len(results.rows) == 1
    assert results.use_setting(setting("/elsewhere/shared", memory_format="channels_last")) == 1
    assert results.rows.empty


def test_a_second_bench_into_the_same_out_is_refused_before_it_writes(tmp_path, capsys):
    """Each bench holds the rows it loaded and rewrites parity.csv after every row: two at once into one
    --out would drop each other's rows, so the second is refused, naming the holder."""
    from transferlab.rundir.lock import RunLock

    with RunLock(tmp_path, scope="parity", command="python bench/parity.py (the first)"):
        code = parity.main(["--setting", "cifar", "--attacks", "pgd", "--out", str(tmp_path),
                            "--shared", str(tmp_path / "absent")])
    assert code == 2
    assert "the first" in capsys.readouterr().err
    assert not (tmp_path / "parity.csv").exists()


def test_two_benches_side_by_side_merge_into_the_table_one_bench_writes(tmp_path, monkeypatch, capsys):
    """Disjoint --attacks into two --out directories, then --merge: the same rows (timings aside) as one
    bench computing them all; a setting computed with other parameters is refused, naming it."""
    pytest.importorskip("torchattack")
    pairs = [p for p in parity.PAIRS if p.attack in ("pgd", "mi") and p.library == "torchattack"]
    quiet = {"progress": False, "log": lambda _: None}
    parity.run_pairs(tiny_prepared(), pairs, tmp_path / "one", **quiet)
    parity.run_pairs(tiny_prepared(), pairs[:1], tmp_path / "a",
                     extra={"provenance": "bench a", "threads": 1}, **quiet)
    parity.run_pairs(tiny_prepared(), pairs[1:], tmp_path / "b",
                     extra={"provenance": "bench b", "threads": 2}, **quiet)
    assert parity.main(["--out", str(tmp_path / "a"), "--merge", str(tmp_path / "b")]) == 0
    assert "1 rows merged (tiny/mi/torchattack)" in capsys.readouterr().out
    timing = ["seconds_ours", "seconds_theirs"]
    one = pd.read_csv(tmp_path / "one" / "parity.csv").drop(columns=timing)
    merged = pd.read_csv(tmp_path / "a" / "parity.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(merged, one)
    manifest = parity.Results(tmp_path / "a").manifest
    assert set(manifest["rows"]) == {"tiny/pgd/torchattack", "tiny/mi/torchattack"}
    assert manifest["merged"][0]["rows"] == ["tiny/mi/torchattack"]
    # the target keeps its own bench's record and takes the other's with its rows
    assert (manifest["provenance"], manifest["threads"]) == ("bench a", 1)
    assert (manifest["merged"][0]["provenance"], manifest["merged"][0]["threads"]) == ("bench b", 2)
    assert "| mi | torchattack |" in (tmp_path / "a" / "parity.md").read_text()

    noted = [dataclasses.replace(p, known="a documented difference") if p.attack == "mi" else p
             for p in parity.PAIRS]
    monkeypatch.setattr(parity, "PAIRS", noted)  # a pair's text changed after its rows were made
    assert parity.main(["--out", str(tmp_path / "a"), "--merge", str(tmp_path / "b")]) == 0
    rows = pd.read_csv(tmp_path / "a" / "parity.csv").set_index("attack")
    assert rows.explanation.loc["mi"].str.contains("a documented difference").all()
    assert not rows.explanation.loc["pgd"].fillna("").str.contains("a documented difference").any()

    parity.run_pairs(tiny_prepared(steps=2), pairs[1:], tmp_path / "c", **quiet)
    before = (tmp_path / "a" / "parity.csv").read_bytes()
    assert parity.main(["--out", str(tmp_path / "a"), "--merge", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "'tiny' was computed with other parameters" in err and "(steps differ)" in err
    assert (tmp_path / "a" / "parity.csv").read_bytes() == before


def test_a_bench_that_computes_nothing_keeps_the_record_of_the_one_that_did(tmp_path, monkeypatch):
    """`python bench/parity.py` over a finished --out prints the table and computes nothing: the manifest
    keeps the args, versions and provenance of the bench that computed its rows, and each row its stamp."""
    pytest.importorskip("torchattack")
    prep = tiny_prepared()
    prep = dataclasses.replace(prep, setting=dataclasses.replace(prep.setting, name="cifar"))
    monkeypatch.setattr(parity, "make_settings", lambda shared: {"cifar": prep.setting})
    monkeypatch.setattr(parity, "prepare", lambda setting, progress=True: prep)
    argv = ["--setting", "cifar", "--attacks", "pgd", "--out", str(tmp_path), "--no-progress"]
    assert parity.main([*argv, "--seed", "0"]) == 0
    first = json.loads((tmp_path / "parity.manifest.json").read_text())
    assert first["args"]["attacks"] == "pgd" and first["rows"]["cifar/pgd/torchattack"]["computed"]["at"]
    monkeypatch.setattr(parity, "attack_ours", lambda *a, **k: pytest.fail("a finished row was recomputed"))
    assert parity.main([*argv, "--resamples", "500"]) == 0  # the same rows, another command line
    again = json.loads((tmp_path / "parity.manifest.json").read_text())
    assert again["args"] == first["args"] and again["provenance"] == first["provenance"]
    assert again["rows"] == first["rows"]
