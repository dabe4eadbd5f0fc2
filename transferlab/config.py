"""Experiment configs: YAML -> validated, defaults filled, overrides applied.

Configs are data. Every key is checked against the schema below; an unknown key is rejected with
its dotted path and the file it came from. ε and α are given in 1/255 steps (for L2: the
root-mean-square per pixel, i.e. ‖δ‖₂ ≤ ε/255·√d).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from transferlab.errors import ConfigError, TransferlabError
from transferlab.names import check_name

ANY = object()  # a free-form value (e.g. reference numbers)

LOOP_KEYS: dict[str, Any] = {
    "norm": "linf",
    "eps": 16.0,
    "alpha": 2.0,
    "steps": 10,
    "random_start": None,  # None: the components' convention (off for IR), else off
    "batch_size": 16,
    "max_forward": None,  # None: chosen from the resolution
}

SCHEMA: dict[str, Any] = {
    "name": "experiment",
    "description": "",
    "seed": 0,
    "device": "auto",
    "data": {
        "kind": "samples",  # samples | nips17 | folder
        "root": None,
        "resolution": 224,
        "crop_pct": 0.875,
        "limit": None,
        "skip": 0,  # leave out the first `skip` eligible images of each source (a run in parts)
        "eligibility": "source",  # source | all
        "on_error": "raise",  # raise | skip
    },
    "models": {
        "sources": ["tf_efficientnet_lite0"],
        "targets": ["tf_efficientnet_lite0"],
        "weights_dir": None,
        "weights": ANY,  # {model name: local checkpoint path}
        "fusion": "logits",  # how an ensemble source fuses its members: logits | probs | loss
        "ensembles": ANY,  # filled from list entries of `sources`: {name: [members]}
        "memory_format": "contiguous",  # contiguous | channels_last (NHWC: faster on CPU for MBConv nets)
        # weight collections used as sources (LGV): {name: {model, weights: folder|glob, n_grad, order}}
        "collections": ANY,
    },
    "attack_defaults": dict(LOOP_KEYS),
    "attacks": ANY,  # {name: {method: ..., <loop keys>, <component>: {params}}}
    "eval": {
        "record_every": 0,  # >0: record target predictions every k steps (best-step metric)
        "baseline": None,  # the attack gains and costs are measured against; None: the plain PGD entry
    },
    "reference": ANY,  # the paper's numbers, printed beside ours
    "plugins": [],  # modules imported before attack names resolve (transferlab.plugins)
    "targeted": False,  # attack toward a target class per image (success = predicts it)
    "target_class": ANY,  # dataset (default; NIPS'17 TargetClass) | random (per image stream) | class index
}

CHOICES = {
    "data.kind": ("samples", "nips17", "folder"),
    "data.eligibility": ("source", "all"),
    "data.on_error": ("raise", "skip"),
    "attack_defaults.norm": ("linf", "l2"),
    "models.fusion": ("logits", "probs", "loss"),
    "models.memory_format": ("contiguous", "channels_last"),
    "device": ("auto", "cpu", "cuda", "mps"),
}


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, with YAML 1.2 floats: `1e9` and `1E-3` are numbers, not strings."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in list("-+0123456789."):
    _Loader.yaml_implicit_resolvers[_first] = [
        r for r in _Loader.yaml_implicit_resolvers.get(_first, []) if r[0] != "tag:yaml.org,2002:float"
    ]
    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, [_first])


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no code), reading `1e9` as a float."""
    return yaml.load(text, Loader=_Loader)


def _fail(where: str, msg: str) -> None:
    raise ConfigError(f"{where}: {msg}")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_loop_value(key: str, value: Any, path: str, where: str) -> Any:
    """One loop setting (`attack_defaults` or an attack entry), checked by type and range.

    ε and α in 1/255 steps: 0 < ε ≤ 255 and 0 < α ≤ 255 (for L2: the RMS per pixel, same bounds);
    steps, batch_size and max_forward are positive integers; random_start is true, false or null.
    """
    where_key = f"'{path}'"
    if key == "norm":
        if value not in ("linf", "l2"):
            _fail(where, f"{where_key} must be 'linf' or 'l2', got {value!r}")
    elif key in ("eps", "alpha"):
        if not _number(value):
            _fail(where, f"{where_key} must be a number (in 1/255 steps), got {value!r}")
        if not 0 < value <= 255:
            _fail(where, f"{where_key} must be in (0, 255] (1/255 steps), got {value!r}")
        value = float(value)
    elif key in ("steps", "batch_size") or (key == "max_forward" and value is not None):
        if not _integer(value) or value < 1:
            _fail(where, f"{where_key} must be a positive integer, got {value!r}")
    elif key == "random_start":
        if value is not None and not isinstance(value, bool):
            _fail(where, f"{where_key} must be true, false or null (unquoted), got {value!r}")
    return value


