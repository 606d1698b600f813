"""Temporary files in the shard dir: owner-stamped names, atomic writes, and the safe sweeper.

A temporary file is named `.tmp~<host>~<pid>~<start>~<final name>`: hidden (no `*.tar` glob of
a reader sees it), and it says which process owns it. `<start>` is the process's start time
from /proc, so a pid reused by a newer process does not keep a dead writer's files alive.

    path = temp_path(shard_dir, "relaion-000003-0000.tar")
    ... write, fsync ...
    publish(path, shard_dir / "relaion-000003-0000.tar")   # rename + fsync of the directory
    sweep(shard_dir, stale_s=3600)                        # removes only files of dead writers

A file of this host is swept once its owner process is gone. A file of another host (another
container on a shared volume) cannot be checked that way, so it is swept only after `stale_s`
without a write: a live writer appends all the time, and a writer stalled that long has lost
its part's lease and would be refused at finalize anyway.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcap.common.files import atomic_write_bytes, fsync_dir

TEMP_PREFIX = ".tmp~"
_SEP = "~"


def process_start(pid: int) -> str:
    """Start time of process `pid` in clock ticks since boot ('0' where /proc is unavailable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    # Field 22; the command name (field 2) may contain spaces and parentheses, so split after it.
    return stat.rsplit(")", 1)[1].split()[19]


def _host() -> str:
    return socket.gethostname().replace(_SEP, "-") or "localhost"


@dataclass(frozen=True)
class TempOwner:
    host: str
    pid: int
    start: str

    @classmethod
    def me(cls) -> TempOwner:
        pid = os.getpid()
        return cls(_host(), pid, process_start(pid))

    def alive(self) -> bool | None:
        """True/False for a process of this host; None when it runs elsewhere (unknowable here)."""
        if self.host != _host():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user
            pass
        return self.start == "0" or process_start(self.pid) == self.start


def temp_path(directory: Path, final_name: str, owner: TempOwner | None = None) -> Path:
    o = owner or TempOwner.me()
    return directory / _SEP.join((TEMP_PREFIX[:-1], o.host, str(o.pid), o.start, final_name))


def parse_temp_name(name: str) -> tuple[TempOwner, str] | None:
    """(owner, final name) of a temporary file name, None for any other name."""
    if not name.startswith(TEMP_PREFIX):
        return None
    parts = name.split(_SEP, 4)
    if len(parts) != 5 or not parts[2].isdigit() or not parts[4]:
        return None
    return TempOwner(parts[1], int(parts[2]), parts[3]), parts[4]


def temp_files(directory: Path) -> list[Path]:
    """Every temporary file in `directory` (not recursive)."""
    try:
        return sorted(p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX))
    except FileNotFoundError:
        return []


def owner_gone(path: Path, stale_s: float) -> bool:
    """Whether the writer of temporary file `path` is certainly (or, off-host, presumably) gone."""
    parsed = parse_temp_name(path.name)
    if parsed is None:
        return False
    alive = parsed[0].alive()
    if alive is not None:
        return not alive
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > stale_s


def sweep(directory: Path, stale_s: float) -> list[Path]:
    """Remove temporary files whose writer is gone; returns what was removed."""
    removed = []
    for path in temp_files(directory):
        if owner_gone(path, stale_s):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    if removed:
        fsync_dir(directory)
    return removed


# --- durable file operations --------------------------------------------------------------------
# Shards are not written with `atomic_write_bytes`: a part's shards are fsynced one by one as they
# roll and renamed together under the part's lock, with one directory fsync for all (`publish`).


def publish(temp: Path, final: Path, *, sync_dir: bool = True) -> None:
    """Rename a complete, fsynced temporary file to its final name (atomic on one filesystem)."""
    os.replace(temp, final)
    if sync_dir:
        fsync_dir(final.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a small file so readers see the old content or the new one, never a torn one.

    The temporary name is owner-stamped, so the sweeper removes it if this process dies
    mid-write, and carries the thread, so two threads of one process writing the same file
    (e.g. concurrent enqueues of one source) never share a temporary file.
    """
    atomic_write_bytes(path, data, temp=temp_path(path.parent, f"{path.name}.t{threading.get_ident()}"))


def write_json_atomic(path: Path, obj: Any, *, compact: bool = False) -> None:
    text = (
        json.dumps(obj, sort_keys=True, separators=(",", ":")) if compact else json.dumps(obj, indent=1, sort_keys=True)
    )
    write_atomic(path, (text + "\n").encode())


def remove_durably(paths: list[Path], directory: Path) -> None:
    """Unlink `paths` (missing ones are fine) and fsync `directory` once."""
    if not paths:
        return
    for p in paths:
        p.unlink(missing_ok=True)
    fsync_dir(directory)
