"""Tables, plots and the manifest written next to every run's results."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from transferlab.attacks.defaults import defaults_that_ran  # noqa: E402
from transferlab.eval.compare import (  # noqa: E402
    baseline_of,
    empty_gains,
    gains_markdown,
    gains_over,
    matched_gains,
    matched_markdown,
)
from transferlab.eval.records import assemble_records, missing_work  # noqa: E402
from transferlab.eval.transfer import BEST_STEP, summarise  # noqa: E402
from transferlab.io import (  # noqa: E402
    as_written,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)
from transferlab.provenance import provenance  # noqa: E402
from transferlab.rundir import RunDir, RunDirError, jobs_of  # noqa: E402
from transferlab.rundir.layout import COST_FIELDS, ordered_config  # noqa: E402


def rate_cell(row: pd.Series) -> str:
    if row.n == 0:
        return "n/a"
    return f"{row.success_rate:.3f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"


def markdown_table(results: pd.DataFrame, metric: str, reference: dict | None = None) -> str:
    """Attack rows x target columns of 'rate [95% CI]'; n per column in the header."""
    sub = results[results.metric == metric]
    lines = []
    for source, group in sub.groupby("source", sort=False):
        targets = list(dict.fromkeys(group.target))
        heads = []
        for t in targets:
            ns = sorted(set(group[group.target == t].n))
            n_text = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
            white = bool(group[group.target == t].white_box.astype(bool).any())
            heads.append(f"{t}{' (white-box)' if white else ''} {n_text}")
        lines.append(f"**source: {source}**\n")
        lines.append("| attack | passes | " + " | ".join(heads) + " |")
        lines.append("|---|---|" + "---|" * len(targets))
        for attack, rows in group.groupby("attack", sort=False):
            cells = {r.target: rate_cell(r) for r in rows.itertuples()}
            row = " | ".join(cells.get(t, "") for t in targets)
            lines.append(f"| {attack} | {_passes_cell(rows)} | {row} |")
            ref = (reference or {}).get(attack)
            if isinstance(ref, dict):
                lines.append("| ↳ paper | | " + " | ".join(str(ref.get(t, "")) for t in targets) + " |")
        lines.append("")
    return "\n".join(lines)


def settings_section(cfg: dict, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The settings every attack ran with, from the resolved config (not the config's free text)."""
    lines = ["| attack | method | norm | ε | α | steps | random start | parameters |", "|---|" + "---|" * 7]
    for name, spec in cfg["attacks"].items():
        method = "+".join(str(m) for m in np.atleast_1d(spec["method"]))
        start = {None: "default", True: "yes", False: "no"}[spec["random_start"]]
        params = "; ".join([f"{k}: {v}" for k, v in spec["params"].items()] + _defaults_cells(spec)) or "-"
        lines.append(
            f"| {name} | {method} | {spec['norm']} | {spec['eps']:g} | {spec['alpha']:g} | {spec['steps']} "
            f"| {start} | {params} |"
        )
    note = f"Overrides on the command line: `{' '.join(overrides)}`.\n\n" if overrides else ""
    return "\n## Settings (as run; ε, α in 1/255)\n\n" + note + "\n".join(lines) + "\n"


def _defaults_cells(spec: dict) -> list[str]:
    """Changed defaults an entry left unset, labelled with the value that ran (`attacks.defaults`)."""
    ran, recorded = defaults_that_ran(spec)
    label = "default" if recorded else "the default when this ran"
    return [f"{comp}: {values} ({label})" for comp, values in ran.items()]


def passes_of(run: RunDir, jobs: list) -> dict:
    """(attack, source) -> (passes per image per step, passes per image in total) from each job.json;
    jobs recorded before passes were kept are left out (NaN in the tables)."""
    out = {}
    for job in jobs:
        meta = run.read_job(job.attack, job.source) or {}
        if "passes" in meta:
            out[(job.attack, job.source)] = (meta["passes_per_step"], meta["passes"])
    return out