def _check(user: Any, schema: Any, path: str, where: str) -> Any:
    """Merge `user` into the defaults of `schema`, rejecting unknown keys."""
    if schema is ANY:
        return copy.deepcopy(user)
    if isinstance(schema, dict):
        if user is None:
            user = {}
        if not isinstance(user, dict):
            _fail(where, f"'{path}' must be a mapping, got {type(user).__name__}")
        out = {}
        for key in user:
            if key not in schema:
                close = difflib.get_close_matches(str(key), list(schema), n=1)
                hint = f" (did you mean '{_join(path, close[0])}'?)" if close else ""
                _fail(where, f"unknown key '{_join(path, key)}'{hint}; allowed: {sorted(schema)}")
        for key, sub in schema.items():
            out[key] = _check(user.get(key, _default(sub)), sub, _join(path, key), where)
        return out
    value = user
    if path in CHOICES and value not in CHOICES[path]:
        _fail(where, f"'{path}' must be one of {CHOICES[path]}, got {value!r}")
    loop_key = path.startswith("attack_defaults.")  # checked with the attack entries' rules
    if schema is not None and value is not None and not loop_key and not _same_kind(value, schema):
        _fail(where, f"'{path}' must be {type(schema).__name__}, got {value!r}")
    return copy.deepcopy(value)


def _default(sub: Any) -> Any:
    if sub is ANY:
        return None
    return {} if isinstance(sub, dict) else sub


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return _number(value)
    if isinstance(default, int):
        return _integer(value)
    return isinstance(value, type(default))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_attacks(cfg: dict, where: str) -> None:
    from transferlab.attacks.defaults import recorded_defaults
    from transferlab.attacks.registry import make_component, parse_method, resolve_component
    from transferlab.attacks.scaled import resolve_relative

    attacks = cfg["attacks"]
    if not isinstance(attacks, dict) or not attacks:
        _fail(where, "'attacks' must be a non-empty mapping of attack name -> {method: ..., ...}")
    defaults = cfg["attack_defaults"]
    for key, value in defaults.items():
        defaults[key] = check_loop_value(key, value, f"attack_defaults.{key}", where)
    for name, spec in list(attacks.items()):
        path = f"attacks.{name}"
        check_name(name, f"attack name '{path}'", where)
        if spec is None or isinstance(spec, str):
            spec = {"method": spec or name}
        if not isinstance(spec, dict):
            _fail(where, f"'{path}' must be a mapping or a method string")
        spec = dict(spec)
        method = spec.pop("method", name)
        try:
            components = parse_method(method)
            for component in components:
                resolve_component(component)
        except ConfigError as exc:
            _fail(where, f"'{path}.method': {exc}")
        resolved = {"method": method}
        for key, default in defaults.items():
            resolved[key] = check_loop_value(key, spec.pop(key, default), f"{path}.{key}", where)
        params = {}
        aliases = _component_aliases(components)
        for key, value in spec.items():
            key = aliases.get(key, key)
            if key not in components:
                allowed = ["method", *LOOP_KEYS, *components]
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean '{path}.{close[0]}'?)" if close else ""
                _fail(where, f"unknown key '{path}.{key}'{hint}; allowed: {allowed}")
            if not isinstance(value, dict):
                _fail(where, f"'{path}.{key}' must be a mapping of parameters")
            at = f"{where}: '{path}.{key}': "
            make_component(key, resolve_relative(resolve_component(key), key, value, resolved["eps"], at), at)
            params[key] = value
        resolved["params"] = params
        changed = recorded_defaults(method, params)
        if changed:  # (absent otherwise: the keys of other attacks stay those of earlier runs)
            resolved["defaults"] = changed
        attacks[name] = resolved


def _component_aliases(components: list[str]) -> dict[str, str]:
    """Short names for import-path components (`pkg.mod:MyComponent` -> `MyComponent` and its
    registered name), so that `attacks.a.MyComponent.param=3` reaches their parameters as an override."""
    from transferlab.attacks.registry import resolve_component

    aliases = {}
    for name in components:
        if ":" in name:
            aliases[name.partition(":")[2]] = name
            aliases[resolve_component(name).name] = name
    return aliases


