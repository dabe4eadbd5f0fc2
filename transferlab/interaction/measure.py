"""Measure the interactions inside a run's adversarial perturbations (one value per image × attack × source).

Reads a run directory written by ``transferlab run`` (manifest.json, records.csv, clean/ and adv/ PNGs),
rebuilds δ = adv/255 − clean/255 for every attacked image, plays the perturbation game on the *source*
model and writes ``RUN_DIR/interaction.csv`` atomically (plus ``interaction.manifest.json``).
Resumable: rows already measured with the same settings are kept and not recomputed.
"""

from __future__ import annotations

import json
import numbers
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from ..errors import TransferlabError
from ..io import atomic_write_csv, atomic_write_json, read_png
from ..provenance import provenance
from ..rundir import RunDir, RunDirError, RunLock, check_model
from .estimators import average_interaction, order_interactions, random_pairs, sampled_interaction
from .game_spec import GameSpec
from .games import BatchedPerturbationGame, default_grid
from .scores import SCORES

ESTIMATORS = ("average", "pairs", "orders")
COLUMNS = ["image_id", "attack", "source", "estimator", "grid", "score", "other", "value", "stderr",
           "evaluations", "i", "j", "order", "n_players", "setting"]
KEYS = ["image_id", "attack", "source"]
DEFAULT_SAMPLES = {"pairs": 32, "orders": 16}
DEFAULT_PAIR_COUNT = {"pairs": 8, "orders": 4}
DEFAULT_ORDER_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)

ModelLoader = Callable[..., nn.Module]


class InteractionError(TransferlabError, ValueError):
    """A run directory or a setting that cannot be measured; the message names the value, where it came
    from (the command-line flag or the file) and what to do."""


def _default_loader(name: str, weights: str | None = None, weights_dir: str | None = None,
                    device: str = "cpu") -> nn.Module:
    from ..models import load_model  # lazy: the model zoo pulls in timm

    return load_model(name, weights=weights, weights_dir=weights_dir, device=device)


def default_orders(n: int) -> list[int]:
    """A spread of orders m over 0..n−2 (fractions of n−2, as the paper plots them)."""
    return sorted({int(round(f * (n - 2))) for f in DEFAULT_ORDER_FRACTIONS})


def _damaged(path: Path, exc: BaseException, run_dir: Path | str = "RUN_DIR") -> InteractionError:
    """The error for a run image that cannot be read (PIL's own message repeats the path: keep one line)."""
    reason = "not a PNG image" if isinstance(exc, UnidentifiedImageError) else str(exc).splitlines()[0]
    return InteractionError(f"{path} is not a readable PNG ({reason}): the run folder is damaged; restore "
                            "the file, or redo the run with "
                            f"`transferlab run CONFIG --out {run_dir} --fresh`")


def _load_image(path: Path, run_dir: Path | str = "RUN_DIR") -> torch.Tensor:
    """PNG → float (3, H, W), pixels in [0, 1]; an unreadable file is an InteractionError naming it."""
    try:
        pixels = read_png(path)
    except FileNotFoundError:
        raise InteractionError(f"{path} not found: the run folder {run_dir} is incomplete") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: unidentified, truncated, broken chunks
        raise _damaged(path, exc, run_dir) from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0


