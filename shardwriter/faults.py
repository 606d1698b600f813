"""Fault injection for crash tests: the process SIGKILLs (or stops) itself at a named point.

    STREAMCAP_FAULT=after_rename streamcap download ...          # dies right after the shards are renamed
    STREAMCAP_FAULT=before_commit:stop streamcap download ...    # freezes there (SIGSTOP) until SIGCONT
    STREAMCAP_FAULT=enospc STREAMCAP_FAULT_WHILE=/tmp/full ...   # shard writes fail with ENOSPC while /tmp/full exists

Points (in the order a part passes them):

- `after_fetch`      every row fetched and processed, nothing finalized (the downloader's)
- `after_temp_write` the part's temporary shard files are complete (tars ended, flushed), not fsynced
- `after_fsync`      every temporary file of the part is fsynced, none renamed yet
- `before_rename`    the part's lock is held and the claim confirmed, nothing renamed yet
- `after_rename`     the shards have their final names (directory fsynced), no stats file yet
- `during_upload`    (--shard-dir s3://...) the part's first shard is in the bucket, the rest are not
- `before_commit`    shards and stats file are on disk (and in the bucket), Redis is untouched
- `during_commit`    the commit script was sent to Redis but its reply is never read
- `after_commit`     the commit was applied and acknowledged, the caller never learns it
- `image_worker`     an image-processing worker process dies on an image (downloader.imagepool)
- `enospc`           not a crash: every write of a shard member raises OSError(ENOSPC), as a full disk does

Several points may be given comma-separated. A point may carry an action: `:kill` (the
default, SIGKILL) or `:stop` (SIGSTOP: the process freezes, as a stalled VM or a long GC pause
would, until a test sends SIGCONT). SIGKILL, not an exception: nothing in the process gets to
clean up, exactly as with a crash or the OOM killer.

`STREAMCAP_FAULT_PART=<part id>` limits faults to one part (e.g. `relaion:3`);
`<part id>@<row>` to one row of it, where a point knows the row (`image_worker`).
`STREAMCAP_FAULT_WHILE=<path>` arms the faults only while that file exists, so a test can
let a condition end (the disk has space again) without restarting the process.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading

FAULT_ENV = "STREAMCAP_FAULT"
FAULT_PART_ENV = "STREAMCAP_FAULT_PART"
FAULT_WHILE_ENV = "STREAMCAP_FAULT_WHILE"
WRITER_POINTS = (
    "after_temp_write",
    "after_fsync",
    "before_rename",
    "after_rename",
    "before_commit",
    "during_commit",
    "after_commit",
)
ENOSPC_POINT = "enospc"
KILL, STOP = "kill", "stop"
_SIGNALS = {KILL: signal.SIGKILL, STOP: signal.SIGSTOP}


def _wanted() -> dict[str, str]:
    """point -> action, from STREAMCAP_FAULT."""
    wanted = {}
    for item in os.environ.get(FAULT_ENV, "").split(","):
        point, _, action = item.strip().partition(":")
        if point:
            wanted[point] = action.strip() or KILL
    return wanted


def _matches(only: str, target: str) -> bool:
    """A part id matches itself and every row of it (`src:3` matches `src:3@3017`)."""
    return only == target or target.startswith(only + "@")


def action(point: str, target: str | None = None) -> str | None:
    """The action the environment asks for at `point` (for part or row `target`), else None."""
    if FAULT_ENV not in os.environ:  # the production case, asked for every shard member written
        return None
    act = _wanted().get(point)
    if act is None:
        return None
    only = os.environ.get(FAULT_PART_ENV)
    if only and target is not None and not _matches(only, target):
        return None
    flag = os.environ.get(FAULT_WHILE_ENV)
    if flag and not os.path.exists(flag):
        return None
    return act


def armed(point: str, part_id: str | None = None) -> bool:
    """Whether the environment asks this process to fail at `point` (for `part_id`)."""
    return action(point, part_id) is not None


def crash_now(point: str, act: str = KILL) -> None:
    """SIGKILL (or SIGSTOP) this process at once, saying where on stderr first (tests read it)."""
    sig = _SIGNALS.get(act, signal.SIGKILL)
    sys.stderr.write(f"streamcap: fault injection: {sig.name} at {point}\n")
    sys.stderr.flush()
    # To this thread: a process-wide SIGSTOP may stop the other threads first and let this one
    # run on for a moment (past the point, e.g. into the commit) before it stops too.
    signal.pthread_kill(threading.get_ident(), sig)


def maybe_crash(point: str, part_id: str | None = None) -> None:
    """Kill or stop this process when STREAMCAP_FAULT names `point`; otherwise do nothing."""
    act = action(point, part_id)
    if act is not None:
        crash_now(point, act)


def maybe_disk_full(part_id: str, filename: str) -> None:
    """Raise OSError(ENOSPC) for a write of `filename` when the `enospc` fault is armed."""
    if armed(ENOSPC_POINT, part_id):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected)", filename)
