"""`transferlab run --dry-run`: resolve every model, weight file and attack; print the job plan and cost."""

from __future__ import annotations

import math
from pathlib import Path

from transferlab.experiment import auto_max_forward, loop_units


def print_plan(cfg: dict, out: Path) -> int:
    from transferlab.attacks.registry import build_attack
    from transferlab.data import open_dataset
    from transferlab.models import list_models

    data = open_dataset(cfg["data"])
    limit = cfg["data"]["limit"] or len(data)
    print(f"config {cfg['name']}: {len(data)} images of kind '{data.name}' at {data.resolution} px; "
          f"up to {limit} eligible per source ({cfg['data']['eligibility']} rule); output {out}/")
    rows = {r["name"]: r for r in list_models(weights_dir=cfg["models"]["weights_dir"])}
    names = list(dict.fromkeys([*cfg["models"]["sources"], *cfg["models"]["targets"]]))
    missing = []
    print("\nmodels:")
    for name in names:
        explicit = (cfg["models"].get("weights") or {}).get(name)
        row = rows.get(name)
        if explicit:
            ok = Path(explicit).is_file()
            where = explicit
        elif row is not None:
            ok, where = row["available"], row["path"] or row["weights_source"]
        else:
            ok, where = None, "timm pretrained (downloaded or from the local cache)"
        status = {True: "available", False: "MISSING", None: "unknown until loaded"}[ok]
        if ok is False:
            missing.append(name)
        print(f"  {name:<28} {status:<20} {where}")
    print("\njobs (attack x source), forward+backward passes per image:")
    total = 0
    for name, spec in cfg["attacks"].items():
        eps, alpha = loop_units(spec, data.resolution)
        attack = build_attack(spec["method"], spec["params"], eps=eps, alpha=alpha, steps=spec["steps"],
                              norm=spec["norm"], random_start=spec["random_start"], seed=cfg["seed"],
                              max_forward=spec["max_forward"] or auto_max_forward(data.resolution), name=name)
        per_step = math.prod(c.batch_multiplier() for c in attack.components)
        passes = per_step * attack.steps
        total += passes * limit * len(cfg["models"]["sources"])
        params = {c.name: c.params() for c in attack.components}
        print(f"  {name:<14} {spec['norm']} eps={spec['eps']}/255 alpha={spec['alpha']}/255 steps={spec['steps']} "
              f"random_start={attack.random_start}  ~{passes} passes/image  {params}")
    print(f"\nestimated: about {total:,} image forward+backward passes on the sources "
          f"(+ {limit * len(names) * (1 + len(cfg['attacks'])):,} forwards for clean and target predictions)")
    if missing:
        print(f"\nmissing weights: {', '.join(missing)} — `transferlab models` says how to obtain them")
        return 1
    return 0