def parse_override(text: str) -> tuple[list[str], Any]:
    """'data.limit=20' -> (['data', 'limit'], 20); values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, _, raw = text.partition("=")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not a valid YAML scalar ({exc})") from None
    return key.strip().split("."), value


def apply_override(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: '{k}' is not a mapping")
    node[keys[-1]] = value


def load_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), plugins: list[str] | tuple[str, ...] = ()
) -> dict:
    """Read, override, validate and complete a YAML config; `plugins` (from `--plugin`) are imported with
    the config's own `plugins:` before any attack name resolves, and recorded in it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for text in overrides:
        apply_override(raw, *parse_override(text))
    where = str(path) + (f" (with overrides {list(overrides)})" if overrides else "")
    listed = raw.get("plugins") or []
    if not isinstance(listed, list):
        _fail(where, f"'plugins' must be a list of module names or .py files, got {listed!r}")
    from transferlab.plugins import load_plugins

    load_plugins(listed, f"{where}: 'plugins'")
    load_plugins(plugins, "--plugin")
    raw["plugins"] = list(dict.fromkeys([*listed, *plugins]))
    return validate(raw, where)


def validate(raw: dict, where: str = "<config>") -> dict:
    cfg = _check(raw, SCHEMA, "", where)
    if cfg["attacks"] is None:
        _fail(where, "missing 'attacks'")
    _check_attacks(cfg, where)
    check_name(cfg["name"], "'name'", where)
    _check_models(cfg["models"], where)
    _check_data(cfg["data"], where)
    if not _integer(cfg["seed"]) or cfg["seed"] < 0:
        _fail(where, f"'seed' must be a non-negative integer, got {cfg['seed']!r}")
    every = cfg["eval"]["record_every"]
    if not _integer(every) or every < 0:
        _fail(where, f"'eval.record_every' must be an integer >= 0, got {every!r}")
    check_baseline(cfg, where)
    if not isinstance(cfg["targeted"], bool):
        _fail(where, f"'targeted' must be true or false, got {cfg['targeted']!r}")
    choice = cfg["target_class"] = "dataset" if cfg["target_class"] is None else cfg["target_class"]
    if not (choice in ("dataset", "random") or (_integer(choice) and choice >= 0)):
        _fail(where, f"'target_class' must be 'dataset', 'random' or a class index >= 0, got {choice!r}")
    return cfg


