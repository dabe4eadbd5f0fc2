"""The identity of a run's jobs and of its plan: what decides the bytes of every file a job writes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

KEY_FORMAT = 2  # job keys include the source's weights digest


@dataclass(frozen=True)
class Job:
    """One attack on one source model."""

    attack: str
    source: str
    spec: dict

    def __hash__(self) -> int:
        return hash((self.attack, self.source))

    @property
    def label(self) -> str:
        return f"{self.attack} on {self.source}"


def jobs_of(cfg: dict) -> list[Job]:
    """Every (attack, source) job of a validated config, in the config's order."""
    return [
        Job(attack, source, spec)
        for attack, spec in cfg["attacks"].items()
        for source in cfg["models"]["sources"]
    ]


def data_identity(cfg: dict) -> dict:
    """The data settings that decide an image's clean pixels and so its result (`data.limit` only extends
    a run and `data.skip` only leaves images out: neither changes any image's result)."""
    return {k: v for k, v in cfg["data"].items() if k not in ("limit", "skip", "on_error")}


def _digest(payload: object, size: int = 16) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:size]


def job_key(cfg: dict, job: Job, weights_digest: str | None) -> str:
    """Everything that determines a job's images: attack settings, seed, data and the source's weights
    (by digest); `data.limit` is not part of it (more images extend). `weights_digest=None`: the key of
    runs made before weights digests were recorded."""
    payload = {
        "attack": job.spec,
        "source": job.source,
        "seed": cfg["seed"],
        "data": data_identity(cfg),
        "weights": (cfg["models"].get("weights") or {}).get(job.source),
    }
    if weights_digest is not None:
        payload["weights_digest"] = weights_digest
    if cfg.get("targeted"):  # (absent when untargeted: the keys of earlier runs stay valid)
        payload["targeted"] = {"target_class": cfg["target_class"]}
    if cfg["models"].get("memory_format", "contiguous") != "contiguous":  # (absent by default, as above)
        payload["memory_format"] = cfg["models"]["memory_format"]
    members = (cfg["models"].get("ensembles") or {}).get(job.source)
    if members:
        payload["ensemble"] = {"members": members, "fusion": cfg["models"]["fusion"]}
    return _digest(payload)


def white_box(cfg: dict, source: str, target: str) -> bool:
    """A target is white-box for a source when it is the source, one of its ensemble's members, or the
    model a weight collection (LGV) was continued from."""
    collection = (cfg["models"].get("collections") or {}).get(source)
    if collection is not None and target == collection["model"]:
        return True
    return target == source or target in (cfg["models"].get("ensembles") or {}).get(source, [])


def plan_digest(cfg: dict, digests: dict[str, str]) -> str:
    """Identity of everything a run's result tables depend on: every job's key, the images (data and
    `data.limit`), the targets and their weights, the evaluation settings. Shards of one run, and the
    directories `transferlab report` merges, must agree on it."""
    payload = {
        "jobs": {f"{j.attack}/{j.source}": job_key(cfg, j, digests[j.source]) for j in jobs_of(cfg)},
        "data": data_identity(cfg),
        "limit": cfg["data"]["limit"],
        **({"skip": cfg["data"]["skip"]} if cfg["data"].get("skip") else {}),  # absent at 0: old digests hold
        "targets": {t: digests[t] for t in cfg["models"]["targets"]},
        "eval": cfg["eval"],
        "seed": cfg["seed"],
    }
    if cfg["models"].get("memory_format", "contiguous") != "contiguous":
        payload["memory_format"] = cfg["models"]["memory_format"]
    return _digest(payload)
