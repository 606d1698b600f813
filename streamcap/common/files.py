"""Durable files: readers and crashes see a file's old content or its complete new content, never a torn one.

    atomic_write_text(run_dir / "latest.json", json.dumps(latest))
    atomic_write_bytes(shard_dir / "source.json", data)
    with atomic_writer(run_dir / "step-00001000.pt") as f:   # for writers that stream into a file
        torch.save(payload, f)

The content goes to a temporary file beside the target (same file system, so the rename is
atomic), is flushed and fsynced, renamed over the target, and the directory is fsynced so the
rename survives a power cut. On any error on the way, a KeyboardInterrupt or a full disk at
close or fsync included, the temporary file is removed and the target is left as it was.

Parent directories are not created: callers that want them say so.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# Permission bits of a new file, before the umask: what open() gives (0o666 & ~umask).
DEFAULT_PERMS = 0o666


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, perms: int = DEFAULT_PERMS, temp: str | os.PathLike | None = None
) -> None:
    """Replace `path` with `data` durably (see the module docstring)."""
    with atomic_writer(path, "wb", perms=perms, temp=temp) as f:
        f.write(data)


def atomic_write_text(
    path: str | os.PathLike,
    text: str,
    *,
    encoding: str = "utf-8",
    perms: int = DEFAULT_PERMS,
    temp: str | os.PathLike | None = None,
) -> None:
    """Replace `path` with `text` durably; line ends are written as they are in `text`."""
    atomic_write_bytes(path, text.encode(encoding), perms=perms, temp=temp)


@contextmanager
def atomic_writer(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
    perms: int = DEFAULT_PERMS,
    temp: str | os.PathLike | None = None,
) -> Iterator[IO]:
    """A file open for writing (`mode` "wb" or "w") whose content replaces `path` once the
    block ends without an error; on an error `path` is untouched and the temporary file removed.

    `perms` are the new file's permission bits (the umask applies). `temp` names the temporary
    file (the caller owns that name, e.g. one a sweeper recognises); by default it is a fresh
    hidden name beside `path`.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer writes a whole new file: mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    tmp, fd = _create_temp(path, perms, Path(temp) if temp is not None else None)
    try:
        file = os.fdopen(fd, mode, encoding=encoding if mode == "w" else None, newline=newline)
    except BaseException:  # e.g. an unknown encoding: nothing owns the descriptor yet
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with file as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def keep_jsonl_steps(path: Path, keep: Callable[[int], bool]) -> None:
    """Rewrite a JSON-lines log of {"step": ...} records with only those whose step `keep`s, and
    without lines a crash cut short; a missing log stays missing (a resume's cut-back)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    kept = []
    for line in lines:
        try:
            if keep(int(json.loads(line)["step"])):
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the renames and unlinks done in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(path: Path, perms: int, temp: Path | None) -> tuple[Path, int]:
    """(name, descriptor) of a new, empty temporary file for `path`."""
    if temp is not None:  # the caller's name: a leftover of an earlier try is the caller's own
        return temp, os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, perms)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, perms)
        except FileExistsError:  # another writer drew the same name: draw again
            continue
