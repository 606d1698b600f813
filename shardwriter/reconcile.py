"""Rebuild the registry from the shard directory after Redis lost data.

    streamcap shards reconcile            # after a FLUSHALL, a fresh server, a torn AOF tail
    report = reconcile(r, keys, shard_dir)

The shard dir is the source of truth: a stats file is written only after all of its part's
shards are finalized, and deleted before any later attempt touches them, so a stats file on
disk is a committed-or-committable part. Reconcile then, safely while downloaders run:

1. sweeps temporary files of dead writers;
2. restores source definitions (shard dir -> Redis and back);
3. for every stats file whose part is not in `parts:done` (read again under the part's lock,
   `locks`, so never half way through a worker's rewrite): registers its shards, adds its
   counters, marks it done and acknowledges its entries, through the commit script (so a
   worker committing the same part at the same moment cannot double it); shards that are gone
   from disk (gc'd, quarantined) are marked deleted instead of being trainer-visible;
4. for done parts, registers shards missing from the `shards` stream;
5. re-enqueues every part that has no committed output and is neither queued, in flight nor
   dead;
6. with `--requeue-missing`, queues a retry part (`retry`) for exactly the rows of shards gone
   without gc (quarantined, deleted by hand, marked in `shards:lost`).
After this, `streamcap audit` passes again.

The shard dir may be a bucket (`s3://bucket/prefix`): the same steps run on its objects, less the
sweep (writers' temporary files stay on their own disks) and the part lock (see
locks.stored_part_lock).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import redis

from streamcap import bus
from streamcap.bus.partqueue import PartQueueSnapshot, read_part_queue
from streamcap.common import namespaces
from streamcap.common.store import ShardStore, open_store
from streamcap.formats.records import PartStats
from streamcap.formats.shards import stats_name
from streamcap.shardwriter import registry, retry, tempfiles
from streamcap.shardwriter.commit import commit_part
from streamcap.shardwriter.locks import PartLockBusy, stored_part_lock

log = logging.getLogger(__name__)

RECONCILE_TOKEN = "reconcile"


@dataclass
class ReconcileReport:
    temp_files_swept: list[str] = field(default_factory=list)
    sources_restored: list[str] = field(default_factory=list)
    parts_restored: list[str] = field(default_factory=list)
    shards_registered: list[str] = field(default_factory=list)
    shards_marked_deleted: list[str] = field(default_factory=list)
    parts_requeued: list[str] = field(default_factory=list)
    requeue_missing: bool = False
    rows_requeued: int = 0  # rows of lost shards queued again (--requeue-missing)
    retry_parts: list[str] = field(default_factory=list)
    # Left alone on purpose: work a live worker or an open retry is doing (nothing is wrong).
    waiting: list[str] = field(default_factory=list)
    # What reconcile found wrong and could not fix (an unreadable stats file, a shard whose size
    # disagrees with it, an unreadable queue entry): `shards reconcile` exits 1 for them.
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        requeued = f", {self.rows_requeued} missing rows requeued" if self.requeue_missing else ""
        return (
            f"reconcile: {len(self.parts_restored)} parts restored from stats files, "
            f"{len(self.shards_registered)} shards registered, {len(self.shards_marked_deleted)} marked deleted, "
            f"{len(self.parts_requeued)} parts re-enqueued, {len(self.sources_restored)} sources restored, "
            f"{len(self.temp_files_swept)} temporary files swept, {len(self.waiting)} parts left to their workers, "
            f"{len(self.problems)} problems not fixed{requeued}"
        )


def reconcile(
    r: redis.Redis,
    keys: bus.Keys,
    shard_dir: ShardStore | Path | str,
    *,
    temp_stale_s: float = 3600.0,
    requeue_missing: bool = False,
) -> ReconcileReport:
    """Steps 1-5 of the module docstring; with `requeue_missing`, also queue a retry part for the
    rows of every shard that is gone without gc (quarantined, deleted by hand)."""
    store = open_store(shard_dir)
    # Only this namespace's shard dir is its truth: adopting another's would requeue its parts here.
    namespaces.claim(store, keys.namespace)
    report = ReconcileReport()
    if store.local_dir is not None:  # a bucket holds no temporary files: they stay on the writers' disks
        report.temp_files_swept = [p.name for p in tempfiles.sweep(store.local_dir, temp_stale_s)]
    _restore_sources(r, keys, store, report)
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    all_stats = registry.load_part_stats(store, report.problems)
    queue = read_part_queue(r, keys, report.problems)
    registered = {s.name for _, s in registry.iter_registered(r, keys)}
    deleted = set(r.smembers(keys.shards_deleted))
    for pid, stats in sorted(all_stats.items()):
        if queue.in_flight(pid) and pid not in queue.done:
            # A worker holds it (or held it and its lease will run out): the part is its to
            # finish, or the downloaders' to reclaim.
            report.waiting.append(f"part {pid} is in flight with {queue.pending[queue.in_flight(pid)[0]]}; left to it")
            continue
        try:
            # Under the part's lock no worker is half way through rewriting its files, so the
            # stats file read now describes the shards on disk.
            with stored_part_lock(store, stats.source, stats.part):
                current = registry.read_stored_stats(store, stats_name(stats.source, stats.part), report.problems)
                if current is not None:
                    _restore_part(r, keys, store, current, queue, registered, deleted, report)
        except PartLockBusy as e:
            report.waiting.append(f"{e}; left for the next reconcile")
    _requeue_missing(r, keys, store, read_part_queue(r, keys, []), report)
    report.requeue_missing = requeue_missing
    if requeue_missing:
        requeued = retry.requeue_missing(r, keys, store)
        report.rows_requeued = requeued.rows_requeued
        report.retry_parts = requeued.retry_parts
        report.waiting += [f"part {pid}: a retry is still open; rerun when it is done" for pid in requeued.skipped]
    return report


def _restore_sources(r: redis.Redis, keys: bus.Keys, shard_dir: ShardStore, report: ReconcileReport) -> None:
    in_redis = {s.id for s in registry.redis_sources(r, keys)}
    for source in registry.load_sources(shard_dir):
        if source.id not in in_redis and r.hsetnx(keys.sources, source.id, json.dumps(source.to_message())):
            report.sources_restored.append(source.id)
    for source in registry.redis_sources(r, keys):
        if registry.load_source(shard_dir, source.id) is None:
            registry.save_source(shard_dir, source)


def _restore_part(
    r: redis.Redis,
    keys: bus.Keys,
    store: ShardStore,
    stats: PartStats,
    queue: PartQueueSnapshot,
    registered: set[str],
    deleted: set[str],
    report: ReconcileReport,
) -> None:
    """Register a part's output from its stats file (or complete a done part's registration)."""
    gone = []
    for shard in stats.shards:
        # (A shard gc deleted is known gone: no look-up, which on a bucket is a request each.)
        info = None if shard.name in deleted else store.head(shard.name)
        if info is None:
            gone.append(shard.name)
        elif info.size != shard.bytes:
            report.problems.append(
                f"part {stats.part_id}: {shard.name} has {info.size} bytes, its stats "
                f"file says {shard.bytes}: left alone (changed since it was written? "
                f"`streamcap shards verify` says more)"
            )
            return
    newly_gone = [name for name in gone if name not in deleted]
    if newly_gone:  # before registering, so no trainer ever claims a file that is not there
        r.sadd(keys.shards_deleted, *newly_gone)
        # Gone without gc: the audit counts their rows missing until they are fetched again.
        r.sadd(keys.shards_lost, *newly_gone)
        report.shards_marked_deleted += newly_gone
    if stats.part_id not in queue.done:
        result = commit_part(r, keys, stats, "0-0", token=RECONCILE_TOKEN)
        if result.applied and not result.retried:
            report.parts_restored.append(stats.part_id)
            report.shards_registered += [s.name for s in stats.shards]
        # Entries not yet delivered would only make a downloader redo a done part: drop them.
        # (One delivered meanwhile is harmless: its commit finds the part done.)
        queued = queue.queued(stats.part_id)
        if queued:
            r.xdel(keys.parts, *queued)
        return
    # A retry merged into the stats file but not committed yet registers its shards itself.
    for shard in retry.committed_stats(stats, queue.retries_done).shards:
        if shard.name not in registered:
            r.xadd(keys.shards, bus.encode(shard.to_message()))
            report.shards_registered.append(shard.name)


def _requeue_missing(
    r: redis.Redis, keys: bus.Keys, shard_dir: ShardStore, queue: PartQueueSnapshot, report: ReconcileReport
) -> None:
    """Enqueue every part without committed output that is not queued, in flight or dead."""
    for source in registry.all_sources(r, keys, shard_dir):
        for index in range(source.parts):
            part = source.part(index)
            pid = part.part_id
            if pid in queue.done or pid in queue.dead:
                continue
            if not queue.in_flight(pid) and not queue.queued(pid):
                r.xadd(keys.parts, bus.encode(part.to_message()))
                report.parts_requeued.append(pid)