def _image_size(path: Path, listed: str, run_dir: Path) -> tuple[int, int]:
    """(height, width) of a run PNG from its header, after checking the whole file (chunk CRCs, no decode).

    ``listed`` says which records.csv row needs the file, for the message when it is missing.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            im.verify()
    except FileNotFoundError:
        raise InteractionError(f"{path} not found, but {RunDir(run_dir).records_csv} lists {listed}: the run "
                               "folder is incomplete; finish it with "
                               f"`transferlab run CONFIG --out {run_dir}`") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _damaged(path, exc, run_dir) from None
    return height, width


def _check_run_dir(run_dir: Path) -> Path:
    """The run folder exists and holds records.csv (written when `transferlab run` finishes)."""
    if not run_dir.exists():
        raise InteractionError(f"run folder {run_dir} not found: RUN_DIR must be a folder written by "
                               "`transferlab run`")
    if not run_dir.is_dir():
        raise InteractionError(f"{run_dir} is not a folder: RUN_DIR must be a folder written by "
                               "`transferlab run`")
    if not RunDir(run_dir).records_csv.is_file():
        raise InteractionError(f"{run_dir} has no records.csv: it is not a finished transferlab run; run "
                               f"`transferlab run CONFIG --out {run_dir}` to completion first")
    return run_dir


def _read_units(run_dir: Path) -> pd.DataFrame:
    """One row per attacked (image_id, attack, source) with its label, from records.csv."""
    path = _check_run_dir(run_dir) / "records.csv"
    try:
        records = pd.read_csv(path, dtype={"image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InteractionError(f"{path} is not a readable CSV table ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ["image_id", "label", "attack", "source"] if c not in records.columns]
    if missing:
        raise InteractionError(f"{path} lacks the columns {missing}: it is not a transferlab records table")
    units = records[["image_id", "label", "attack", "source"]].drop_duplicates(KEYS)
    return units.reset_index(drop=True)


def _weights(run_dir: Path) -> tuple[str | None, dict[str, str]]:
    """(weights_dir, {model: checkpoint}) from the run's resolved config, as `transferlab run` used them.

    A run without its manifest is refused: measuring on default weights could silently use other weights
    than the ones the perturbations were made on.
    """
    try:
        models = RunDir(run_dir).read_config().get("models")
    except RunDirError as exc:
        raise InteractionError(str(exc)) from None
    if not isinstance(models, dict):
        raise InteractionError(f"{RunDir(run_dir).manifest_json} has no config.models entry: cannot tell "
                               "which weights the run used")
    return models.get("weights_dir"), models.get("weights") or {}


def _at_least_one(flag: str, value: Any, what: str) -> None:
    """An optional count given on the command line (``flag``) must be a whole number ≥ 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InteractionError(f"{flag} must be at least 1 ({what}), got {value}")


def _check_counts(batch_size: int, chunk: int, samples: int | None, players: int | None,
                  pairs: int | Sequence[tuple[int, int]] | None) -> None:
    """The settings that do not depend on the run's images (checked before anything is read)."""
    _at_least_one("--batch-size", batch_size, "images per batched game")
    _at_least_one("--chunk", chunk, "model inputs per forward")
    _at_least_one("--samples", samples, "samples per pair and order")
    _at_least_one("--players", players, "rows i sampled by the average estimator")
    if isinstance(pairs, numbers.Integral) and not isinstance(pairs, bool) and pairs < 1:
        raise InteractionError(f"--pairs {pairs}: the number of random pairs must be at least 1")


def _check_grid(grid: int | None, height: int, width: int, estimator: str, where: Path) -> int:
    """The grid side (given or default) for images of this size; every estimator needs n ≥ 2 players."""
    side = min(height, width)
    given = grid is not None
    grid = int(grid) if given else default_grid(height, width)
    flag = f"--grid {grid}" if given else f"the default grid {grid} (--grid not given)"
    size = f"the run's images ({where}) are {height}x{width} px"
    if side < 2:
        raise InteractionError(f"{size}: too small to split into the 2 players the {estimator} estimator "
                               "needs")
    if grid == 1:
        raise InteractionError(f"{flag} gives n = 1 player, but the {estimator} estimator needs pairs of "
                               f"players: {size}, so use --grid in 2..{side} (cells per side)")
    if not 2 <= grid <= side:
        raise InteractionError(f"{flag} is out of range: {size}, so --grid (cells per side) must be in "
                               f"2..{side}")
    return grid


