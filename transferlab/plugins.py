"""Plug-in modules: imported before any component name resolves, so that their `@register` names work
in configs, `transferlab run`, `transferlab attacks` and `transferlab check-attack`.

A config lists them under `plugins:`; the command line adds `--plugin MODULE` (repeatable). A module is
a dotted import path (on `sys.path`, e.g. an installed package or the current folder) or a `.py` file.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from transferlab.errors import ConfigError

LOADED: list[str] = []


def load_plugins(modules: Iterable[str], where: str = "--plugin") -> list[str]:
    """Import each plug-in module once; a failure names the module, where it was asked for and why."""
    done = []
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: a plug-in must be a module name or a .py file, got {name!r}")
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                if not path.is_file():
                    raise FileNotFoundError(f"no such file {path}")
                if str(path.parent) not in sys.path:
                    sys.path.insert(0, str(path.parent))
                importlib.import_module(path.stem)
            else:
                importlib.import_module(name)
        except Exception as exc:  # a plug-in may fail on import in any way: say which one, no traceback
            reason = f"{type(exc).__name__}: {exc}"
            raise ConfigError(f"{where}: cannot import plug-in {name!r}: {reason}") from None
        if name not in LOADED:
            LOADED.append(name)
        done.append(name)
    return done