def _passes_cell(rows: pd.DataFrame) -> str:
    value = rows.passes.iloc[0] if "passes" in rows and len(rows) else np.nan
    return "?" if pd.isna(value) else f"{value:g}"


def table_markdown(
    results: pd.DataFrame,
    cfg: dict,
    costs: pd.DataFrame,
    gains: pd.DataFrame,
    overrides: list[str] | tuple[str, ...] = (),
) -> str:
    description = cfg.get("description", "").strip()
    parts = [
        f"# {cfg['name']}\n",
        f"Config description (as written; the settings that ran are listed below): {description}\n"
        if description
        else "",
        targeted_section(results, cfg),
        "Transfer success: fraction of attacked images the target misclassifies after the attack, over the "
        "images it classifies correctly when clean (white-box column: the source itself, or a member of "
        "an ensemble source). Fixed budget "
        "(final step); adversarial images quantised to 8 bits by rounding and clipped into the ε-ball. "
        "Cells: rate [95% Wilson interval]; ε, α in 1/255. `passes`: forward+backward passes of the "
        "source per image over the whole attack (steps × passes per step + one-off passes; an ensemble's "
        "members each count)"
        + ("; `?`: not recorded (the run predates the passes count; its costs table gives the forwards)"
           if "passes" not in results or results["passes"].isna().any() else "")
        + ".\n"
        + ("(Untargeted view of a targeted attack: any wrong class counts.)\n"
           if cfg.get("targeted") else ""),
        markdown_table(results, "transfer_success", None if cfg.get("targeted") else cfg.get("reference")),
        settings_section(cfg, overrides),
        gains_section(gains) if baseline_of(cfg) else "\n## Gains\n\nNone: the config has no plain PGD "
        "attack to measure gains against; name one with `eval.baseline`.\n",
        best_step_section(results),
        "\n## Error rate over all attacked images\n",
        markdown_table(results, "error_rate"),
        "\n## Cost\n",
        "Attack time per image per step in seconds (wall, and CPU time of the process), model forwards "
        "per image per step, summed over every process that attacked the job (`writers`), and the ratio "
        "to the baseline's time in the same run (`cost_basis`: CPU time, which "
        "other work on the machine does not inflate; wall time for jobs recorded before CPU time was "
        "kept). `python bench/speed.py` measures these ratios side by side in one process.\n",
        frame_markdown(costs),
        "",
    ]
    return "\n".join(p for p in parts if p is not None)


def targeted_section(results: pd.DataFrame, cfg: dict) -> str:
    """A targeted run's headline: the rate at which each target predicts the image's target class."""
    if not cfg.get("targeted"):
        return ""
    return (
        f"**TARGETED attack** (target class: {cfg['target_class']}).\n\n## Targeted success\n\n"
        "Fraction of attacked images for which the target predicts the image's target class, over the "
        "images it classifies correctly when clean. Cells: rate [95% Wilson interval].\n\n"
        + markdown_table(results, "targeted_success", cfg.get("reference"))
        + "\n## Untargeted transfer success\n"
    )


def matched_section(matched: pd.DataFrame, passes: dict) -> str:
    """The compute-matched view: gains over MI at the same passes per image (or why there are none)."""
    head = ("\n## Compute-matched gains over MI\n\nEach attack against the MI entry of the config that "
            "spends the same forward+backward passes per image (e.g. MI run for more steps), on the same "
            "images; percentage points, 95% paired bootstrap interval. `passes.png` draws every attack's "
            "rate against its passes.\n\n")
    if matched.empty:
        return head + ("None: no attack has an MI entry with equal passes per image in this config (add "
                       "one, e.g. `mi_200: {method: mi, steps: 200}` beside a 20-copy method at 10 steps).\n")
    return head + matched_markdown(matched, passes)


def gains_section(gains: pd.DataFrame) -> str:
    if gains.empty:
        return ""
    return (
        f"\n## Gain over {gains.baseline.iloc[0]}\n\nDifference in transfer success on the same images "
        "(those the target classifies correctly clean), percentage points, 95% paired bootstrap interval "
        f"over images ({gains.n_boot.iloc[0]} resamples). An interval containing 0: no gain shown here.\n\n"
        + gains_markdown(gains)
    )