def resolve_pairs(pairs: int | Sequence[tuple[int, int]] | None, n: int, estimator: str,
                  seed: int) -> list[tuple[int, int]]:
    """None → the estimator's default count of random pairs; int k → k random pairs; a list → as given."""
    if pairs is None:
        pairs = DEFAULT_PAIR_COUNT.get(estimator, 8)
    if isinstance(pairs, numbers.Integral) and not isinstance(pairs, bool):
        if pairs < 1:
            raise InteractionError(f"--pairs {pairs}: the number of random pairs must be at least 1")
        return random_pairs(n, min(int(pairs), n * (n - 1) // 2), seed)
    grid = round(n ** 0.5)
    cells = f"n = {n} cells of the {grid}x{grid} grid" if grid * grid == n else f"n = {n} players"
    out = []
    for pair in pairs:
        i, j = (int(p) for p in pair)
        for cell in (i, j):
            if not 0 <= cell < n:
                raise InteractionError(f"--pairs {i},{j}: cell {cell} is out of range 0..{n - 1} ({cells})")
        if i == j:
            raise InteractionError(f"--pairs {i},{j}: the two cells of a pair must differ")
        out.append((i, j))
    if not out:
        raise InteractionError("--pairs: need at least one pair i,j (or a count of random pairs)")
    return out


def resolve_orders(orders: Sequence[int] | None, n: int) -> list[int]:
    """None → ``default_orders(n)``; else the orders as given, each in 0..n−2."""
    if orders is None:
        return default_orders(n)
    orders = [int(m) for m in orders]
    grid = round(n ** 0.5)
    where = f"the {grid}x{grid} grid (n = {n} players)" if grid * grid == n else f"n = {n} players"
    if not orders:
        raise InteractionError(f"--orders: need at least one order m in 0..{n - 2}")
    for m in orders:
        if not 0 <= m <= n - 2:
            raise InteractionError(f"--orders {m} is out of range: for {where} an order m lies in "
                                   f"0..{n - 2} (0..n-2)")
    return orders


def _settings(estimator: str, grid: int, game: GameSpec, pairs, orders, samples, players,
              seed) -> dict[str, Any]:
    """The settings that identify a measurement (the resume key) and its compact string form."""
    s: dict[str, Any] = {"estimator": estimator, "grid": grid, "score": game.score, "other": game.other}
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
                model_loader: ModelLoader | None = None, progress: bool = True,
                other: str | None = None) -> pd.DataFrame:
    """Measure every attacked image's interaction on its source model; write RUN_DIR/interaction.csv.

    estimator: 'average' (exact average pairwise interaction, 2n+2 evaluations; ``players=k`` samples k rows),
    'pairs' (sampled I_ij for ``pairs``: a list of (i, j) or a count of random pairs), 'orders' (sampled
    I^(m)_ij for ``orders``, default a spread over 0..n−2). grid: cells per side (default 16 for images
    ≥ 128 px, else 8). Images are batched ``batch_size`` at a time, ``chunk`` model inputs per forward.
    ``evaluations`` in a row is that row's cost per image. Returns the rows of these settings.
    score and other define the game (``game_spec.GameSpec``): every score larger = more adversarial; other
    'per-coalition' (the margin's default, the paper's v(S) = max_{y'≠y} z_{y'}(x+δ_S) − z_y(x+δ_S)) or
    'fixed' (y* from the full perturbation, the game IR penalises).

    Every setting, the run folder (records.csv, manifest.json) and the images still to measure are checked
    before a model is loaded or a file written; an InteractionError names the bad value and its flag or file.
    """
    if estimator not in ESTIMATORS:
        raise InteractionError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if score not in SCORES:
        raise InteractionError(f"unknown score {score!r}; choose one of {SCORES}")
    try:
        game = GameSpec.resolve(score, other, role="measure")
    except ValueError as exc:
        raise InteractionError(f"--score {score} --other {other}: {exc}") from None
    _check_counts(batch_size, chunk, samples, players, pairs)
    _check_applies(estimator, pairs=pairs, samples=samples, orders=orders, players=players)
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    units = _read_units(run_dir)
    if units.empty:
        raise InteractionError(f"{RunDir(run_dir).records_csv} has no attacked images")
    weights = _weights(run_dir)
    first = RunDir(run_dir).clean_png(units.image_id[0])
    height, width = _image_size(first, f"image {units.image_id[0]}", run_dir)
    grid = _check_grid(grid, height, width, estimator, first)
    n = grid * grid
    if players is not None and players > n:
        raise InteractionError(f"--players {players} is more than the n = {n} players of the {grid}x{grid} "
                               f"grid: use 1..{n}")
    pairs_list = resolve_pairs(pairs, n, estimator, seed) if estimator != "average" else []
    orders = resolve_orders(orders, n) if estimator == "orders" else []
    samples = samples if samples is not None else DEFAULT_SAMPLES.get(estimator)
    settings = _settings(estimator, grid, game, pairs_list, orders, samples, players, seed)

    out_path = RunDir(run_dir).interaction_csv
    table = _existing(out_path)
    mine = table[table.setting == settings["setting"]]
    done = set(zip(mine.image_id, mine.attack, mine.source, strict=True))
    todo = units[[(r.image_id, r.attack, r.source) not in done for r in units.itertuples()]]
    _check_images(run_dir, todo, (height, width), first)
    with RunLock(run_dir):
        _measure_units(run_dir, todo, settings, batch_size, device, chunk, model_loader or _default_loader,
                       progress, table, out_path, weights)
        _write_manifest(run_dir, settings, batch_size, device, chunk, todo, units, done, t0)
    result = _existing(out_path)  # re-read, so a fresh and a resumed call return identical frames
    return result[result.setting == settings["setting"]].reset_index(drop=True)


def _write_manifest(run_dir: Path, settings: dict[str, Any], batch_size: int, device: str, chunk: int,
                    todo: pd.DataFrame, units: pd.DataFrame, done: set, t0: float) -> None:
    seconds = time.perf_counter() - t0
    result = _existing(RunDir(run_dir).interaction_csv)
    mine = result[result.setting == settings["setting"]]
    fresh = [(r.image_id, r.attack, r.source) not in done for r in mine.itertuples()]
    spent = int(mine[fresh].evaluations.sum())
    atomic_write_json(RunDir(run_dir).interaction_manifest, {
        "settings": settings, "batch_size": batch_size, "device": device, "chunk": chunk,
        "measured": len(todo), "skipped": len(units) - len(todo),
        "seconds": round(seconds, 3), "evaluations": spent,
        "evaluations_per_second": round(spent / seconds, 1) if todo.shape[0] else None,
        **provenance(),
    })


#: which options each estimator reads; another option given with it would be silently ignored
APPLIES = {"pairs": ("pairs", "orders"), "samples": ("pairs", "orders"), "orders": ("orders",),
           "players": ("average",)}


def _check_applies(estimator: str, **given: Any) -> None:
    for option, estimators in APPLIES.items():
        if given.get(option) is not None and estimator not in estimators:
            raise InteractionError(f"--{option} has no effect with --estimator {estimator}: it applies to "
                                   f"--estimator {' or '.join(estimators)}")


def _check_images(run_dir: Path, todo: pd.DataFrame, size: tuple[int, int], first: Path) -> None:
    """Every PNG the pending units need exists, is intact and has the first clean image's size."""
    seen = {first}  # read already
    for r in todo.itertuples():
        for path, listed in ((RunDir(run_dir).clean_png(r.image_id), f"image {r.image_id}"),
                             (RunDir(run_dir).adv_png(str(r.attack), str(r.source), r.image_id),
                              f"image {r.image_id} for attack {r.attack}, source {r.source}")):
            if path in seen:
                continue
            seen.add(path)
            got = _image_size(path, listed, run_dir)
            if got != size:
                raise InteractionError(f"{path} is {got[0]}x{got[1]} px but {first} is {size[0]}x{size[1]} "
                                       "px: a run's images must all have one size")


def _write(path: Path, table: pd.DataFrame, new_rows: list[dict[str, Any]]) -> None:
    frames = [f for f in (table, pd.DataFrame(new_rows)) if not f.empty]
    atomic_write_csv(path, pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS))


