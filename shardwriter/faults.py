"""Fault injection for crash tests: the process SIGKILLs itself at a named point.

    STREAMCAP_FAULT=after_rename streamcap download ...     # dies right after the shards are renamed

Points (in the order a part passes them):

- `after_temp_write` the part's temporary shard files are complete (tars ended, flushed), not fsynced
- `after_fsync`      every temporary file of the part is fsynced, none renamed yet
- `after_rename`     the shards have their final names (directory fsynced), no stats file yet
- `before_commit`    shards and stats file are on disk, Redis is untouched
- `during_commit`    the commit script was sent to Redis but its reply is never read
- `after_commit`     the commit was applied and acknowledged, the caller never learns it

Several points may be given comma-separated. `STREAMCAP_FAULT_PART=<part id>` limits the
fault to one part (e.g. `relaion:3`), so a multi-part run dies where a test wants it to.
SIGKILL, not an exception: nothing in the process gets to clean up, exactly as with a crash
or the OOM killer. Other services (the downloader, the reliability suite) add their own
points through `maybe_crash(name)`.
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "STREAMCAP_FAULT"
FAULT_PART_ENV = "STREAMCAP_FAULT_PART"
WRITER_POINTS = ("after_temp_write", "after_fsync", "after_rename", "before_commit", "during_commit", "after_commit")


def armed(point: str, part_id: str | None = None) -> bool:
    """Whether the environment asks this process to die at `point` (for `part_id`)."""
    wanted = {p.strip() for p in os.environ.get(FAULT_ENV, "").split(",") if p.strip()}
    if point not in wanted:
        return False
    only_part = os.environ.get(FAULT_PART_ENV)
    return not only_part or part_id is None or only_part == part_id


def crash_now(point: str) -> None:
    """Die at once with SIGKILL, saying where on stderr first (tests read it)."""
    sys.stderr.write(f"streamcap: fault injection: SIGKILL at {point}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_crash(point: str, part_id: str | None = None) -> None:
    """SIGKILL this process when STREAMCAP_FAULT names `point`; otherwise do nothing."""
    if armed(point, part_id):
        crash_now(point)
