"""Why a part's attempt failed: the part's fault, or the environment's.

    reason = environment_failure(e, shard_dir)   # "shard dir not writable: ..." or None
    if reason is None: ... a part failure: counts toward --max-deliveries
    else: ... release the part uncounted, pause, retry

Three kinds of failure, three behaviours:

- a *row* failure (404, not an image, too small, ...) never gets here: it is recorded for its
  row and the part commits as usual;
- a *part* failure (a row that kills the image process, a source file that is corrupt) is the
  part's own: it is a strike, and a part with `--max-deliveries` strikes is dead-lettered;
- an *environment* failure is this worker's machine, not the part: the shard dir is full
  (`disk_full: ...`), read-only or not ours to write (`shard dir not writable: ...`), or the
  source file cannot be opened here (`source unreadable: ...`, a volume missing on one host),
  or it changed since it was enqueued (`source changed: ...`, downloader.pin: someone must
  restore it), or the shard bucket cannot be used (`shard store unavailable: ...`: endpoint
  down, bucket missing, credentials refused; streamcap.common.store). Another worker, or this
  one a little later, can do the part, so it is released without a strike and the worker pauses.
"""

from __future__ import annotations

import errno
from pathlib import Path

from streamcap.common.store import StoreUnavailable
from streamcap.downloader.sources import SourceChanged, SourceUnavailable

DISK_FULL = "disk_full"
SHARD_DIR_NOT_WRITABLE = "shard dir not writable"
SOURCE_UNREADABLE = "source unreadable"
SOURCE_CHANGED = "source changed"
STORE_UNAVAILABLE = "shard store unavailable"
ENVIRONMENT_KINDS = (DISK_FULL, SHARD_DIR_NOT_WRITABLE, SOURCE_UNREADABLE, SOURCE_CHANGED, STORE_UNAVAILABLE)
EXIT_GAVE_UP = 3  # `download --exit-when-empty` gave up: the environment kept failing

_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def environment_failure(e: BaseException, shard_dir: Path) -> str | None:
    """One line naming the environment fault behind `e`, or None when `e` is the part's own."""
    if isinstance(e, SourceUnavailable):
        return f"{SOURCE_UNREADABLE}: {e}"
    if isinstance(e, SourceChanged):  # the file must be restored: no attempt counts against the part
        return f"{SOURCE_CHANGED}: {e}"
    if isinstance(e, StoreUnavailable):
        return f"{STORE_UNAVAILABLE}: {e}"
    if not isinstance(e, OSError):
        return None
    if e.errno in _FULL:  # whatever file it was, a full disk is no fault of the part
        return f"{DISK_FULL}: {e.strerror or e} ({e.filename or 'shard dir'})"
    if e.errno in _NOT_WRITABLE and _inside(e.filename, shard_dir):
        return f"{SHARD_DIR_NOT_WRITABLE}: {e.strerror or e} ({e.filename})"
    return None


def is_disk_full(reason: str) -> bool:
    return reason.startswith(DISK_FULL)


def is_store_down(reason: str) -> bool:
    return reason.startswith(STORE_UNAVAILABLE)


def _inside(filename: object, directory: Path) -> bool:
    if not isinstance(filename, str | Path):
        return False
    try:
        Path(filename).resolve().relative_to(Path(directory).resolve())
    except ValueError:
        return False
    return True
