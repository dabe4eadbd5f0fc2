"""The writer lock of a run directory: `.locks/<scope>.lock`.

Everything that writes into a run holds a lock first:

- `run` is the whole-run lock (`transferlab run` without `--shard`, `report`, `interaction`,
  `correlate`); it excludes every other writer;
- `shard-K-of-N` is held by one shard of a sharded run; it excludes the whole-run lock, the same shard
  and every shard of another split (another N), so that the shards of one split share a directory;
- `select` is held while the clean predictions and the eligible images are decided; it excludes only
  itself and the whole-run lock, and the shards of a run wait for it (`wait=True`).

A lock file holds the holder's pid, host, process start time and command. A lock whose holder is gone
(same host, no such process, or a new process under a recycled pid) is stale and is taken over; a lock
held on another host is never broken automatically (the message says which file to delete).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from transferlab.rundir.marker import LOCKS, WHOLE_RUN, RunDirError, make_dir

SELECT = "select"
_SHARD = re.compile(r"^shard-(\d+)-of-(\d+)$")


class RunLockedError(RunDirError):
    """Another live process holds a conflicting lock on the run directory."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), to tell a recycled pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(holder: dict) -> bool:
    """Whether a lock's holder may still run (unknowable on another host: assumed alive)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = holder.get("pid_start")
    return started is None or _process_start(pid) in (None, started)


def _conflicts(mine: str, other: str) -> bool:
    """Whether two lock scopes exclude each other (see the module docstring)."""
    if mine == WHOLE_RUN or other == WHOLE_RUN or mine == other:
        return True
    a, b = _SHARD.match(mine), _SHARD.match(other)
    return bool(a and b and a.group(2) != b.group(2))


class RunLock:
    """One writer per run directory (per shard): a context manager around `.locks/<scope>.lock`."""

    def __init__(
        self,
        path: Path,
        scope: str = WHOLE_RUN,
        command: str | None = None,
        wait: bool = False,
        poll_s: float = 0.5,
        on_wait=None,
    ):
        """wait: poll until the conflicting holders are gone instead of refusing (`on_wait(holder)` is
        called once when waiting starts, to say so)."""
        self.path = Path(path)
        self.wait = wait
        self.poll_s = poll_s
        self.on_wait = on_wait
        self.scope = scope
        self.command = command if command is not None else " ".join(sys.argv)
        self.file = self.path / LOCKS / f"{scope}.lock"
        self.held = False
        self.took_over: list[dict] = []
        self._blocker: tuple[dict, Path] | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _payload(self) -> dict:
        return {
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "host": socket.gethostname(),
            "scope": self.scope,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": self.command,
        }

    def acquire(self) -> None:
        told = False
        while True:
            try:
                return self._acquire_once()
            except RunLockedError as exc:
                if not self.wait:
                    raise
                if not told and self.on_wait is not None:
                    self.on_wait(self._wait_message() or str(exc))
                told = True
                time.sleep(self.poll_s)

    def _acquire_once(self) -> None:
        folder = self.path / LOCKS
        make_dir(folder)
        for _ in range(3):
            if self._create():
                break
            holder = self._read(self.file)
            if holder is not None and _alive(holder):
                self._blocker = (holder, self.file)
                raise RunLockedError(self._message(holder, self.file))
            self.took_over.append(holder or {})
            self.file.unlink(missing_ok=True)
        else:
            raise RunLockedError(f"could not take the lock {self.file}; another process keeps creating it")
        self.held = True
        for other in sorted(folder.glob("*.lock")):
            if other == self.file or not _conflicts(self.scope, other.stem):
                continue
            holder = self._read(other)
            if holder is None or not _alive(holder):
                other.unlink(missing_ok=True)
                continue
            self.release()
            self._blocker = (holder, other)
            raise RunLockedError(self._message(holder, other))

    def _create(self) -> bool:
        """Create the lock file with its content in one step (hard link of a finished file)."""
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._payload(), indent=2) + "\n")
        try:
            os.link(tmp, self.file)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(tmp.read_text())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _read(file: Path) -> dict | None:
        try:
            holder = json.loads(file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"host": "?", "pid": None}  # unreadable: never broken automatically
        return holder if isinstance(holder, dict) else {"host": "?", "pid": None}

    @staticmethod
    def _holder(holder: dict, file: Path) -> str:
        return (f"pid {holder.get('pid')} on host {holder.get('host')} holds {file.name} since "
                f"{holder.get('since', '?')} ({holder.get('command', '?')})")

    def _message(self, holder: dict, file: Path) -> str:
        return (
            f"{self.path} is in use: {self._holder(holder, file)}. Wait for it to finish or use another "
            f"--out; if that process is gone, delete {file}"
        )

    def _wait_message(self) -> str | None:
        """What a waiting process prints: who holds the lock, and that it goes on by itself."""
        blocker = self._blocker
        if blocker is None:
            return None
        holder, file = blocker
        return (f"{self._holder(holder, file)}; this process goes on when it is released (if that process "
                f"is gone on another host, delete {file})")

    def release(self) -> None:
        if not self.held:
            return
        holder = self._read(self.file)
        if holder is not None and holder.get("pid") == os.getpid():
            self.file.unlink(missing_ok=True)
        self.held = False
