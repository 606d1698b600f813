"""One training run's view of the `shards` stream: claiming fresh shards, replay candidates,
and the accounting of finished reads.

Every DataLoader worker of every rank is its own consumer (`consumer_name(run, rank, worker)`)
in the run's consumer group `train:<run>`, so a fresh shard goes to exactly one reader across
the job. The names are stable across restarts: a worker restarted with `--resume` first gets
back the shards its previous incarnation held (its pending entries). Shards held by consumers
that no longer exist (the job restarted with fewer ranks or workers) are claimed over.

Workers only read from Redis (`ShardQueue`). The training process writes the accounting
(`ReadLedger`): once the checkpoint covering them is saved, it counts the reads (fresh or replay)
of the shards whose last sample training consumed in `shards:reads:<run>` and acknowledges the
fresh ones, so what Redis counts and calls done is in the model a resume starts from.

Every call rides out Redis outages: it waits for the server and retries, and recreates the
group when Redis lost it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import redis
from redis.exceptions import ResponseError

from streamcap import bus
from streamcap.common.logs import first_line
from streamcap.formats.records import ShardRecord

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ShardClaim:
    """A shard a worker is about to read: fresh (a stream entry it must finish) or a replay."""

    name: str
    samples: int
    fresh: bool
    entry_id: str = ""  # stream entry id of a fresh shard; "" for replays

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardClaim:
        return cls(name=d["name"], samples=int(d["samples"]), fresh=bool(d["fresh"]), entry_id=d.get("entry_id", ""))


@dataclass(frozen=True)
class FinishedShard:
    """A shard whose every sample has left a worker's buffer: what the ledger records."""

    claim: ShardClaim
    samples: int  # samples read from it
    missing: bool = False  # the file was not there: not counted as a read

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim.to_dict(), "samples": self.samples, "missing": self.missing}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinishedShard:
        return cls(ShardClaim.from_dict(d["claim"]), samples=int(d["samples"]), missing=bool(d["missing"]))


def plain_name(name: object) -> bool:
    """A registered shard name must stay inside the shard dir: no separators, no dot files."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def consumer_name(run: str, rank: int, worker: int) -> str:
    return f"{run}-r{rank}-w{worker}"


def job_consumers(run: str, world_size: int, workers_per_rank: int) -> frozenset[str]:
    """Consumer names of every reader of the current job (0 workers still means one reader)."""
    return frozenset(consumer_name(run, rank, w) for rank in range(world_size) for w in range(max(workers_per_rank, 1)))


class Orphaned(SystemExit):
    """The process that started this loader worker is gone: the worker ends itself."""


def parent_watch() -> Callable[[], bool]:
    """A check that is true once the current process's parent has died (it was re-parented)."""
    parent = os.getppid()
    return lambda: os.getppid() != parent


def redis_call(
    r: redis.Redis,
    what: str,
    fn: Callable[[], T],
    on_nogroup: Callable[[], None] | None = None,
    orphaned: Callable[[], bool] = lambda: False,
) -> T:
    """Run `fn`, waiting out Redis outages and recreating a lost consumer group.

    Waits as long as it takes, unless `orphaned()` turns true (the training process died).
    """
    while True:
        try:
            return bus.call_through_outages(r, fn, what=what, stop=orphaned)
        except bus.RedisUnavailable:  # the wait was given up: the training process is gone
            raise Orphaned(0) from None
        except ResponseError as e:
            if "NOGROUP" in str(e) and on_nogroup is not None:
                log.warning("consumer group vanished during %s (Redis lost its data?); recreating it", what)
                on_nogroup()
                continue
            raise


class RedisDown(Exception):
    """Redis did not answer an impatient call (`ShardQueue.impatient`)."""


