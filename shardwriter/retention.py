"""Retention and backpressure: a disk budget for shards, and gc of shards training has read.

    reason = disk_pressure(r, keys, shard_dir, max_disk_bytes=200e9, min_free_bytes=5e9)
    if reason: wait (downloaders claim no new part; `streamcap status` shows the reason)
    report = gc(r, keys, shard_dir, max_disk_bytes=200e9, min_free_bytes=5e9, min_reads=2)

The shard dir may be a bucket (`s3://bucket/prefix`, streamcap.common.store): the budget is then
the bytes of shards in the bucket, and gc deletes read shards there the same way.

gc deletes oldest shards first and only while the disk is over budget, and only shards that
every running training run (the `runs` hash, state "running") has read at least `min_reads`
times (the trainer counts reads in `shards:reads:<run>`). With no running run nothing is known
to be read, so nothing is deleted. A deleted shard is added to `shards:deleted` before its file
goes, so trainers stop replaying it; its part's stats file stays (the audit counts by it).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from streamcap import bus
from streamcap.common.store import LocalStore, ShardStore, open_store
from streamcap.formats.shards import SHARD_SUFFIX
from streamcap.shardwriter import registry, tempfiles
from streamcap.shardwriter.config import format_size

log = logging.getLogger(__name__)

RUN_RUNNING = "running"


def shard_bytes_on_disk(shard_dir: ShardStore | Path | str) -> int:
    """Bytes of finalized shards in the shard dir or bucket, plus a directory's temporary files
    (what the budget counts)."""
    store = open_store(shard_dir)
    return sum(_shard_sizes(store).values()) + _temp_bytes(store)


def _shard_sizes(store: ShardStore) -> dict[str, int]:
    return {info.name: info.size for info in store.list(suffix=SHARD_SUFFIX)}


def _temp_bytes(store: ShardStore) -> int:
    """Writers' temporary files count against a directory's budget (they become shards); a
    bucket never holds any, they stay on the writers' own disks."""
    if store.local_dir is None:
        return 0
    total = 0
    for path in tempfiles.temp_files(store.local_dir):
        try:
            total += path.lstat().st_size
        except FileNotFoundError:  # renamed or swept meanwhile
            pass
    return total


def free_bytes(directory: Path) -> int:
    free, _total = LocalStore(Path(directory)).space() or (0, 0)
    return free


def over_budget(shard_dir: ShardStore | Path | str, max_disk_bytes: int, min_free_bytes: int) -> str | None:
    """A one-line reason when the shards are over budget, else None. A bucket has no free-space
    floor (--min-free-bytes then only guards a downloader's spool disk)."""
    store = open_store(shard_dir)
    if max_disk_bytes:
        used = shard_bytes_on_disk(store)
        if used > max_disk_bytes:
            return f"shards use {format_size(used)}, over --max-disk-bytes {format_size(max_disk_bytes)}"
    space = store.space() if min_free_bytes else None
    if space is not None and space[0] < min_free_bytes:
        return f"{format_size(space[0])} free on the shard disk, under --min-free-bytes {format_size(min_free_bytes)}"
    return None


def disk_pressure(
    r: redis.Redis, keys: bus.Keys, shard_dir: ShardStore | Path | str, max_disk_bytes: int, min_free_bytes: int
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
    shard_dir: ShardStore | Path | str,
    *,
    max_disk_bytes: int,
    min_free_bytes: int,
    min_reads: int,
    dry_run: bool = False,
) -> GcReport:
    """Delete read shards, oldest first, while the shard dir (or bucket) is over budget."""
    if min_reads < 1:
        raise ValueError("min_reads must be >= 1: gc never deletes a shard nobody has read")
    report = GcReport(runs=active_runs(r, keys))
    store = open_store(shard_dir)
    if not (max_disk_bytes or (min_free_bytes and store.space() is not None)):
        report.stopped_because = (
            "no disk budget set (--max-disk-bytes / --min-free-bytes)"
            if store.local_dir is not None
            else "no budget set for the bucket (--max-disk-bytes)"
        )
        return report
    reason = over_budget(store, max_disk_bytes, min_free_bytes)
    if reason is None:
        report.stopped_because = "within budget"
        return report
    if not report.runs:
        report.stopped_because = f"{reason}, but no training run is running: nothing is known to be read"
        return report
    sizes = _shard_sizes(store)
    used = sum(sizes.values()) + _temp_bytes(store)
    deleted = r.smembers(keys.shards_deleted)
    # A snapshot is on the safe side: read counts only grow while gc runs.
    reads = read_counts(r, keys, report.runs)
    for _entry_id, shard in registry.iter_registered(r, keys):
        if shard.name in deleted:
            continue
        if not all(int(reads[run].get(shard.name, 0)) >= min_reads for run in report.runs):
            report.kept_unread += 1
            continue
        size = sizes.get(shard.name, 0)
        if not dry_run:
            r.sadd(keys.shards_deleted, shard.name)  # trainers stop replaying it before it goes
            store.delete(shard.name)
        report.deleted.append(shard.name)
        report.freed_bytes += size
        used -= size
        if not _still_over(store, used, max_disk_bytes, min_free_bytes, report.freed_bytes if dry_run else 0):
            report.stopped_because = "within budget"
            return report
    report.stopped_because = "over budget, but every remaining shard still has readers waiting"
    return report


def read_counts(r: redis.Redis, keys: bus.Keys, runs: list[str]) -> dict[str, dict[str, str]]:
    """run -> {shard name: times read}, one HGETALL per run."""
    return {run: r.hgetall(keys.shard_reads(run)) for run in runs}


def _still_over(store: ShardStore, used: int, max_disk_bytes: int, min_free_bytes: int, pretend_freed: int) -> bool:
    if max_disk_bytes and used > max_disk_bytes:
        return True
    space = store.space() if min_free_bytes else None
    return bool(space is not None and space[0] + pretend_freed < min_free_bytes)
