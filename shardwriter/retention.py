"""Retention and backpressure: a disk budget for shards, and gc of shards training has read.

    reason = disk_pressure(r, keys, shard_dir, max_disk_bytes=200e9, min_free_bytes=5e9)
    if reason: wait (downloaders claim no new part; `streamcap status` shows the reason)
    report = gc(r, keys, shard_dir, max_disk_bytes=200e9, min_free_bytes=5e9, min_reads=2)

gc deletes oldest shards first and only while the disk is over budget, and only shards that
every running training run (the `runs` hash, state "running") has read at least `min_reads`
times (the trainer counts reads in `shards:reads:<run>`). With no running run nothing is known
to be read, so nothing is deleted. A deleted shard is added to `shards:deleted` before its file
goes, so trainers stop replaying it; its part's stats file stays (the audit counts by it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from streamcap import bus
from streamcap.formats.shards import SHARD_SUFFIX
from streamcap.shardwriter import registry, tempfiles
from streamcap.shardwriter.config import format_size

log = logging.getLogger(__name__)

RUN_RUNNING = "running"


def shard_bytes_on_disk(shard_dir: Path) -> int:
    """Bytes of finalized shards plus temporary files in the shard dir (what the budget counts)."""
    total = 0
    try:
        with os.scandir(shard_dir) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and (
                    entry.name.endswith(SHARD_SUFFIX) or entry.name.startswith(tempfiles.TEMP_PREFIX)
                ):
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # renamed or swept meanwhile
                        pass
    except FileNotFoundError:
        return 0
    return total


def free_bytes(shard_dir: Path) -> int:
    path = Path(shard_dir)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def over_budget(shard_dir: Path, max_disk_bytes: int, min_free_bytes: int) -> str | None:
    """A one-line reason when the shard disk is over budget, else None."""
    if max_disk_bytes:
        used = shard_bytes_on_disk(shard_dir)
        if used > max_disk_bytes:
            return f"shards use {format_size(used)}, over --max-disk-bytes {format_size(max_disk_bytes)}"
    if min_free_bytes:
        free = free_bytes(shard_dir)
        if free < min_free_bytes:
            return f"{format_size(free)} free on the shard disk, under --min-free-bytes {format_size(min_free_bytes)}"
    return None


def disk_pressure(
    r: redis.Redis, keys: bus.Keys, shard_dir: Path, max_disk_bytes: int, min_free_bytes: int
) -> str | None:
    """None = OK to claim; else a one-line reason. Records the paused state in keys.control."""
    reason = over_budget(shard_dir, max_disk_bytes, min_free_bytes)
    if reason:
        pipe = r.pipeline(transaction=True)
        pipe.hset(keys.control, bus.CONTROL_DISK_PAUSED, reason)
        pipe.hsetnx(keys.control, bus.CONTROL_DISK_PAUSED_SINCE, time.time())
        pipe.execute()
    elif r.hexists(keys.control, bus.CONTROL_DISK_PAUSED):
        r.hdel(keys.control, bus.CONTROL_DISK_PAUSED, bus.CONTROL_DISK_PAUSED_SINCE)
    return reason


def active_runs(r: redis.Redis, keys: bus.Keys) -> list[str]:
    """Ids of training runs in state "running" (the trainer maintains the `runs` hash)."""
    runs = []
    for run, raw in r.hgetall(keys.runs).items():
        try:
            state = json.loads(raw).get("state")
        except (ValueError, AttributeError):
            log.warning("run %s has an unreadable entry in the runs hash: %r", run, raw)
            continue
        if state == RUN_RUNNING:
            runs.append(run)
    return sorted(runs)


@dataclass
class GcReport:
    deleted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept_unread: int = 0  # candidates skipped: some running run has not read them enough
    runs: list[str] = field(default_factory=list)
    stopped_because: str = ""  # why gc ended (within budget, nothing else deletable, ...)

    def to_json(self) -> dict:
        return {
            "deleted": self.deleted,
            "freed_bytes": self.freed_bytes,
            "kept_unread": self.kept_unread,
            "runs": self.runs,
            "stopped_because": self.stopped_because,
        }


def gc(
    r: redis.Redis,
    keys: bus.Keys,
    shard_dir: Path,
    *,
    max_disk_bytes: int,
    min_free_bytes: int,
    min_reads: int,
    dry_run: bool = False,
) -> GcReport:
    """Delete read shards, oldest first, while the shard disk is over budget."""
    if min_reads < 1:
        raise ValueError("min_reads must be >= 1: gc never deletes a shard nobody has read")
    report = GcReport(runs=active_runs(r, keys))
    if not (max_disk_bytes or min_free_bytes):
        report.stopped_because = "no disk budget set (--max-disk-bytes / --min-free-bytes)"
        return report
    reason = over_budget(shard_dir, max_disk_bytes, min_free_bytes)
    if reason is None:
        report.stopped_because = "within budget"
        return report
    if not report.runs:
        report.stopped_because = f"{reason}, but no training run is running: nothing is known to be read"
        return report
    used = shard_bytes_on_disk(shard_dir)
    deleted = r.smembers(keys.shards_deleted)
    # A snapshot is on the safe side: read counts only grow while gc runs.
    reads = read_counts(r, keys, report.runs)
    for _entry_id, shard in registry.iter_registered(r, keys):
        if shard.name in deleted:
            continue
        if not all(int(reads[run].get(shard.name, 0)) >= min_reads for run in report.runs):
            report.kept_unread += 1
            continue
        path = Path(shard_dir) / shard.name
        size = path.stat().st_size if path.exists() else 0
        if not dry_run:
            r.sadd(keys.shards_deleted, shard.name)  # trainers stop replaying it before it goes
            path.unlink(missing_ok=True)
        report.deleted.append(shard.name)
        report.freed_bytes += size
        used -= size
        if not _still_over(shard_dir, used, max_disk_bytes, min_free_bytes, report.freed_bytes if dry_run else 0):
            report.stopped_because = "within budget"
            return report
    report.stopped_because = "over budget, but every remaining shard still has readers waiting"
    return report


def read_counts(r: redis.Redis, keys: bus.Keys, runs: list[str]) -> dict[str, dict[str, str]]:
    """run -> {shard name: times read}, one HGETALL per run."""
    return {run: r.hgetall(keys.shard_reads(run)) for run in runs}


def _still_over(shard_dir: Path, used: int, max_disk_bytes: int, min_free_bytes: int, pretend_freed: int) -> bool:
    if max_disk_bytes and used > max_disk_bytes:
        return True
    return bool(min_free_bytes and free_bytes(shard_dir) + pretend_freed < min_free_bytes)