def best_step_section(results: pd.DataFrame) -> str:
    if not (results.metric == BEST_STEP).any():
        return ""
    return (
        "\n## Best step, leave-one-out (TARGET-INFORMED)\n\nThe reference code's metric: each image is "
        "scored at the recorded step that maximises transfer on the other images for that target. It uses "
        "the target to pick the step, so it is not a black-box transfer rate.\n\n"
        + markdown_table(results, BEST_STEP)
    )


def frame_markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a markdown table (floats to 4 significant digits)."""

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _save_png(fig, path: Path) -> None:
    """Write a figure atomically, with no timestamp metadata (the same figure gives the same bytes)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight")  # keeps legends
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def attack_colours(attacks: list[str]) -> dict[str, tuple]:
    """One distinct colour per attack, in config order, the same in every plot of a run: tab10 up to ten
    attacks, tab20 up to twenty, evenly spaced along `turbo` beyond."""
    if len(attacks) <= 20:
        cmap = plt.cm.tab10 if len(attacks) <= 10 else plt.cm.tab20
        return {a: cmap(k) for k, a in enumerate(attacks)}
    return {a: plt.cm.turbo(k / (len(attacks) - 1)) for k, a in enumerate(attacks)}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
MATCHED_REFERENCE = "mi"  # the method of the compute-matched gains' entries and of the passes plot's line


