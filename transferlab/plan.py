"""`transferlab run --dry-run`: resolve every model, weight file and attack; print the job plan and cost."""

from __future__ import annotations

from pathlib import Path

from transferlab.attacks.scaled import relative_factor
from transferlab.runner.resolve import attack_from_spec
from transferlab.runner.trajectories import share_key


def timm_weights_status(name: str) -> tuple[bool | None, str]:
    """Whether timm's pretrained weights for `name` are in the local Hugging Face cache (no network use)."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
    except Exception as exc:  # unknown architecture or tag
        return False, f"not a timm pretrained model ({exc.__class__.__name__}: {exc})"
    if cfg is None:
        return False, "timm knows no pretrained weights for this name"
    hub = getattr(cfg, "hf_hub_id", None)
    if not hub:
        return (
            None,
            f"timm pretrained from {getattr(cfg, 'url', None) or 'its own source'} (downloaded on first use)",
        )
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(hub, filename)
        if isinstance(hit, str):
            return True, hit
    return False, f"hf-hub:{hub} not in the local cache (needs a download, or set models.weights.{name})"


def member_passes(cfg: dict, source: str) -> int:
    """Source-model passes per model call: an ensemble's members, a collection's sets per step, else 1."""
    collection = (cfg["models"].get("collections") or {}).get(source)
    if collection is not None:
        return max(1, collection["n_grad"])  # -1 (all sets) is counted when the sets are loaded
    return len((cfg["models"].get("ensembles") or {}).get(source) or [None])


def print_plan(cfg: dict, out: Path, shard=None, threads: dict | None = None) -> int:
    from transferlab.data import open_dataset
    from transferlab.models import list_models

    data = open_dataset(cfg["data"])
    limit = cfg["data"]["limit"] or len(data)
    skip = cfg["data"].get("skip") or 0
    left_out = f", after the first {skip} eligible" if skip else ""
    print(
        f"config {cfg['name']}: {len(data)} images of kind '{data.name}' at {data.resolution} px; "
        f"up to {limit} eligible per source ({cfg['data']['eligibility']} rule{left_out}); output {out}/"
    )
    rows = {r["name"]: r for r in list_models(weights_dir=cfg["models"]["weights_dir"])}
    ensembles = cfg["models"].get("ensembles") or {}
    members = [m for s in cfg["models"]["sources"] for m in ensembles.get(s, [])]
    names = list(dict.fromkeys([*cfg["models"]["sources"], *members, *cfg["models"]["targets"]]))
    missing = []
    print("\nmodels:")
    for name in names:
        if name in ensembles:  # available when its members are (listed below)
            print(f"  {name:<28} {'ensemble':<20} {len(ensembles[name])} members fused by "
                  f"{cfg['models']['fusion']}")
            continue
        explicit = (cfg["models"].get("weights") or {}).get(name)
        row = rows.get(name)
        collection = (cfg["models"].get("collections") or {}).get(name)
        if collection is not None:
            from transferlab.weights import MissingWeightsError, collection_files

            try:
                files = collection_files(collection["weights"], name)
                ok, where = True, (f"{len(files)} weight sets of {collection['model']} in "
                                   f"{collection['weights']}, {collection['n_grad']} per step "
                                   f"({collection['order']})")
            except MissingWeightsError as exc:
                ok, where = False, str(exc)
        elif explicit:
            from transferlab.weights import split_pin

            ok = split_pin(explicit)[0].is_file()
            where = explicit
        elif row is not None:
            ok, where = row["available"], row["path"] or row["weights_source"]
        else:
            ok, where = timm_weights_status(name)
        status = {True: "available", False: "MISSING", None: "unknown until loaded"}[ok]
        if ok is False:
            missing.append(name)
        print(f"  {name:<28} {status:<20} {where}")
    print("\njobs (attack x source), forward+backward passes per image:")
    total = 0
    width = max([14, *(len(name) for name in cfg["attacks"])])
    shared: dict[str, dict[str, float]] = {}  # share key -> entry -> its passes (one run of the longest)
    for name, spec in cfg["attacks"].items():
        attack = attack_from_spec(name, spec, data.resolution, cfg["seed"])
        per_source = [attack.bind_source(k).passes_total() * k
                      for k in (member_passes(cfg, source) for source in cfg["models"]["sources"])]
        passes = f"{per_source[0]:g}" if len(set(per_source)) == 1 else \
            "/".join(f"{p:g}" for p in per_source) + " (by source)"
        key = share_key(cfg, spec, attack)
        if key is None:
            total += sum(per_source) * limit
        else:
            shared.setdefault(key, {})[name] = sum(per_source) * limit
        params = {c.name: c.params() for c in attack.components}
        for comp, given in spec["params"].items():  # budget-relative values: the expression beside its value
            for key, value in (given or {}).items():
                if relative_factor(value) is not None and comp in params:
                    params[comp][key] = f"{params[comp][key]:g} (= {value.strip()} at eps {spec['eps']:g})"
        print(
            f"  {name:<{width}} {spec['norm']} eps={spec['eps']}/255 alpha={spec['alpha']}/255 "
            f"steps={spec['steps']} "
            f"random_start={attack.random_start}  ~{passes} passes/image  {params}"
        )
    for group in shared.values():
        total += max(group.values())
        if len(group) > 1:
            longest = max(group, key=group.get)
            alone = sum(group.values()) / limit
            print(f"  one trajectory: {', '.join(group)} share the run of {longest} "
                  f"({group[longest] / limit:g} passes/image for all, not {alone:g})")
    print(
        f"\nestimated: about {int(total):,} image forward+backward passes on the sources "
        f"(+ {limit * len(names) * (1 + len(cfg['attacks'])):,} forwards for clean and target predictions)"
    )
    if shard is not None and shard.sharded:
        sizes = sorted({spec["batch_size"] for spec in cfg["attacks"].values()})
        shares = []
        for size in sizes:
            blocks = -(-limit // size)
            mine = sum(shard.owns(b) for b in range(blocks))
            shares.append(f"{mine} of {blocks} blocks of {size} images")
        print(f"shard {shard}: every {shard.count}-th block of batch_size images from block {shard.index}: "
              + "; ".join(shares) + " (for data.limit eligible images)")
        if any(-(-limit // size) < shard.count for size in sizes):
            print(f"  fewer blocks than the {shard.count} shards: some shards get no work; lower "
                  "attack_defaults.batch_size")
    if threads is not None:
        print(f"torch threads: {threads['threads']} ({threads['rule']})")
        if threads.get("allocator"):
            print(f"allocator: {threads['allocator']}")
    if missing:
        print(f"\nmissing weights: {', '.join(missing)} — `transferlab models` says how to obtain them")
        return 1
    return 0
