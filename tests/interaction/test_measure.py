"""measure_run and the CLI on a fake run directory (tiny model, 6 images, 2 attacks, 2 targets)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from transferlab.interaction import measure
from transferlab.interaction.commands import parse_pairs, register
from transferlab.interaction.estimators import average_interaction
from transferlab.interaction.games import PerturbationGame
from transferlab.interaction.measure import InteractionError, measure_run
from transferlab.io import atomic_write_json, atomic_write_png

IDS = [f"img{k:02d}" for k in range(6)]
ATTACKS = ["pgd", "ir"]
TARGETS = ["tgt_a", "tgt_b"]
SIZE = 16


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, 10))


class _Double(nn.Module):
    def forward(self, x):
        return x.double()


class Loader:
    """An injectable model loader that counts its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, name, weights=None, weights_dir=None, device="cpu"):
        self.calls.append((name, weights, weights_dir, device))
        return tiny_model()


def make_run(root) -> tuple:
    rng = np.random.default_rng(0)
    run = root / "run"
    config = {"models": {"weights_dir": "/w", "weights": {"src": "/w/src.pth"}, "sources": ["src"],
                         "targets": TARGETS}}
    atomic_write_json(run / "manifest.json", {"config": config})
    labels = rng.integers(0, 10, len(IDS))
    rows = []
    for k, image_id in enumerate(IDS):
        clean = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        atomic_write_png(run / "clean" / f"{image_id}.png", clean)
        for a, attack in enumerate(ATTACKS):
            step = 8 * (a + 1)
            noise = step * rng.choice([-1, 1], clean.shape)
            adv = np.clip(clean.astype(int) + noise, 0, 255).astype(np.uint8)
            atomic_write_png(run / "adv" / attack / "src" / f"{image_id}.png", adv)
            for target in TARGETS:
                fooled = bool(rng.random() < 0.5)
                clean_loss = float(rng.random())
                rows.append({"image_id": image_id, "label": int(labels[k]), "attack": attack, "source": "src",
                             "target": target, "clean_pred": int(labels[k]),
                             "adv_pred": int((labels[k] + fooled) % 10), "target_clean_correct": True,
                             "fooled": fooled, "clean_loss": clean_loss,
                             "adv_loss": clean_loss + float(rng.random() * 3),
                             "white_box": False})
    records = pd.DataFrame(rows)
    records["transfer_utility"] = records.adv_loss - records.clean_loss
    records.to_csv(run / "records.csv", index=False)
    return run, labels


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path)


def test_measure_average_writes_csv_and_matches_direct_game(run_dir):
    run, labels = run_dir
    loader = Loader()
    frame = measure_run(run, grid=4, model_loader=loader, batch_size=4, progress=False)
    on_disk = pd.read_csv(run / "interaction.csv", dtype={"image_id": str})
    required = ["image_id", "attack", "source", "estimator", "grid", "score", "value", "stderr",
                "evaluations"]
    assert set(required) <= set(on_disk.columns)
    assert len(frame) == len(on_disk) == 12
    assert set(frame.estimator) == {"average"} and set(frame.grid) == {4} and set(frame.score) == {"margin"}
    assert (frame.evaluations == 2 * 16 + 2).all() and frame.stderr.isna().all()
    assert loader.calls == [("src", "/w/src.pth", "/w", "cpu")]  # one load per source
    manifest = json.loads((run / "interaction.manifest.json").read_text())
    assert manifest["measured"] == 12 and manifest["evaluations"] == 12 * (2 * 16 + 2)
    assert manifest["evaluations_per_second"] > 0 and manifest["git"]

    # the value equals the estimator run directly on that image's game
    from transferlab.io import read_png

    image_id, attack = "img03", "ir"
    x = torch.from_numpy(read_png(run / "clean" / f"{image_id}.png").copy()).permute(2, 0, 1).float() / 255
    adv = torch.from_numpy(read_png(run / "adv" / attack / "src" / f"{image_id}.png").copy())
    d = adv.permute(2, 0, 1).float() / 255 - x
    want = average_interaction(PerturbationGame(tiny_model().eval(), x, d, int(labels[3]), grid=4)).value
    got = frame[(frame.image_id == image_id) & (frame.attack == attack)].value.item()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_measure_is_resumable_and_batch_independent(run_dir):
    run, _ = run_dir
    first = measure_run(run, grid=4, model_loader=Loader(), batch_size=4, progress=False)
    before = (run / "interaction.csv").read_bytes()
    loader = Loader()
    again = measure_run(run, grid=4, model_loader=loader, batch_size=1, progress=False)
    assert loader.calls == [] and (run / "interaction.csv").read_bytes() == before
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    manifest = json.loads((run / "interaction.manifest.json").read_text())
    assert manifest["measured"] == 0 and manifest["skipped"] == 12

    # a partially measured file is completed, and batch size does not change any value
    kept = pd.read_csv(run / "interaction.csv", dtype={"image_id": str}).iloc[:5]
    kept.to_csv(run / "interaction.csv", index=False)
    redo = measure_run(run, grid=4, model_loader=Loader(), batch_size=1, progress=False)
    assert len(redo) == 12
    merged = first.merge(redo, on=["image_id", "attack", "source"])
    assert np.allclose(merged.value_x, merged.value_y, rtol=1e-4, atol=1e-6)


