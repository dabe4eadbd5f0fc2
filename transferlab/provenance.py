"""What produced a result: package versions, git commit, machine. Goes into every manifest."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = (
    "transferlab",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pandas",
    "matplotlib",
    "pillow",
    "PyYAML",
)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | Path | None = None) -> dict[str, object]:
    """Commit of the checkout holding the package (None outside a checkout) and whether it is dirty."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


#: instruction-set extensions that change which float kernels torch runs (and so the last bits of results)
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "asimd", "sve",
)


def cpu_info() -> dict[str, object]:
    """CPU model name and the ISA extensions torch's kernels dispatch on (from /proc/cpuinfo on Linux)."""
    model, flags, ident = None, set(), {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("vendor_id", "cpu family", "model", "stepping", "microcode") and key not in ident:
            ident[key] = value.strip()
    import torch

    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: None)()
    return {
        "cpu_model": model or platform.processor() or None,
        "cpu_id": " ".join(f"{k} {v}" for k, v in ident.items()) or None,
        "isa": platform.machine(),
        "isa_extensions": [f for f in ISA_FLAGS if f in flags],
        "torch_cpu_capability": capability,
    }


def machine() -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        **cpu_info(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance() -> dict[str, object]:
    return {"versions": versions(), "git": git_commit(), "machine": machine()}
