"""What a training run tells the rest of the pipeline through Redis: that it exists, and how it is doing.

Run registry (`runs` hash, written by rank 0): field = run id, value = JSON
    {"started": ts, "last_seen": ts, "state": "running" | "finished", "group": "train:<run>"}
`streamcap shards gc` keeps shards that running runs still need.

Heartbeats: one per rank, `hb:trainer:<run>-rank<rank>` (`bus.write_heartbeat`), refreshed every
HEARTBEAT_EVERY_S: a `TrainerHeartbeat` (streamcap.formats.heartbeats: step, samples/s, data
wait, fresh/replay counts, loss, ...; what `streamcap status` shows), with the shards not yet
claimed by the run counted on rank 0. A run that stopped itself (`fail`) marks its last
heartbeat `failed`, with `error`: the one line it stopped with.

Every write survives a Redis outage: it is logged and skipped, and training goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import redis

from streamcap import bus
from streamcap.common.logs import first_line
from streamcap.common.store import StoreError
from streamcap.formats.heartbeats import (
    TRAINER_FAILED,
    TRAINER_FINISHED,
    TRAINER_STOPPED,
    DownloaderHeartbeat,
    TrainerHeartbeat,
)
from streamcap.ops.data_wait import why_no_data

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0
PEER_CHECK_EVERY_S = 2.0
OUTAGE_BACKOFF_S = 30.0
RUN_RUNNING, RUN_FINISHED = "running", "finished"


class RedisStatus:
    def __init__(self, r: redis.Redis, keys: bus.Keys, run: str, rank: int) -> None:
        self.r, self.keys, self.run, self.rank = r, keys, run, rank
        self.instance = f"{run}-rank{rank}"
        self._next_beat = 0.0
        self._warned_at = 0.0
        self._last_beat: TrainerHeartbeat | None = None  # what `leave` marks as ended
        self._started = time.time()
        self._next_peer_check = 0.0

    def register(self) -> None:
        """Mark the run running (rank 0); keeps the first start time across resumes."""
        if self.rank == 0:
            self._safe("registering the run", lambda: self._write_run(RUN_RUNNING))

    def finish(self) -> None:
        if self.rank == 0:
            self._safe("marking the run finished", lambda: self._write_run(RUN_FINISHED))
        self.leave(TRAINER_FINISHED)

    def leave(self, state: str = TRAINER_STOPPED) -> None:
        """Write this rank's last heartbeat again, marked as ended on purpose (`finished` or
        `stopped`): it stays readable until it expires, and `streamcap status` does not count
        it as a worker that stopped reporting. A crash leaves the heartbeat as it was, to go
        stale; a rank that never wrote one has nothing to mark."""
        if self._last_beat is None:
            return
        ended = dataclasses.replace(self._last_beat, state=state)
        self._safe("marking the heartbeat", lambda: bus.write_heartbeat(self.r, self.keys, self.instance, ended))

    def fail(self, reason: str) -> None:
        """Mark this rank's last heartbeat failed, with the one line the run stopped with."""
        if self._last_beat is None:
            return
        failed = dataclasses.replace(self._last_beat, state=TRAINER_FAILED, error=reason)
        self._safe("marking the heartbeat", lambda: bus.write_heartbeat(self.r, self.keys, self.instance, failed))

    def peer_failed(self) -> bool:
        """Whether another rank of this run marked its heartbeat failed since this process started
        (an earlier incarnation's failure does not count). Asked at most every PEER_CHECK_EVERY_S."""
        now = time.monotonic()
        if now < self._next_peer_check:
            return False
        self._next_peer_check = now + PEER_CHECK_EVERY_S

        def read() -> bool:
            for beat in bus.read_heartbeats(self.r, self.keys, bus.ROLE_TRAINER):
                record = beat.record
                if (
                    isinstance(record, TrainerHeartbeat)
                    and record.run == self.run
                    and record.rank != self.rank
                    and record.state == TRAINER_FAILED
                    and time.time() - beat.age_s >= self._started
                ):
                    return True
            return False

        return bool(self._safe("reading the other ranks' heartbeats", read))

    def why_waiting(self, shard_dir) -> str:
        """What keeps shards from this rank (`ops.data_wait`); "" when nothing does or Redis cannot say."""
        try:
            return self._safe("looking for why no shard comes", lambda: why_no_data(self.r, self.keys, shard_dir)) or ""
        except (OSError, StoreError) as e:  # the shard dir cannot be listed: that is the answer
            return f"the shard dir cannot be read: {first_line(e)}"

    def due(self) -> bool:
        return time.monotonic() >= self._next_beat

    def beat(self, record: TrainerHeartbeat) -> None:
        """Write this rank's heartbeat (and the run's last_seen on rank 0)."""
        self._next_beat = time.monotonic() + HEARTBEAT_EVERY_S
        if self.rank == 0:
            record = dataclasses.replace(record, fresh_shards_pending=self.fresh_shards_pending())
        self._last_beat = record
        ok = self._safe(
            "writing the heartbeat",
            lambda: bus.write_heartbeat(self.r, self.keys, self.instance, record) or True,
        )
        if ok and self.rank == 0:
            self._safe("refreshing the run", lambda: self._write_run(RUN_RUNNING))
        if not ok:  # Redis is down: don't stall every step on the client's retries
            self._next_beat = time.monotonic() + OUTAGE_BACKOFF_S

    def fresh_shards_pending(self) -> int:
        """Shards in the stream this run has not claimed yet (-1 when Redis is unreachable)."""

        def count() -> int:
            info = bus.group_info(self.r, self.keys.shards, self.keys.train_group(self.run))
            if info is None:
                return int(self.r.xlen(self.keys.shards))
            if info.get("lag") is not None:  # Redis 7
                return int(info["lag"])
            last = info.get("last-delivered-id", "0-0")
            return len(self.r.xrange(self.keys.shards, f"({last}", "+", count=100_000))

        result = self._safe("counting fresh shards", count)
        return -1 if result is None else result

    def downloader_rates(self) -> dict[str, float]:
        """Live downloader rates summed over fresh heartbeats (`DownloaderHeartbeat.rates`), and
        `live`: how many there are. Heartbeats this streamcap cannot read are left out."""

        def read() -> dict[str, float]:
            totals: dict[str, float] = {}
            beats = [b for b in bus.read_heartbeats(self.r, self.keys, bus.ROLE_DOWNLOADER) if not b.stale]
            records = [b.record for b in beats if isinstance(b.record, DownloaderHeartbeat)]
            for record in records:
                for name, value in record.rates().items():
                    totals[name] = totals.get(name, 0.0) + value
            totals["live"] = float(len(records))
            return totals

        return self._safe("reading downloader heartbeats", read) or {}

    def _write_run(self, state: str) -> None:
        now = time.time()
        old = self.r.hget(self.keys.runs, self.run)
        started = now
        if old:
            try:
                started = float(json.loads(old).get("started", now))
            except (ValueError, AttributeError):
                pass
        entry = {"started": started, "last_seen": now, "state": state, "group": self.keys.train_group(self.run)}
        self.r.hset(self.keys.runs, self.run, json.dumps(entry))

    def _safe(self, what: str, fn):
        try:
            return fn()
        except (*bus.REDIS_DOWN, redis.ResponseError) as e:
            if time.monotonic() - self._warned_at > 30:
                self._warned_at = time.monotonic()
                log.warning("Redis unavailable while %s (%s); training goes on", what, first_line(e))
            return None
