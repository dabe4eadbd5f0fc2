"""Names that become path components: attack names, model names, image ids, run names.

A name is used as a folder or file name inside the run directory (`adv/<attack>/<source>/<id>.png`),
so it must not be able to leave that directory: no separators, no `.`/`..`, no leading dot (those are
the run's own hidden files), nothing outside a portable character set.
"""

from __future__ import annotations

import re

from transferlab.errors import ConfigError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=@,-]{0,127}$")


def is_safe_name(name: object) -> bool:
    """True when `name` is usable as one path component inside a run directory."""
    return isinstance(name, str) and SAFE_NAME.match(name) is not None and ".." not in name


def check_name(name: object, what: str, where: str = "") -> str:
    """Return `name` if it is a safe path component, else raise ConfigError naming `what` and `where`."""
    if not is_safe_name(name):
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}{what} is {name!r}: it becomes a file or folder name, so it must start with a letter "
            "or digit and use only letters, digits and _ . + = @ , - (no '/', no '..', at most 128 "
            "characters)"
        )
    return name