class ShardQueue:
    """The read side, used inside each loader worker."""

    def __init__(
        self,
        r: redis.Redis,
        keys: bus.Keys,
        run: str,
        consumer: str,
        orphaned: Callable[[], bool] = lambda: False,
        quick: redis.Redis | None = None,
    ) -> None:
        self.r, self.keys, self.run, self.consumer = r, keys, run, consumer
        self.group = keys.train_group(run)
        self.orphaned = orphaned
        # A client without retries and with a short timeout, for calls a worker can do without
        # while Redis is down (see `impatient`); None: every call waits the outage out.
        self.quick = quick
        self._impatient = False

    @contextlib.contextmanager
    def impatient(self, enabled: bool = True) -> Iterator[None]:
        """Inside: calls fail fast with RedisDown instead of waiting out an outage (with a
        `quick` client), for a worker that has shards it can replay meanwhile."""
        before, self._impatient = self._impatient, enabled and self.quick is not None
        try:
            yield
        finally:
            self._impatient = before

    @property
    def _c(self) -> redis.Redis:
        return self.quick if self._impatient and self.quick is not None else self.r

    def ensure_group(self) -> None:
        redis_call(
            self.r,
            "creating the consumer group",
            lambda: bus.ensure_group(self._c, self.keys.shards, self.group),
            orphaned=self.orphaned,
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        if self._impatient:
            try:
                return fn()
            except bus.REDIS_DOWN as e:
                raise RedisDown(f"{what}: {first_line(e)}") from None
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                # Redis is up but lost the group: the patient path below recreates it.
        return redis_call(self.r, what, fn, on_nogroup=self.ensure_group, orphaned=self.orphaned)

    def own_pending(self) -> list[ShardClaim]:
        """Fresh shards this consumer name holds from an earlier incarnation, oldest first."""
        reply = self._call(
            "reading pending shards",
            lambda: self._c.xreadgroup(self.group, self.consumer, {self.keys.shards: "0"}, count=10_000),
        )
        return self._claims(reply[0][1] if reply else [])

    def next_fresh(self, block_ms: int) -> ShardClaim | None:
        """The next never-delivered shard, waiting up to `block_ms` (0: don't wait) for one."""
        block = block_ms if block_ms > 0 else None
        reply = self._call(
            "claiming a fresh shard",
            lambda: self._c.xreadgroup(self.group, self.consumer, {self.keys.shards: ">"}, count=1, block=block),
        )
        claims = self._claims(reply[0][1] if reply else [])
        return claims[0] if claims else None

    def reclaim_orphans(self, job: frozenset[str]) -> list[ShardClaim]:
        """Take over fresh shards held by consumers that are not part of this job."""
        try:
            consumers = self._call("listing consumers", lambda: self._c.xinfo_consumers(self.keys.shards, self.group))
        except ResponseError:  # no stream yet
            return []
        ids: list[str] = []
        for c in consumers:
            if c["name"] not in job and int(c.get("pending", 0)) > 0:
                pending = self._call(
                    "reading an orphan's pending shards",
                    lambda c=c: self._c.xpending_range(
                        self.keys.shards, self.group, "-", "+", 1000, consumername=c["name"]
                    ),
                )
                ids += [p["message_id"] for p in pending]
        if not ids:
            return []
        entries = self._call(
            "claiming orphaned shards", lambda: self._c.xclaim(self.keys.shards, self.group, self.consumer, 0, ids)
        )
        claims = self._claims(entries)
        if claims:
            log.info("%s took over %d shard(s) held by consumers no longer in this job", self.consumer, len(claims))
        return claims

    def touch(self, entry_ids: list[str]) -> None:
        """Reset the idle time of shards still being read, so nobody mistakes them for orphans."""
        if entry_ids:
            self._call(
                "touching held shards",
                lambda: self._c.xclaim(self.keys.shards, self.group, self.consumer, 0, entry_ids, justid=True),
            )

    def share_reads(self, names: list[str]) -> None:
        """Tell the run's other workers, on every rank, that this one read these shards through."""

        def write() -> None:
            pipe = self._c.pipeline(transaction=False)
            for name in names:
                pipe.hsetnx(self.keys.shard_seen(self.run), name, self.consumer)
            pipe.execute()

        self._call("sharing finished shards", write)

    def replay_candidates(self, also_read: set[str] = frozenset()) -> list[str]:
        """Shards this run has read at least once and gc has not deleted, sorted by name: Redis's
        counts, the shards other workers read through (`share_reads`) and `also_read`, this
        worker's own. What this consumer name shared itself is left to `also_read`: after a crash
        it names shards read past the checkpoint, which the resumed worker has not read yet."""

        def fetch() -> list[str]:
            pipe = self._c.pipeline(transaction=False)
            pipe.hkeys(self.keys.shard_reads(self.run))
            pipe.hgetall(self.keys.shard_seen(self.run))
            pipe.smembers(self.keys.shards_deleted)
            read, seen, deleted = pipe.execute()
            others = {name for name, consumer in seen.items() if consumer != self.consumer}
            return sorted(name for name in (set(read) | others | also_read) - set(deleted) if plain_name(name))

        return self._call("listing shards to replay", fetch)

    def is_deleted(self, name: str) -> bool:
        return bool(self._call("checking a shard", lambda: self._c.sismember(self.keys.shards_deleted, name)))

    def is_held(self, entry_id: str) -> bool:
        """True while a fresh shard is delivered but not yet acknowledged."""
        return (
            self._call("checking a shard", lambda: bus.delivery_count(self._c, self.keys.shards, self.group, entry_id))
            > 0
        )

    def _claims(self, entries: list[Any]) -> list[ShardClaim]:
        claims = []
        for entry_id, fields in entries:
            if not fields:  # entry trimmed away while pending: nothing left to read
                self._call(
                    "acknowledging a trimmed entry",
                    lambda entry_id=entry_id: self._c.xack(self.keys.shards, self.group, entry_id),
                )
                continue
            try:
                record = ShardRecord.from_message(bus.decode(fields))
                if not plain_name(record.name):
                    raise ValueError(f"shard name {record.name!r} is not a file name inside the shard dir")
            except (bus.MessageError, TypeError, KeyError, ValueError) as e:
                log.warning("skipping unreadable shards entry %s: %s", entry_id, e)
                self._call(
                    "acknowledging a bad entry",
                    lambda entry_id=entry_id: self._c.xack(self.keys.shards, self.group, entry_id),
                )
                continue
            claims.append(ShardClaim(name=record.name, samples=int(record.samples), fresh=True, entry_id=entry_id))
        return claims


class ReadLedger:
    """The write side, used by each rank's training process as it consumes batches.

    Reads (fresh or replay) and the acknowledgement of fresh shards are recorded only when a
    checkpoint covers them (`commit`), in one transaction that also notes the checkpoint's step
    for this rank: a rank killed between checkpoints gets its fresh shards back on `--resume`
    and skips none, and reads it redoes after the crash are counted once, not twice.
    A commit that fails (Redis down past the client's retries) is kept, retried, and saved with
    the checkpoint; `commit_saved` applies it on resume unless Redis shows it already applied.
    """

    def __init__(self, r: redis.Redis, keys: bus.Keys, run: str, rank: int = 0) -> None:
        self.r, self.keys, self.run, self.rank = r, keys, run, rank
        self.group = keys.train_group(run)
        self._consumed: list[FinishedShard] = []  # since the last checkpoint
        self._owed: list[FinishedShard] = []  # covered by checkpoint `_owed_step`, not yet written
        self._owed_step = 0
        self._retry_at = 0.0

    def finished(self, shards: list[FinishedShard]) -> None:
        """Training consumed the last sample of these shards; recorded at the next checkpoint."""
        self._consumed += shards

    def commit(self, step: int) -> bool:
        """Count the reads and acknowledge the fresh shards that checkpoint `step` covers."""
        self._owed += self._consumed
        self._consumed = []
        self._owed_step = step
        return self.retry(force=True)

    def retry(self, force: bool = False) -> bool:
        """Write what a failed commit left owed (at most every 15 s unless `force`)."""
        if not self._owed and not force:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        if self._write(self._pipeline(self._owed, self._owed_step), "record %d shard read(s)" % len(self._owed)):
            self._owed = []
            return True
        return False

    def commit_saved(self, step: int, shards: list[FinishedShard]) -> None:
        """On resume from checkpoint `step`: record what it covered but could not write, unless
        this rank's commit of `step` (or a later one) reached Redis after all."""
        if not shards:
            return
        done = bus.call_through_outages(
            self.r,
            lambda: self.r.hget(self.keys.shard_reads_commits(self.run), str(self.rank)),
            what="reading the last recorded checkpoint",
        )
        if done is not None and int(done) >= step:
            return
        self._owed, self._owed_step = list(shards) + self._owed, step
        self.retry(force=True)

    @property
    def unacknowledged(self) -> list[FinishedShard]:
        """Shards consumed and not yet recorded in Redis: saved with a checkpoint (the name
        predates replays being recorded at checkpoints)."""
        return self._owed + self._consumed

    @property
    def behind(self) -> bool:
        return bool(self._owed)

    def _pipeline(self, shards: list[FinishedShard], step: int) -> Any:
        pipe = self.r.pipeline(transaction=True)
        for shard in shards:
            if not shard.missing:
                pipe.hincrby(self.keys.shard_reads(self.run), shard.claim.name, 1)
            if shard.claim.fresh:
                pipe.xack(self.keys.shards, self.group, shard.claim.entry_id)
        pipe.hset(self.keys.shard_reads_commits(self.run), str(self.rank), step)
        return pipe

    def _write(self, pipe: Any, what: str) -> bool:
        try:
            pipe.execute()
            return True
        except bus.REDIS_DOWN as e:
            log.warning("could not %s in Redis (%s); will retry", what, first_line(e))
            self._retry_at = time.monotonic() + 15.0
            return False
