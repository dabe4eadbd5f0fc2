"""Measure the interactions inside a run's adversarial perturbations (one value per image × attack × source).

Reads a run directory written by ``transferlab run`` (manifest.json, records.csv, clean/ and adv/ PNGs),
rebuilds δ = adv/255 − clean/255 for every attacked image, plays the perturbation game on the *source*
model and writes ``RUN_DIR/interaction.csv`` atomically (plus ``interaction.manifest.json``).
Resumable: rows already measured with the same settings are kept and not recomputed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import TransferlabError
from ..io import atomic_write_csv, atomic_write_json, read_png
from ..provenance import provenance
from .estimators import average_interaction, order_interactions, random_pairs, sampled_interaction
from .games import BatchedPerturbationGame, default_grid
from .scores import SCORES

ESTIMATORS = ("average", "pairs", "orders")
COLUMNS = ["image_id", "attack", "source", "estimator", "grid", "score", "value", "stderr", "evaluations",
           "i", "j", "order", "n_players", "setting"]
KEYS = ["image_id", "attack", "source"]
DEFAULT_SAMPLES = {"pairs": 32, "orders": 16}
DEFAULT_PAIR_COUNT = {"pairs": 8, "orders": 4}
DEFAULT_ORDER_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)

ModelLoader = Callable[..., nn.Module]


class InteractionError(TransferlabError, ValueError):
    """A run directory or a setting that cannot be measured; the message says what to do."""


def _default_loader(name: str, weights: str | None = None, weights_dir: str | None = None,
                    device: str = "cpu") -> nn.Module:
    from ..models import load_model  # lazy: the model zoo pulls in timm

    return load_model(name, weights=weights, weights_dir=weights_dir, device=device)


def default_orders(n: int) -> list[int]:
    """A spread of orders m over 0..n−2 (fractions of n−2, as the paper plots them)."""
    return sorted({int(round(f * (n - 2))) for f in DEFAULT_ORDER_FRACTIONS})


def _load_image(path: Path) -> torch.Tensor:
    """PNG → float (3, H, W), pixels in [0, 1]."""
    return torch.from_numpy(read_png(path).copy()).permute(2, 0, 1).float() / 255.0


def _read_units(run_dir: Path) -> pd.DataFrame:
    """One row per attacked (image_id, attack, source) with its label, from records.csv."""
    records = pd.read_csv(run_dir / "records.csv", dtype={"image_id": str})
    units = records[["image_id", "label", "attack", "source"]].drop_duplicates(KEYS)
    return units.reset_index(drop=True)


def _weights(run_dir: Path) -> tuple[str | None, dict[str, str]]:
    """(weights_dir, {model: checkpoint}) from the run's resolved config, as `transferlab run` used them."""
    path = run_dir / "manifest.json"
    if not path.exists():
        return None, {}
    models = (json.loads(path.read_text()).get("config") or {}).get("models") or {}
    return models.get("weights_dir"), models.get("weights") or {}