def check_baseline(cfg: dict, where: str) -> None:
    """`eval.baseline`, when given, names an attack of the config."""
    named = cfg["eval"]["baseline"]
    if named is None:
        return
    if not isinstance(named, str) or named not in cfg["attacks"]:
        close = difflib.get_close_matches(str(named), list(cfg["attacks"]), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _fail(
            where,
            f"'eval.baseline' is {named!r}, which names no attack of the config{hint}; its attacks: "
            f"{list(cfg['attacks'])} (leave it out to use the plain PGD entry)",
        )


def _check_ensembles(models: dict, where: str) -> None:
    """A list entry of `models.sources` is an ensemble: named by its members joined with '+'."""
    ensembles = dict(models.get("ensembles") or {})
    sources = []
    for k, entry in enumerate(models["sources"] if isinstance(models["sources"], list) else []):
        if isinstance(entry, list):
            if len(entry) < 2 or not all(isinstance(m, str) for m in entry):
                _fail(where, f"'models.sources[{k}]': an ensemble lists 2+ model names, got {entry!r}")
            if len(set(entry)) != len(entry):
                _fail(where, f"'models.sources[{k}]' names a member twice: {entry!r}")
            for j, member in enumerate(entry):
                check_name(member, f"model name 'models.sources[{k}][{j}]'", where)
            name = "+".join(entry)
            ensembles[name] = list(entry)
            entry = name
        sources.append(entry)
    if isinstance(models["sources"], list):
        models["sources"] = sources
    models["ensembles"] = ensembles


COLLECTION_KEYS = {"model": None, "weights": None, "n_grad": 1, "order": "shuffle"}


def _check_collections(models: dict, where: str) -> None:
    """`models.collections`: weight sets of one registered model, a source named by the key (LGV)."""
    collections = models.get("collections") or {}
    if not isinstance(collections, dict):
        _fail(where, f"'models.collections' must map names to {{model, weights, n_grad, order}}, got "
                     f"{collections!r}")
    resolved = {}
    for name, entry in collections.items():
        path = f"models.collections.{name}"
        check_name(name, f"collection name '{path}'", where)
        if not isinstance(entry, dict):
            _fail(where, f"'{path}' must be a mapping with keys {list(COLLECTION_KEYS)}")
        for key in entry:
            if key not in COLLECTION_KEYS:
                _fail(where, f"unknown key '{path}.{key}'; allowed: {list(COLLECTION_KEYS)}")
        spec = {**COLLECTION_KEYS, **entry}
        for key in ("model", "weights"):
            if not isinstance(spec[key], str) or not spec[key].strip():
                _fail(where, f"'{path}.{key}' is required: "
                             + ("the registered model the weight sets belong to" if key == "model"
                                else "a folder of .safetensors weight sets, or a glob"))
        check_name(spec["model"], f"model name '{path}.model'", where)
        n = spec["n_grad"]
        if not _integer(n) or not (n >= 1 or n == -1):
            _fail(where, f"'{path}.n_grad' must be a positive integer (sets per attack step) or -1 (all), "
                         f"got {n!r}")
        if spec["order"] not in ("shuffle", "cycle"):
            _fail(where, f"'{path}.order' must be 'shuffle' or 'cycle', got {spec['order']!r}")
        if name in models["targets"]:
            _fail(where, f"'{path}': a collection is a source; evaluate transfer to its model "
                         f"({spec['model']}) instead")
        resolved[name] = spec
    models["collections"] = resolved


def _check_models(models: dict, where: str) -> None:
    _check_ensembles(models, where)
    _check_collections(models, where)
    for key in ("sources", "targets"):
        names = models[key]
        if not isinstance(names, list) or not names:
            _fail(where, f"'models.{key}' must be a non-empty list of model names")
        for k, name in enumerate(names):
            check_name(name, f"model name 'models.{key}[{k}]'", where)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            _fail(where, f"'models.{key}' names {twice} more than once")
    for key in ("weights_dir",):
        if models[key] is not None and not isinstance(models[key], str):
            _fail(where, f"'models.{key}' must be a folder path, got {models[key]!r}")
    weights = models["weights"]
    if weights is None:
        return
    if not isinstance(weights, dict):
        _fail(where, f"'models.weights' must map model names to checkpoint paths, got {weights!r}")
    members = [m for group in (models.get("ensembles") or {}).values() for m in group]
    known = list(dict.fromkeys([*models["sources"], *models["targets"], *members]))
    for name, file in weights.items():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean 'models.weights.{close[0]}'?)" if close else ""
            _fail(where, f"'models.weights.{name}' names no model of the run{hint}; its models: {known}")
        if not isinstance(file, str) or not file.strip():
            _fail(where, f"'models.weights.{name}' must be a checkpoint path (optionally path#sha256=<hex>)")
        from transferlab.weights import split_pin

        try:
            split_pin(file)
        except TransferlabError as exc:
            _fail(where, f"'models.weights.{name}': {exc}")


def _check_data(data: dict, where: str) -> None:
    limit = data["limit"]
    if limit is not None and (not _integer(limit) or limit < 1):
        _fail(where, f"'data.limit' must be a positive integer or null, got {limit!r}")
    skip = data["skip"]
    if not _integer(skip) or skip < 0:
        _fail(where, f"'data.skip' must be a non-negative integer (eligible images left out), got {skip!r}")
    resolution = data["resolution"]
    if not _integer(resolution) or not 8 <= resolution <= 4096:
        _fail(where, f"'data.resolution' must be an integer (pixels) in [8, 4096], got {resolution!r}")
    crop = data["crop_pct"]
    if not _number(crop) or not 0 < crop <= 1:
        _fail(where, f"'data.crop_pct' must be a number in (0, 1], got {crop!r}")
    if data["root"] is not None and not isinstance(data["root"], str):
        _fail(where, f"'data.root' must be a folder path, got {data['root']!r}")


def config_hash(cfg: dict, ignore: tuple[str, ...] = ("description",)) -> str:
    """Digest of everything that changes results (not free text)."""
    slim = {k: v for k, v in cfg.items() if k not in ignore}
    return hashlib.sha256(json.dumps(slim, sort_keys=True, default=str).encode()).hexdigest()[:16]
