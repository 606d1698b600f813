"""The part lock: one process at a time touches a part's final files.

    with part_lock(shard_dir, "relaion", 3):
        ...confirm the claim, rename the shards, write the stats file...

Checking the claim in Redis and renaming files are two steps; a worker frozen between them
(SIGSTOP, a paused VM, a swap storm) past its lease would otherwise wake up and rename its
attempt over the shards of the worker that reclaimed and committed the part. Under this
lock, the rescuer's renames wait until the frozen worker has finished its own, and its own
commit is then refused; reconcile takes the same lock, so it never reads a part half way
through a rewrite.

The lock is `flock` on a hidden file next to the shards (`.lock~<source>-<part>`), so it works
between containers sharing the volume and is released by the kernel when its holder dies. The
holder removes the file on release; a waiter that then gets a lock on the removed file sees
that the name now points elsewhere (or nowhere) and tries again. Waiting ends after
`timeout_s` with PartLockBusy naming the holder: the attempt fails with a reason and the part
is retried later, instead of a worker hanging behind one that never wakes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from streamcap.common.store import ShardStore
from streamcap.formats.shards import part_prefix
from streamcap.shardwriter.tempfiles import TempOwner

log = logging.getLogger(__name__)

LOCK_PREFIX = ".lock~"
PART_LOCK_TIMEOUT_S = 60.0
_POLL_S = 0.05


class PartLockBusy(RuntimeError):
    """Another process held the part's lock for longer than we were willing to wait."""


def lock_path(shard_dir: Path, source: str, part: int) -> Path:
    return Path(shard_dir) / f"{LOCK_PREFIX}{part_prefix(source, part)}"


@contextmanager
def part_lock(shard_dir: Path, source: str, part: int, timeout_s: float = PART_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the lock of (source, part) in shard_dir for the body of the `with`."""
    path = lock_path(shard_dir, source, part)
    fd = _acquire(path, f"{source}:{part}", timeout_s)
    try:
        os.ftruncate(fd, 0)
        me = TempOwner.me()
        os.write(fd, f"pid {me.pid} on {me.host}".encode())  # who holds it, for a waiter's message
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def stored_part_lock(store: ShardStore, source: str, part: int) -> AbstractContextManager[None]:
    """The part lock where the store's shards are files; a bucket has none to take. There a
    part's objects change only by its claim holder's uploads (confirmed before they start, see
    downloader.spool), and each object appears whole; callers that read a part's files leave
    in-flight parts alone, as reconcile does."""
    return part_lock(store.local_dir, source, part) if store.local_dir is not None else nullcontext()


def _acquire(path: Path, part_id: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    said_waiting = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise PartLockBusy(
                    f"part {part_id}: its files are locked by {_holder(path)} for over "
                    f"{timeout_s:.0f} s (a worker frozen while finalizing?)"
                ) from None
            if not said_waiting:
                said_waiting = True
                log.warning("part %s: waiting for %s to finish writing the part's files", part_id, _holder(path))
            time.sleep(_POLL_S)
            continue
        if _same_file(fd, path):
            return fd
        os.close(fd)  # locked a file its holder removed on release: lock the current one


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holder(path: Path) -> str:
    try:
        tag = path.read_text().strip()
    except OSError:
        tag = ""
    return tag or "another process"