def resolve_pairs(pairs: int | Sequence[tuple[int, int]] | None, n: int, estimator: str,
                  seed: int) -> list[tuple[int, int]]:
    """None → the estimator's default count of random pairs; int k → k random pairs; a list → as given."""
    if pairs is None:
        pairs = DEFAULT_PAIR_COUNT.get(estimator, 8)
    if isinstance(pairs, int):
        return random_pairs(n, min(pairs, n * (n - 1) // 2), seed)
    return [(int(i), int(j)) for i, j in pairs]


def _settings(estimator: str, grid: int, score: str, pairs, orders, samples, players, seed) -> dict[str, Any]:
    """The settings that identify a measurement (the resume key) and its compact string form."""
    s: dict[str, Any] = {"estimator": estimator, "grid": grid, "score": score}
    if estimator == "average":
        s["players"] = players
        if players is not None:
            s["seed"] = seed
    else:
        s.update(pairs=[list(p) for p in pairs], samples=samples, seed=seed)
        if estimator == "orders":
            s["orders"] = list(orders)
    s["setting"] = "|".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in s.items())
    return s


def _estimate_rows(game: BatchedPerturbationGame, settings: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Run the chosen estimator on a batched game; per image, its output rows."""
    est = settings["estimator"]
    b = game.batch_size
    if est == "average":
        r = average_interaction(game, players=settings["players"], seed=settings.get("seed", 0))
        value = torch.as_tensor(r.value).reshape(b)
        stderr = torch.full((b,), float("nan")) if r.stderr is None else torch.as_tensor(r.stderr).reshape(b)
        return [[{"value": float(value[k]), "stderr": float(stderr[k]), "evaluations": r.evaluations}]
                for k in range(b)]
    pairs = [tuple(p) for p in settings["pairs"]]
    samples, seed = settings["samples"], settings["seed"]
    if est == "pairs":
        r = sampled_interaction(game, pairs, samples=samples, seed=seed)
        per = 4 * samples
        return [[{"value": float(r.value[k, p]), "stderr": float(r.stderr[k, p]), "evaluations": per,
                  "i": i, "j": j} for p, (i, j) in enumerate(pairs)] for k in range(b)]
    orders = settings["orders"]
    r = order_interactions(game, pairs, orders=orders, samples=samples, seed=seed)
    per = 4 * samples
    return [[{"value": float(r.value[k, p, q]), "stderr": float(r.stderr[k, p, q]), "evaluations": per,
              "i": i, "j": j, "order": m} for p, (i, j) in enumerate(pairs) for q, m in enumerate(orders)]
            for k in range(b)]


def _existing(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path, dtype={"image_id": str, "setting": str})


def measure_run(run_dir: str | Path, grid: int | None = None, estimator: str = "average",
                pairs: int | Sequence[tuple[int, int]] | None = None, samples: int | None = None,
                orders: Sequence[int] | None = None, score: str = "margin", batch_size: int = 8,
                device: str = "cpu", seed: int = 0, players: int | None = None, chunk: int = 256,
                model_loader: ModelLoader | None = None, progress: bool = True) -> pd.DataFrame:
    """Measure every attacked image's interaction on its source model; write RUN_DIR/interaction.csv.

    estimator: 'average' (exact average pairwise interaction, 2n+2 evaluations; ``players=k`` samples k rows),
    'pairs' (sampled I_ij for ``pairs``: a list of (i, j) or a count of random pairs), 'orders' (sampled
    I^(m)_ij for ``orders``, default a spread over 0..n−2). grid: cells per side (default 16 for images
    ≥ 128 px, else 8). Images are batched ``batch_size`` at a time, ``chunk`` model inputs per forward.
    ``evaluations`` in a row is that row's cost per image. Returns the rows of these settings.
    """
    if estimator not in ESTIMATORS:
        raise InteractionError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if score not in SCORES:
        raise InteractionError(f"unknown score {score!r}; choose one of {SCORES}")
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    units = _read_units(run_dir)
    if units.empty:
        raise InteractionError(f"{run_dir / 'records.csv'} has no attacked images")
    height, width = _load_image(run_dir / "clean" / f"{units.image_id[0]}.png").shape[-2:]
    grid = int(grid) if grid is not None else default_grid(height, width)
    n = grid * grid
    pairs_list = resolve_pairs(pairs, n, estimator, seed) if estimator != "average" else []
    orders = (list(orders) if orders is not None else default_orders(n)) if estimator == "orders" else []
    samples = samples if samples is not None else DEFAULT_SAMPLES.get(estimator)
    settings = _settings(estimator, grid, score, pairs_list, orders, samples, players, seed)

    out_path = run_dir / "interaction.csv"
    table = _existing(out_path)
    mine = table[table.setting == settings["setting"]]
    done = set(zip(mine.image_id, mine.attack, mine.source, strict=True))
    todo = units[[(r.image_id, r.attack, r.source) not in done for r in units.itertuples()]]
    _measure_units(run_dir, todo, settings, batch_size, device, chunk, model_loader or _default_loader,
                   progress, table, out_path)
    seconds = time.perf_counter() - t0
    result = _existing(out_path)  # re-read, so a fresh and a resumed call return identical frames
    mine = result[result.setting == settings["setting"]]
    fresh = [(r.image_id, r.attack, r.source) not in done for r in mine.itertuples()]
    spent = int(mine[fresh].evaluations.sum())
    atomic_write_json(run_dir / "interaction.manifest.json", {
        "settings": settings, "batch_size": batch_size, "device": device, "chunk": chunk,
        "measured": len(todo), "skipped": len(units) - len(todo),
        "seconds": round(seconds, 3), "evaluations": spent,
        "evaluations_per_second": round(spent / seconds, 1) if todo.shape[0] else None,
        **provenance(),
    })
    return mine.reset_index(drop=True)


def _write(path: Path, table: pd.DataFrame, new_rows: list[dict[str, Any]]) -> None:
    frames = [f for f in (table, pd.DataFrame(new_rows)) if not f.empty]
    atomic_write_csv(path, pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS))


def _measure_units(run_dir: Path, todo: pd.DataFrame, settings: dict[str, Any], batch_size: int, device: str,
                   chunk: int, loader: ModelLoader, progress: bool, table: pd.DataFrame,
                   out_path: Path) -> None:
    """Measure the pending units, grouped by (source, attack), writing the CSV after every batch."""
    from tqdm.auto import tqdm

    weights_dir, weights = _weights(run_dir)
    models: dict[str, nn.Module] = {}
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), desc="interaction", unit="img", disable=not progress)
    for (source, attack), group in todo.groupby(["source", "attack"], sort=True):
        if source not in models:
            model = loader(source, weights=weights.get(source), weights_dir=weights_dir, device=device)
            models[source] = model.eval().to(device)
        for start in range(0, len(group), batch_size):
            batch = group.iloc[start:start + batch_size]
            rows += _measure_batch(run_dir, models[source], batch, attack, source, settings, device, chunk)
            _write(out_path, table, rows)
            bar.update(len(batch))
    bar.close()


def _measure_batch(run_dir: Path, model: nn.Module, batch: pd.DataFrame, attack: str, source: str,
                   settings: dict[str, Any], device: str, chunk: int) -> list[dict[str, Any]]:
    clean = torch.stack([_load_image(run_dir / "clean" / f"{i}.png") for i in batch.image_id]).to(device)
    adv = torch.stack([_load_image(run_dir / "adv" / attack / source / f"{i}.png") for i in batch.image_id])
    y = torch.tensor(batch.label.to_numpy(dtype=np.int64).tolist(), device=device)
    game = BatchedPerturbationGame(model, clean, adv.to(device) - clean, y, grid=settings["grid"],
                                   score=settings["score"], chunk=chunk)
    base = {"attack": attack, "source": source, "estimator": settings["estimator"], "grid": settings["grid"],
            "score": settings["score"], "n_players": game.n_players, "setting": settings["setting"]}
    rows = []
    for image_id, per_image in zip(batch.image_id, _estimate_rows(game, settings), strict=True):
        rows += [{"image_id": image_id, **base, **row} for row in per_image]
    return rows
