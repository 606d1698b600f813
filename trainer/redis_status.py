"""What a training run tells the rest of the pipeline through Redis: that it exists, and how it is doing.

Run registry (`runs` hash, written by rank 0): field = run id, value = JSON
    {"started": ts, "last_seen": ts, "state": "running" | "finished", "group": "train:<run>"}
`streamcap shards gc` keeps shards that running runs still need.

Heartbeats: one per rank, `hb:trainer:<run>-rank<rank>` (`bus.write_heartbeat`), refreshed every
HEARTBEAT_EVERY_S with these fields (what `streamcap status` shows):
    run, rank, world_size, step, max_steps
    samples_per_s        samples this rank trained on per second, since the last heartbeat
    data_wait_pct        % of that time the training loop waited for the next batch
    fresh, replay        samples of fresh / replayed shards this rank has trained on (totals)
    fresh_ratio          fresh / (fresh + replay) since the last heartbeat
    fresh_wait_s         seconds loader workers blocked waiting for a fresh shard (total)
    fresh_shards_pending shards registered but not yet claimed by this run (rank 0 only)
    bad_samples          samples skipped as corrupt or unusable (total)
    loss, lr, aug_level  latest values
    nonfinite_steps      steps skipped for a non-finite loss or gradient norm (total, across resumes)
    nonfinite_in_a_row   the current streak of them (the run stops at --max-bad-steps)
    last_nonfinite_step  the latest of them (0: none)
    oom_steps, oom_in_a_row  the same for steps skipped for running out of GPU memory (3 in a row stop)
    checkpoints_freed_bytes  bytes of old checkpoints --keep-checkpoints deleted (rank 0; since it started)
A run that stopped itself (`fail`) marks its last heartbeat `state: failed` with `error`: the one
line it stopped with (e.g. "stopping: 5 non-finite steps in a row ...").

Every write survives a Redis outage: it is logged and skipped, and training goes on.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from streamcap import bus
from streamcap.common.logs import first_line

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0
# Heartbeat states of a rank that ended on purpose: `streamcap status` expects no more beats.
HEARTBEAT_FINISHED = "finished"
HEARTBEAT_STOPPED = "stopped"
HEARTBEAT_FAILED = "failed"  # the run stopped itself (`error` says why): it needs a person, not a restart
OUTAGE_BACKOFF_S = 30.0
RUN_RUNNING, RUN_FINISHED = "running", "finished"


class RedisStatus:
    def __init__(self, r: redis.Redis, keys: bus.Keys, run: str, rank: int) -> None:
        self.r, self.keys, self.run, self.rank = r, keys, run, rank
        self.instance = f"{run}-rank{rank}"
        self._next_beat = 0.0
        self._warned_at = 0.0

    def register(self) -> None:
        """Mark the run running (rank 0); keeps the first start time across resumes."""
        if self.rank == 0:
            self._safe("registering the run", lambda: self._write_run(RUN_RUNNING))

    def finish(self) -> None:
        if self.rank == 0:
            self._safe("marking the run finished", lambda: self._write_run(RUN_FINISHED))
        self.leave(HEARTBEAT_FINISHED)

    def leave(self, state: str = HEARTBEAT_STOPPED) -> None:
        """Mark this rank's last heartbeat as ended on purpose (`finished` or `stopped`): it stays
        readable until it expires, and `streamcap status` does not count it as a worker that
        stopped reporting. A crash leaves the heartbeat as it was, to go stale."""
        key = self.keys.heartbeat(bus.ROLE_TRAINER, self.instance)
        self._safe("marking the heartbeat", lambda: self.r.hset(key, "state", state))

    def fail(self, reason: str) -> None:
        """Mark this rank's last heartbeat failed, with the one line the run stopped with."""
        key = self.keys.heartbeat(bus.ROLE_TRAINER, self.instance)
        self._safe(
            "marking the heartbeat", lambda: self.r.hset(key, mapping={"state": HEARTBEAT_FAILED, "error": reason})
        )

    def due(self) -> bool:
        return time.monotonic() >= self._next_beat

    def beat(self, fields: dict[str, Any]) -> None:
        """Write this rank's heartbeat (and the run's last_seen on rank 0)."""
        self._next_beat = time.monotonic() + HEARTBEAT_EVERY_S
        if self.rank == 0:
            fields = fields | {"fresh_shards_pending": self.fresh_shards_pending()}
        ok = self._safe(
            "writing the heartbeat",
            lambda: bus.write_heartbeat(self.r, self.keys, bus.ROLE_TRAINER, self.instance, fields) or True,
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
        """Live downloader rates summed over fresh heartbeats: every numeric field ending in _per_s."""

        def read() -> dict[str, float]:
            totals: dict[str, float] = {}
            beats = [b for b in bus.read_heartbeats(self.r, self.keys, bus.ROLE_DOWNLOADER) if not b["stale"]]
            for beat in beats:
                for name, value in beat.items():
                    if name.endswith("_per_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
                        totals[name] = totals.get(name, 0.0) + float(value)
            totals["live"] = float(len(beats))
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
