"""Parts written on local disk, then uploaded: how a downloader feeds a bucket (--shard-dir s3://...).

    spool = Spool.for_settings(cfg)            # spool.dir: where PartWriter writes
    await spool.prepare(part)                  # a retry part: its committed stats file, fetched
    ... PartWriter(spool.dir, part, ...).finish()
    spool.publish(stats, claim)                # shards, then the stats file, into the bucket
    commit_part(...)                           # registers them: only now trainers see them
    spool.discard(part)                        # the local copies go, whatever happened

With a local --shard-dir the spool *is* the shard dir and publish/discard do nothing.

With a bucket, each worker process writes into its own folder of --spool-dir, stamped with its
host, pid and start time like the writers' temporary files (shardwriter.tempfiles), so a
restarted worker removes what a dead one left behind and never touches a live one's. Objects
appear whole (S3 PUT / multipart completion), and the commit that registers a part runs only
after its last upload returned, so no trainer ever claims a shard that is not complete in the
bucket. A worker killed mid-upload registers nothing; its part is redelivered and the next
attempt overwrites the same deterministic names. The claim is confirmed (and its lease
renewed) before each object is uploaded, so an attempt that lost its part to another worker
stops before its next object; what it can still write over is the one object in flight at that
moment, and only if the winner has downloaded the whole part and uploaded that object already.

The bucket failing (endpoint down, bucket missing, credentials refused) raises StoreUnavailable,
which the worker treats as a failure of its environment (downloader.failures): the part is
released uncounted and the worker pauses, saying why in its heartbeat.

The spool is bounded: the worker claims no new part while the spool holds more than
--spool-max-bytes (or its disk has less than --min-free-bytes free), like a full shard disk.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from streamcap.common.store import ShardStore, StoreUnavailable, open_store
from streamcap.downloader.failures import STORE_UNAVAILABLE
from streamcap.formats.records import PartRecord, PartStats
from streamcap.formats.shards import SHARD_SUFFIX, part_prefix, stats_name
from streamcap.shardwriter import faults, tempfiles
from streamcap.shardwriter.commit import CONFIRMED, PartClaim, confirm_claim
from streamcap.shardwriter.config import format_size
from streamcap.shardwriter.retention import free_bytes, shard_bytes_on_disk
from streamcap.shardwriter.writer import PartSuperseded

log = logging.getLogger(__name__)

# Fault point (STREAMCAP_FAULT=during_upload): the process dies with some shards uploaded.
FAULT_DURING_UPLOAD = "during_upload"
_OWNER_SEP = "~"


@dataclass
class Spool:
    store: ShardStore
    dir: Path  # where this process's writers write
    max_bytes: int = 0
    min_free_bytes: int = 0

    @classmethod
    def for_settings(cls, cfg) -> Spool:
        store = open_store(cfg.shard_dir)
        if not store.remote:
            return cls(store, Path(cfg.shard_dir))
        me = tempfiles.TempOwner.me()
        folder = Path(cfg.spool_dir) / _OWNER_SEP.join((me.host, str(me.pid), me.start))
        return cls(store, folder, cfg.spool_max_bytes, cfg.min_free_bytes)

    @property
    def remote(self) -> bool:
        return self.store.remote

    def sweep(self, stale_s: float) -> int:
        """Remove the spools of worker processes that are gone, and this one's temporary files."""
        self.dir.mkdir(parents=True, exist_ok=True)
        removed = len(tempfiles.sweep(self.dir, stale_s))
        if not self.remote:
            return removed
        for other in self.dir.parent.iterdir():
            host, _, rest = other.name.partition(_OWNER_SEP)
            pid, _, start = rest.partition(_OWNER_SEP)
            if other == self.dir or not pid.isdigit():
                continue
            if tempfiles.TempOwner(host, int(pid), start).alive() is False:
                removed += sum(1 for p in other.iterdir() if p.is_file())
                shutil.rmtree(other, ignore_errors=True)
        return removed

    def pressure(self) -> str | None:
        """A one-line reason to claim no new part (the bucket cannot be used, the spool is
        full), else None. Checking the bucket first means a wrong key or a missing bucket
        costs no part its downloads: nothing is claimed until an upload could succeed."""
        if not self.remote:
            return None
        try:
            self.store.check_access()
        except StoreUnavailable as e:
            return f"{STORE_UNAVAILABLE}: {e}"
        if self.max_bytes:
            used = shard_bytes_on_disk(self.dir)
            if used > self.max_bytes:
                return (
                    f"the upload spool holds {format_size(used)}, over --spool-max-bytes {format_size(self.max_bytes)}"
                )
        if self.min_free_bytes:
            free = free_bytes(self.dir)
            if free < self.min_free_bytes:
                return f"{format_size(free)} free on the spool disk, under --min-free-bytes {format_size(self.min_free_bytes)}"
        return None

    def prepare(self, part: PartRecord) -> None:
        """A retry part merges into its part's committed stats file: bring that file here."""
        if not self.remote or not part.retry:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = stats_name(part.source, part.part)
        if self.store.get_file(name, self.dir / name) is None:
            # The writer says so in its own words (nothing to retry into).
            (self.dir / name).unlink(missing_ok=True)

    def publish(self, stats: PartStats, claim: PartClaim | None) -> None:
        """Upload a finished part: its new shards, then its stats file (which names them). The
        claim is confirmed (and its lease renewed) before each object: a worker that lost the
        part mid-upload (a process stalled past its lease) stops at the next object instead of
        writing over the objects of the worker that took the part over."""
        if not self.remote:
            return
        new = [s for s in stats.shards if s.seq >= stats.retries[stats.retry].seq0] if stats.retry else stats.shards
        for i, shard in enumerate(new):
            if i == 1:
                faults.maybe_crash(FAULT_DURING_UPLOAD, stats.part_id)
            _still_ours(claim, stats)
            self.store.put_file(self.dir / shard.name, shard.name)
        _still_ours(claim, stats)
        self._remove_stale_objects(stats)
        name = stats_name(stats.source, stats.part)
        self.store.put_file(self.dir / name, name)

    def _remove_stale_objects(self, stats: PartStats) -> None:
        """Objects of an earlier attempt with a higher sequence than this one wrote."""
        last = max((s.seq for s in stats.shards), default=-1)
        prefix = part_prefix(stats.source, stats.part) + "-"
        for info in self.store.list(prefix, SHARD_SUFFIX):
            seq = info.name[len(prefix) : -len(SHARD_SUFFIX)]
            if seq.isdigit() and int(seq) > last:
                self.store.delete(info.name)

    def discard(self, part: PartRecord) -> None:
        """The part's local files (shards, stats file): uploaded and committed, or abandoned."""
        if not self.remote:
            return
        prefix = part_prefix(part.source, part.part)
        try:
            paths = [p for p in self.dir.iterdir() if p.name.startswith((prefix + "-", prefix + "."))]
        except FileNotFoundError:
            return
        for path in paths:
            path.unlink(missing_ok=True)

    def describe(self) -> str:
        if not self.remote:
            return str(self.dir)
        limit = f", at most {format_size(self.max_bytes)}" if self.max_bytes else ""
        return f"{self.store} (spooled in {self.dir}{limit})"


def _still_ours(claim: PartClaim | None, stats: PartStats) -> None:
    if claim is not None:
        status = confirm_claim(claim, stats.done_id)
        if status != CONFIRMED:
            raise PartSuperseded(stats.part_id, status)
