"""Tables, plots and the manifest written next to every run's results."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from transferlab.eval.compare import gains_markdown, gains_over  # noqa: E402
from transferlab.eval.transfer import summarise  # noqa: E402
from transferlab.io import atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text  # noqa: E402


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
            heads.append(f"{t}{' (white-box)' if t == source else ''} {n_text}")
        lines.append(f"**source: {source}**\n")
        lines.append("| attack | " + " | ".join(heads) + " |")
        lines.append("|---|" + "---|" * len(targets))
        for attack, rows in group.groupby("attack", sort=False):
            cells = {r.target: rate_cell(r) for r in rows.itertuples()}
            lines.append(f"| {attack} | " + " | ".join(cells.get(t, "") for t in targets) + " |")
            ref = (reference or {}).get(attack)
            if isinstance(ref, dict):
                lines.append("| ↳ paper | " + " | ".join(str(ref.get(t, "")) for t in targets) + " |")
        lines.append("")
    return "\n".join(lines)


def settings_section(cfg: dict, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The settings every attack ran with, from the resolved config (not the config's free text)."""
    lines = ["| attack | method | norm | ε | α | steps | random start | parameters |", "|---|" + "---|" * 7]
    for name, spec in cfg["attacks"].items():
        method = "+".join(str(m) for m in np.atleast_1d(spec["method"]))
        start = {None: "default", True: "yes", False: "no"}[spec["random_start"]]
        params = "; ".join(f"{k}: {v}" for k, v in spec["params"].items()) or "-"
        lines.append(
            f"| {name} | {method} | {spec['norm']} | {spec['eps']:g} | {spec['alpha']:g} | {spec['steps']} "
            f"| {start} | {params} |"
        )
    note = f"Overrides on the command line: `{' '.join(overrides)}`.\n\n" if overrides else ""
    return "\n## Settings (as run; ε, α in 1/255)\n\n" + note + "\n".join(lines) + "\n"


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
        "Transfer success: fraction of attacked images the target misclassifies after the attack, over the "
        "images it classifies correctly when clean (white-box column: the source itself). Fixed budget "
        "(final step); adversarial images quantised to 8 bits by rounding and clipped into the ε-ball. "
        "Cells: rate [95% Wilson interval]; ε, α in 1/255.\n",
        markdown_table(results, "transfer_success", cfg.get("reference")),
        settings_section(cfg, overrides),
        gains_section(gains),
        best_step_section(results),
        "\n## Error rate over all attacked images\n",
        markdown_table(results, "error_rate"),
        "\n## Cost\n",
        "Attack time per image per step in seconds (wall, and CPU time of the process), model forwards "
        "per image per step, and the ratio to PGD's time in the same run (`cost_basis`: CPU time, which "
        "other work on the machine does not inflate; wall time for jobs recorded before CPU time was "
        "kept). `python bench/speed.py` measures these ratios side by side in one process.\n",
        frame_markdown(costs),
        "",
    ]
    return "\n".join(p for p in parts if p is not None)


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
    from transferlab.eval.transfer import BEST_STEP

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


def transfer_plot(results: pd.DataFrame, path: Path, title: str) -> None:
    """Grouped bars: one group per target, one bar per attack, 95% intervals as error bars."""
    sub = results[results.metric == "transfer_success"]
    sources = list(dict.fromkeys(sub.source))
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
            ax.bar(xs, rows.success_rate, width, yerr=err, capsize=2, label=attack)
        ax.set_xticks(range(len(targets)))
        ax.set_xticklabels([f"{t}\n(white-box)" if t == source else t for t in targets], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("transfer success (95% CI)")
        ax.set_title(f"source: {source}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def job_metas(exp) -> list[tuple[Any, dict]]:
    """(job, its job.json) for every job of the run, each file read once."""
    import json

    return [(job, json.loads((exp.adv_dir(job) / "job.json").read_text())) for job in exp.jobs()]


def cost_table(metas: list[tuple[Any, dict]]) -> pd.DataFrame:
    rows = []
    for job, meta in metas:
        rows.append(
            {
                "attack": job.attack,
                "source": job.source,
                "images": meta["images"],
                "steps": meta["steps"],
                "seconds": meta["seconds"],
                "s_per_image_step": meta["seconds_per_image_step"],
                "cpu_s_per_image_step": meta.get("cpu_seconds_per_image_step", float("nan")),
                "forwards_per_image_step": meta["forwards_per_image_step"],
            }
        )
    frame = pd.DataFrame(rows)
    # CPU time of the process: unlike wall time, it does not grow when other work shares the machine
    # (jobs written before CPU time was recorded fall back to wall time)
    use_cpu = frame.cpu_s_per_image_step.notna().all()
    column = "cpu_s_per_image_step" if use_cpu else "s_per_image_step"
    frame["cost_basis"] = "cpu" if use_cpu else "wall"
    for _, group in frame.groupby("source"):
        base = group[group.attack == "pgd"]
        if len(base):
            frame.loc[group.index, "cost_vs_pgd"] = group[column] / base[column].iloc[0]
    return frame


def write_reports(exp, records: pd.DataFrame) -> dict[str, Any]:
    """records.csv, results.csv, table.md, transfer.png and manifest.json in the run directory."""
    out: Path = exp.out
    cfg = exp.cfg
    steps = {(j.attack, j.source): exp.step_records(j) for j in exp.jobs()}
    results = summarise(records, cfg["attacks"], {k: v for k, v in steps.items() if v is not None})
    atomic_write_csv(out / "records.csv", records)
    atomic_write_csv(out / "results.csv", results)
    metas = job_metas(exp)
    costs = cost_table(metas)
    atomic_write_csv(out / "costs.csv", costs)
    gains = gains_over(records, baseline="pgd", seed=cfg["seed"])
    atomic_write_csv(out / "gains.csv", gains)
    atomic_write_text(out / "table.md", table_markdown(results, cfg, costs, gains, exp.overrides))
    transfer_plot(results, out / "transfer.png", cfg["name"])
    manifest = {
        "config": cfg,
        "config_path": exp.config_path,
        "overrides": exp.overrides,
        "seed": cfg["seed"],
        "device": str(exp.device),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "images_scanned": exp.scanned,
        "images_attacked": {
            s: int(records[records.source == s].image_id.nunique()) for s in records.source.unique()
        },
        "skipped_files": [list(s) for s in exp.dataset.skipped],
        "weights": exp.model_files(),
        "notices": exp.notices,
        "timings": exp.timings,
        "jobs": costs.to_dict(orient="records"),
        **exp.provenance,
        # the commits whose code attacked the images (more than one when a run was resumed across commits)
        "job_commits": sorted({c["commit"] or "" for _, meta in metas for c in meta.get("git", [])}),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return {"results": results, "records": records, "costs": costs, "manifest": manifest}