def test_measure_pairs_and_orders(run_dir):
    run, _ = run_dir
    pairs = measure_run(run, grid=4, estimator="pairs", pairs=[(0, 1), (2, 9)], samples=6,
                        model_loader=Loader(), progress=False)
    assert len(pairs) == 12 * 2 and set(zip(pairs.i, pairs.j, strict=True)) == {(0, 1), (2, 9)}
    assert (pairs.evaluations == 24).all() and pairs.stderr.notna().all()
    orders = measure_run(run, grid=4, estimator="orders", pairs=1, orders=[0, 7, 14], samples=3,
                         model_loader=Loader(), progress=False)
    assert len(orders) == 12 * 3 and sorted(orders.order.unique()) == [0, 7, 14]
    # both settings now live side by side in the file
    table = pd.read_csv(run / "interaction.csv")
    assert len(table) == 24 + 36 and table.setting.nunique() == 2


def test_default_grid_and_bad_arguments(run_dir):
    run, _ = run_dir
    frame = measure_run(run, model_loader=Loader(), progress=False, batch_size=6)
    assert set(frame.grid) == {8} and (frame.evaluations == 2 * 64 + 2).all()  # 16-px images → 8×8
    with pytest.raises(ValueError, match="estimator"):
        measure_run(run, estimator="nope", model_loader=Loader())
    with pytest.raises(ValueError, match="score"):
        measure_run(run, score="nope", model_loader=Loader())


def test_end_to_end_measure_and_correlate(run_dir):
    from transferlab.eval.correlation import correlate_run

    run, _ = run_dir
    measure_run(run, grid=4, model_loader=Loader(), progress=False)
    out = correlate_run(run, n_boot=50, seed=0)
    corr = pd.read_csv(run / "correlation.csv")
    assert list(corr.columns[:9]) == ["target", "source", "attack", "outcome", "method", "r", "ci_low",
                                      "ci_high", "n"]
    assert set(corr.target) == set(TARGETS) and set(corr.attack) == {"all", *ATTACKS}
    assert set(corr.outcome) == {"transfer_utility", "fooled"} and set(corr.method) == {"pearson", "spearman"}
    pooled = corr[corr.attack == "all"]
    assert (pooled.n == 12).all() and (corr[corr.attack != "all"].n == 6).all()
    for name in ["correlation.png", "interaction_by_attack.png", "correlation.manifest.json"]:
        assert (run / name).stat().st_size > 0
    assert set(out["by_attack"].attack) == set(ATTACKS)


def test_cli_subcommands(run_dir, monkeypatch, capsys):
    run, _ = run_dir
    monkeypatch.setattr(measure, "_default_loader", Loader())
    parser = argparse.ArgumentParser(prog="transferlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["interaction", str(run), "--grid", "4", "--no-progress"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "pgd" in out and "evaluations/s" in out
    args = parser.parse_args(["correlate", str(run), "--bootstrap", "20"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "tgt_a" in out and "transfer" in out
    assert (run / "correlation.csv").exists()


def test_parse_pairs():
    assert parse_pairs(None) is None and parse_pairs(["12"]) == 12
    assert parse_pairs(["0,1", "5-9"]) == [(0, 1), (5, 9)]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_pairs(["0,1,2"])


def test_other_class_policy_is_a_separate_measurement_of_its_own_game(run_dir):
    """--other fixed measures the game IR penalises: its own rows beside per-coalition, equal to that game."""
    run, labels = run_dir

    from transferlab.io import read_png

    # linear logits W·x with W ⟂ every clean image: all classes tie at x, so z(x + δ_S) = W·δ_S and the
    # fixed game is additive (no interaction) while the per-coalition max is not
    clean = torch.stack([torch.from_numpy(read_png(run / "clean" / f"{i}.png").copy()).permute(2, 0, 1)
                         .double().flatten() / 255 for i in IDS])
    w = torch.randn(10, clean.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w -= w @ torch.linalg.pinv(clean) @ clean

    def loader(name, **_):
        net = nn.Sequential(nn.Flatten(), nn.Linear(clean.shape[1], 10, bias=False)).double()
        with torch.no_grad():
            net[1].weight.copy_(w)
        return nn.Sequential(_Double(), net).requires_grad_(False)

    repicked = measure_run(run, grid=4, model_loader=loader, batch_size=4, progress=False)
    fixed = measure_run(run, grid=4, model_loader=loader, batch_size=4, progress=False, other="fixed")
    assert set(repicked.other) == {"per-coalition"} and set(fixed.other) == {"fixed"}
    on_disk = pd.read_csv(run / "interaction.csv", dtype={"image_id": str})
    assert len(on_disk) == 24 and on_disk.setting.nunique() == 2  # both kept, neither overwrote the other
    assert fixed.value.abs().max() < 1e-9 < 1e-3 < repicked.value.abs().max()
    x = torch.from_numpy(read_png(run / "clean" / "img02.png").copy()).permute(2, 0, 1).float() / 255
    adv = torch.from_numpy(read_png(run / "adv" / "pgd" / "src" / "img02.png").copy())
    game = PerturbationGame(loader("src").eval(), x, adv.permute(2, 0, 1).float() / 255 - x, int(labels[2]),
                            grid=4, other="fixed")
    got = fixed[(fixed.image_id == "img02") & (fixed.attack == "pgd")].value.item()
    assert got == pytest.approx(average_interaction(game).value, rel=1e-4, abs=1e-6)
    with pytest.raises(InteractionError, match="margin score only"):
        measure_run(run, grid=4, model_loader=Loader(), progress=False, score="logodds", other="fixed")