def _measure_units(run_dir: Path, todo: pd.DataFrame, settings: dict[str, Any], batch_size: int, device: str,
                   chunk: int, loader: ModelLoader, progress: bool, table: pd.DataFrame,
                   out_path: Path, run_weights: tuple[str | None, dict[str, str]]) -> None:
    """Measure the pending units, grouped by (source, attack), writing the CSV after every batch.

    ``run_weights``: (weights_dir, {model: checkpoint}) from ``_weights``."""
    from tqdm.auto import tqdm

    weights_dir, weights = run_weights
    models: dict[str, nn.Module] = {}
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), desc="interaction", unit="img", disable=not progress)
    for (source, attack), group in todo.groupby(["source", "attack"], sort=True):
        if source not in models:
            model = loader(source, weights=weights.get(source), weights_dir=weights_dir, device=device)
            check_model(run_dir, source, model)
            models[source] = model.eval().to(device)
        for start in range(0, len(group), batch_size):
            batch = group.iloc[start:start + batch_size]
            rows += _measure_batch(run_dir, models[source], batch, attack, source, settings, device, chunk)
            _write(out_path, table, rows)
            bar.update(len(batch))
    bar.close()


def _measure_batch(run_dir: Path, model: nn.Module, batch: pd.DataFrame, attack: str, source: str,
                   settings: dict[str, Any], device: str, chunk: int) -> list[dict[str, Any]]:
    clean = torch.stack([_load_image(RunDir(run_dir).clean_png(i), run_dir)
                         for i in batch.image_id]).to(device)
    adv = torch.stack([_load_image(RunDir(run_dir).adv_png(attack, source, i), run_dir)
                       for i in batch.image_id])
    y = torch.tensor(batch.label.to_numpy(dtype=np.int64).tolist(), device=device)
    game = BatchedPerturbationGame(model, clean, adv.to(device) - clean, y, grid=settings["grid"],
                                   score=settings["score"], chunk=chunk, other=settings["other"])
    base = {"attack": attack, "source": source, "estimator": settings["estimator"], "grid": settings["grid"],
            "score": settings["score"], "other": settings["other"], "n_players": game.n_players,
            "setting": settings["setting"]}
    rows = []
    for image_id, per_image in zip(batch.image_id, _estimate_rows(game, settings), strict=True):
        rows += [{"image_id": image_id, **base, **row} for row in per_image]
    return rows