def passes_plot(results: pd.DataFrame, path: Path, title: str, metric: str = "transfer_success",
                reference: Sequence[str] = ()) -> bool:
    """Transfer rate against forward+backward passes per image (log scale), one panel per source →
    target (white-box targets left out), one point per attack with its 95% interval: what each method buys
    per unit of compute. `reference`: attacks drawn instead as one black dashed line in order of passes
    (the MI entries at more steps), so a point above the line beats MI at its own cost. Colours and marker
    shapes both vary, to tell 20+ attacks apart. Returns False (and writes nothing) when no job recorded
    its passes. The y axis runs from 0 to each panel's highest interval."""
    sub = results[(results.metric == metric) & ~results.white_box.astype(bool) & results.passes.notna()]
    if sub.empty:
        return False
    panels = list(dict.fromkeys(zip(sub.source, sub.target, strict=True)))
    cols = min(4, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols + 2, 3.2 * rows_n), squeeze=False)
    reference = [a for a in dict.fromkeys(reference) if a in set(sub.attack)]
    attacks = [a for a in dict.fromkeys(sub.attack) if a not in reference]
    colours = attack_colours([a for a in dict.fromkeys(results[results.metric == metric].attack)
                              if a not in reference])
    markers = {a: MARKERS[k % len(MARKERS)] for k, a in enumerate(colours)}
    for ax, (source, target) in zip(axes.flat, panels):
        group = sub[(sub.source == source) & (sub.target == target)]
        line = group[group.attack.isin(reference)].sort_values("passes")
        if len(line):
            ax.errorbar(line.passes, line.success_rate, fmt="--o", ms=3, color="black", lw=1.0, zorder=1,
                        yerr=[(line.success_rate - line.ci_low).clip(lower=0),
                              (line.ci_high - line.success_rate).clip(lower=0)], capsize=2)
        for r in group[~group.attack.isin(reference)].itertuples():
            err = [[max(0.0, r.success_rate - r.ci_low)], [max(0.0, r.ci_high - r.success_rate)]]
            ax.errorbar([r.passes], [r.success_rate], yerr=err, fmt=markers[r.attack], ms=4, capsize=2,
                        color=colours[r.attack], label=r.attack, zorder=2)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # short ranges labelled every minor
        ax.set_ylim(0, min(1.05, float(group.ci_high.max()) + 0.05))  # from 0, to the panel's own top
        ax.set_xlabel("passes per image (log)", fontsize=8)
        ax.set_ylabel(f"{metric.replace('_', ' ')}", fontsize=8)
        heading = f"{source} → {target}"
        ax.set_title(heading if len(heading) <= 45 else f"{source}\n→ {target}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker=markers[a], ls="", color=colours[a], label=a) for a in attacks]
    if reference:
        named = " / ".join(reference[:2]) + (" / …" if len(reference) > 2 else "")
        handles.append(plt.Line2D([], [], ls="--", marker="o", ms=3, color="black",
                                  label=f"{named} (reference line)"))
    fig.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save_png(fig, path)
    return True


def transfer_plot(results: pd.DataFrame, path: Path, title: str, metric: str = "transfer_success") -> None:
    """Grouped bars: one group per target, one bar per attack, 95% intervals as error bars."""
    sub = results[results.metric == metric]
    sources = list(dict.fromkeys(sub.source))
    colours = attack_colours(list(dict.fromkeys(sub.attack)))
    fig, axes = plt.subplots(
        1, len(sources), figsize=(max(6, 1.6 * sub.target.nunique() * len(sources) + 3), 4), squeeze=False
    )
    for ax, source in zip(axes[0], sources):
        group = sub[sub.source == source]
        targets = list(dict.fromkeys(group.target))
        attacks = list(dict.fromkeys(group.attack))
        width = 0.8 / len(attacks)
        for k, attack in enumerate(attacks):
            rows = group[group.attack == attack].set_index("target").reindex(targets)
            xs = np.arange(len(targets)) + (k - (len(attacks) - 1) / 2) * width
            err = np.clip(
                np.vstack([rows.success_rate - rows.ci_low, rows.ci_high - rows.success_rate]), 0, None
            )
            ax.bar(xs, rows.success_rate, width, yerr=err, capsize=2, label=attack, color=colours[attack])
        ax.set_xticks(range(len(targets)))
        white = set(group[group.white_box.astype(bool)].target)
        ax.set_xticklabels([f"{t}\n(white-box)" if t in white else t for t in targets], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{metric.replace('_', ' ')} (95% CI)")
        ax.set_title(f"source: {source}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save_png(fig, path)


class IncompleteRun(RunDirError):
    """The run directories lack finished work (the message lists it, per job and per shard)."""


def cost_table(run: RunDir, cfg: dict, baseline: str | None) -> pd.DataFrame:
    """Per job: images, steps, time and forwards summed over every writer (process, shard) that attacked
    its images, per image and step, and the ratio to the baseline attack's time on the same source."""
    rows = []
    for job in jobs_of(cfg):
        costs = run.read_costs(job.attack, job.source).values()
        total = {f: sum(c.get(f, 0) for c in costs) for f in COST_FIELDS}
        steps = max(1, int((run.read_job(job.attack, job.source) or {}).get("steps", job.spec["steps"])))
        images = max(1, total["images"])
        cpu_images = total["cpu_images"]
        rows.append(
            {
                "attack": job.attack,
                "source": job.source,
                "images": total["images"],
                "steps": steps,
                "seconds": total["seconds"],
                "s_per_image_step": total["seconds"] / (images * steps),
                "cpu_s_per_image_step": total["cpu_seconds"] / (cpu_images * steps) if cpu_images else np.nan,
                "forwards_per_image_step": total["forwards"] / (images * steps),
                "writers": len(costs),
            }
        )
    frame = pd.DataFrame(rows)
    # CPU time of the process: unlike wall time, it does not grow when other work shares the machine
    # (jobs written before CPU time was recorded fall back to wall time)
    use_cpu = frame.cpu_s_per_image_step.notna().all()
    column = "cpu_s_per_image_step" if use_cpu else "s_per_image_step"
    frame["cost_basis"] = "cpu" if use_cpu else "wall"
    frame["baseline"] = baseline
    frame["cost_vs_baseline"] = np.nan
    for _, group in frame.groupby("source"):
        base = group[group.attack == baseline]
        if len(base):
            frame.loc[group.index, "cost_vs_baseline"] = group[column] / base[column].iloc[0]
    return frame


def _plan_records(runs: list[RunDir], plan: str | None) -> tuple[str, list[dict]]:
    """(plan, the writer records of `runs` made for it); plan None: the newest record's."""
    records = [r for run in runs for r in run.read_shards().values() if isinstance(r, dict) and "plan" in r]
    if not records:
        raise RunDirError(
            f"{runs[0].root} holds no record of a transferlab run of this version (shards/*.json); run "
            f"`transferlab run CONFIG --out {runs[0].root}` to finish it"
        )
    if plan is None:
        plan = max(records, key=lambda r: r.get("updated", ""))["plan"]
    mine = [r for r in records if r["plan"] == plan]
    if not mine:
        raise RunDirError(f"no writer of {[str(r.root) for r in runs]} ran the plan {plan}")
    order = {"run": -1}
    mine.sort(key=lambda r: (order.get(r["scope"], r.get("shard", 0)), r.get("updated", "")))
    return plan, mine


def describe_missing(missing: list, shards: int, states: dict[str, str]) -> str:
    """What is missing, per job and per shard that owns the blocks (`states`: scope -> status)."""
    by_shard: dict[int, dict[str, list]] = {}
    for m in missing:
        by_shard.setdefault(m.block % shards, {}).setdefault(m.job.label, []).append(m)
    lines = []
    for k in sorted(by_shard):
        scope = f"shard-{k}-of-{shards}" if shards > 1 else "run"
        state = {"finished": "finished", "running": "started, not finished: running, or killed (run it "
                 "again to resume)"}.get(states.get(scope), "not run")
        jobs = "; ".join(
            f"{label}: {len(ms)} blocks ({sum(m.images for m in ms)} images unattacked, "
            f"{sum(not m.evaluated for m in ms)} blocks unevaluated)"
            for label, ms in by_shard[k].items()
        )
        who = f"shard {k}/{shards}" if shards > 1 else "the run"
        lines.append(f"  {who} ({state}): {jobs}")
    return "\n".join(lines)


def check_complete(runs: list[RunDir], cfg: dict, records: list[dict]) -> None:
    """Refuse to report a run that lacks attacked or evaluated blocks, listing them per shard."""
    missing = missing_work(runs, cfg, records[0]["job_keys"])
    if not missing:
        return
    shards = max(r.get("shards", 1) for r in records)
    states = {r["scope"]: r.get("status") for r in records}
    where = ", ".join(str(r.root) for r in runs)
    have = sorted(k for k, v in states.items() if v == "finished") or ["none"]
    raise IncompleteRun(
        f"{where} is not complete: {len(missing)} blocks of images lack their adversarial PNGs or target "
        f"evaluations (finished writers: {', '.join(have)}):\n{describe_missing(missing, shards, states)}\n"
        "Run the missing shards (the same command with their --shard K/N), then report again"
        + records_only_hint(runs)
    )


def records_only_hint(runs: list[RunDir]) -> str:
    """For a committed copy of a finished run (its tables, none of its images): the command that fits."""
    if all(run.records_csv.is_file() and not (run.root / "adv").is_dir() for run in runs):
        dirs = " ".join(str(run.root) for run in runs)
        return (f". {dirs} holds a finished run's tables but no adversarial images (a committed copy?): "
                f"`transferlab report {dirs} --records-only` re-renders its tables from records.csv")
    return ""


def report_run(run: RunDir, plan: str | None = None) -> dict[str, Any]:
    """Check that the run in `run` is complete and write its tables, plots and manifest."""
    plan, records = _plan_records([run], plan)
    cfg = ordered_config(records[0])
    check_complete([run], cfg, records)
    return write_reports(run, cfg, assemble_records(run, cfg), records)


@dataclass
class Measured:
    """What a run measured besides its records: per-step predictions (when recorded), passes per image,
    the cost table and the commits whose code attacked the images."""

    steps: dict = field(default_factory=dict)  # (attack, source) -> per-step records
    passes: dict = field(default_factory=dict)  # (attack, source) -> (passes per step, passes in total)
    costs: pd.DataFrame = field(default_factory=pd.DataFrame)
    commits: list = field(default_factory=list)
    best_step: pd.DataFrame | None = None  # best-step rows kept from results.csv (no per-step records)


def measured_of(run: RunDir, cfg: dict) -> Measured:
    """Gather `Measured` from the run's job files (job.json, cost/, steps/)."""
    jobs = jobs_of(cfg)
    steps = {(j.attack, j.source): run.read_steps(j.attack, j.source) for j in jobs}
    commits = {c.get("commit") or "" for j in jobs for cost in run.read_costs(j.attack, j.source).values()
               for c in cost.get("git", [])}
    return Measured({k: v for k, v in steps.items() if v is not None}, passes_of(run, jobs),
                    cost_table(run, cfg, baseline_of(cfg)), sorted(commits))


def write_reports(run: RunDir, cfg: dict, records: pd.DataFrame, writers: list[dict],
                  measured: Measured | None = None) -> dict[str, Any]:
    """records.csv, results.csv, costs.csv, gains.csv, table.md, transfer.png and manifest.json.

    `writers`: the records of every process that worked on the run (`shards/<scope>.json`), the first
    the primary one (the one-process run, else shard 0). `measured`: default, read from the job files."""
    measured = measured if measured is not None else measured_of(run, cfg)
    results = summarise(records, cfg["attacks"], measured.steps, measured.passes)
    if measured.best_step is not None and not measured.steps:
        results = pd.concat([results, measured.best_step], ignore_index=True)
        results = results.sort_values(["attack", "source", "target"], kind="stable",
                                      key=lambda c: c.map({v: k for k, v in enumerate(dict.fromkeys(c))}))
    atomic_write_csv(run.records_csv, records)
    atomic_write_csv(run.results_csv, results)
    baseline = baseline_of(cfg)
    costs = measured.costs
    atomic_write_csv(run.costs_csv, costs)
    outcome = "hit" if cfg.get("targeted") else "fooled"
    gains = (gains_over(records, baseline=baseline, seed=cfg["seed"], outcome=outcome) if baseline
             else empty_gains())
    atomic_write_csv(run.gains_csv, gains)
    totals = {k: v[1] for k, v in measured.passes.items()}
    methods = {name: "+".join(str(m) for m in np.atleast_1d(spec["method"]))
               for name, spec in cfg["attacks"].items()}
    matched = matched_gains(records, totals, methods, reference=MATCHED_REFERENCE, seed=cfg["seed"],
                            outcome=outcome)
    mi_line = [name for name, method in methods.items() if method == MATCHED_REFERENCE]
    atomic_write_csv(run.matched_gains_csv, matched)
    primary = writers[0]
    overrides = primary.get("overrides") or []
    # the table shows costs as costs.csv keeps them, so a re-render from the CSV gives the same bytes
    atomic_write_text(run.table_md, table_markdown(results, cfg, as_written(costs), gains, overrides)
                      + matched_section(matched, totals))
    if cfg.get("targeted"):
        transfer_plot(results, run.transfer_png, f"TARGETED: {cfg['name']}", "targeted_success")
        passes_plot(results, run.passes_png, f"TARGETED: {cfg['name']}: rate per compute", "targeted_success",
                    reference=mi_line)
    else:
        transfer_plot(results, run.transfer_png, cfg["name"])
        passes_plot(results, run.passes_png, f"{cfg['name']}: transfer per compute", reference=mi_line)
    notices = list(dict.fromkeys(n for w in writers for n in w.get("notices", [])))
    manifest = {
        "config": cfg,
        "attack_order": list(cfg["attacks"]),
        "config_path": primary.get("config_path"),
        "overrides": overrides,
        "seed": cfg["seed"],
        "device": primary.get("device"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "plan": primary["plan"],
        "baseline": baseline,
        "images_scanned": max(w.get("images_scanned", 0) for w in writers),
        "images_attacked": {
            s: int(records[records.source == s].image_id.nunique()) for s in records.source.unique()
        },
        "skipped_files": primary.get("skipped_files", []),
        "weights": primary.get("weights", {}),
        "notices": notices,
        "timings": primary.get("timings", {}),
        "threads": primary.get("threads"),
        "world_size": max(w.get("shards", 1) for w in writers),
        "shards": [shard_summary(w) for w in writers],
        "jobs": costs.to_dict(orient="records"),
        **primary.get("provenance", {}),
        # the commits whose code attacked the images (more than one when a run was resumed across commits)
        "job_commits": list(measured.commits),
    }
    atomic_write_json(run.manifest_json, manifest)
    return {"results": results, "records": records, "costs": costs, "manifest": manifest}


def report_from_records(run: RunDir) -> dict[str, Any]:
    """Re-render a finished run's tables, plots and manifest from its committed tables alone (records.csv,
    results.csv, costs.csv, manifest.json, shards/): no adversarial PNGs or evaluations needed, so a clone
    of results/ can be re-reported after the report code changes. The rates are recomputed from
    records.csv; passes, costs, commits and the best-step rows (when no per-step records are on disk) are
    carried from the run's tables; the manifest says it was re-rendered."""
    need = [run.records_csv, run.results_csv, run.costs_csv, run.manifest_json]
    missing = [p.name for p in need if not p.is_file()]
    if missing:
        raise RunDirError(f"{run.root}: --records-only needs {', '.join(missing)} (written by a finished "
                          "run's report); run `transferlab report` on the full run directory instead")
    try:
        old = json.loads(run.manifest_json.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{run.manifest_json} is not valid JSON ({exc})") from None
    plan, writers = _plan_records([run], old.get("plan"))
    cfg = ordered_config(writers[0])
    records = pd.read_csv(run.records_csv, keep_default_na=False, na_values=[""])
    results = pd.read_csv(run.results_csv)
    known = set(cfg["attacks"])
    stray = sorted(set(records.attack) - known)
    if stray:
        raise RunDirError(f"{run.records_csv}: attacks {stray} are not in the run's config {sorted(known)}")
    passes = {}  # runs tabled before passes were kept have none (NaN in the tables, as in their report)
    if {"passes_per_step", "passes"} <= set(results.columns):
        first = results.groupby(["attack", "source"], sort=False)[["passes_per_step", "passes"]].first()
        passes = {k: (float(v.passes_per_step), float(v.passes)) for k, v in first.iterrows()
                  if not np.isnan(v.passes)}
    steps = {}
    for job in jobs_of(cfg):
        per_step = run.read_steps(job.attack, job.source)
        if per_step is not None:
            steps[(job.attack, job.source)] = per_step
    best = results[results.metric == BEST_STEP]
    measured = Measured(steps, passes, pd.read_csv(run.costs_csv), list(old.get("job_commits", [])),
                        best_step=best if len(best) else None)
    report = write_reports(run, cfg, records, writers, measured)
    if "jobs" in old:  # costs.csv rounds; the manifest keeps the run's own figures
        report["manifest"]["jobs"] = old["jobs"]
    if "finished" in old:  # when the run finished, not when its tables were re-rendered
        report["manifest"]["finished"] = old["finished"]
    report["manifest"]["rendered_from_records"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **provenance()}
    atomic_write_json(run.manifest_json, report["manifest"])
    return report


def shard_summary(writer: dict) -> dict:
    """One writer of the run in the manifest: who, where, with how many threads, which images."""
    prov = writer.get("provenance", {})
    return {
        "scope": writer["scope"],
        "shard": writer.get("shard", 0),
        "shards": writer.get("shards", 1),
        "status": writer.get("status"),
        "started": writer.get("started"),
        "updated": writer.get("updated"),
        "host": writer.get("host"),
        "device": writer.get("device"),
        "threads": writer.get("threads"),
        "world": writer.get("world"),
        "git": (prov.get("git") or {}).get("commit"),
        "torch": (prov.get("versions") or {}).get("torch"),
        "timings": writer.get("timings"),
        "images": writer.get("images"),
    }
