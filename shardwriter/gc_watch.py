"""`streamcap shards gc --watch`: gc as a service, so an unattended run never stays paused for disk.

    watch(cfg, interval_s=30)        # until SIGTERM; one log line whenever shards were deleted

Downloaders pause while the shard disk is over its budget (`--max-disk-bytes`, `--min-free-bytes`);
the shards that free it are the ones every running training run has read `--min-reads` times.
This loop runs `gc` every `interval_s` seconds (at once when the budget is exceeded) and writes a
heartbeat (role `gc`) with what it did, which `streamcap status` shows in its Shards section. A
Redis outage is waited out; nothing is deleted while Redis is unreachable. With a bucket
(`--shard-dir s3://...`) the budget is the bytes of its shards, and a bucket that cannot be
reached is waited out the same way (each round says why in the heartbeat).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from streamcap import bus
from streamcap.common.logs import instance_id
from streamcap.common.store import StoreUnavailable
from streamcap.formats.heartbeats import GC_WATCHING, GcHeartbeat
from streamcap.shardwriter.config import ShardWriterSettings, format_size
from streamcap.shardwriter.retention import GcReport, gc

log = logging.getLogger(__name__)

BEAT_EVERY_S = 5.0


@dataclass
class GcTotals:
    """What the watch has done since it started: most of its heartbeat."""

    rounds: int = 0
    deleted: int = 0
    freed_bytes: int = 0
    last_round_ts: float = 0.0
    last_result: str = ""
    last_deleted: list[str] = field(default_factory=list)

    def add(self, report: GcReport) -> None:
        self.rounds += 1
        self.deleted += len(report.deleted)
        self.freed_bytes += report.freed_bytes
        self.last_round_ts = time.time()
        self.last_result = report.stopped_because
        if report.deleted:
            self.last_deleted = report.deleted[-5:]

    def heartbeat(self, cfg: ShardWriterSettings, interval_s: float) -> GcHeartbeat:
        return GcHeartbeat(
            state=GC_WATCHING,
            rounds=self.rounds,
            deleted=self.deleted,
            freed_bytes=self.freed_bytes,
            last_round_ts=self.last_round_ts,
            last_result=self.last_result,
            interval_s=float(interval_s),
            max_disk_bytes=cfg.max_disk_bytes,
            min_free_bytes=cfg.min_free_bytes,
            min_reads=cfg.min_reads,
        )


def watch(cfg: ShardWriterSettings, interval_s: float, stop: threading.Event | None = None) -> int:
    """Run gc every `interval_s` seconds until `stop` is set (SIGTERM/SIGINT set it when not given)."""
    stop = stop or _stop_on_signals()
    r = bus.connect(cfg.require_redis())
    keys, me = bus.Keys(cfg.namespace), instance_id()
    totals = GcTotals()
    log.info(
        "gc watch: every %.0f s, budget %s, floor %s free, shards read %d times by every running run",
        interval_s,
        format_size(cfg.max_disk_bytes) if cfg.max_disk_bytes else "none",
        format_size(cfg.min_free_bytes) if cfg.min_free_bytes else "none",
        cfg.min_reads,
    )
    next_round = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() >= next_round:
                next_round = time.monotonic() + interval_s
                _round(r, cfg, totals)
            # Beats between rounds too: `streamcap status` calls a heartbeat older than
            # HEARTBEAT_STALE_S a worker that stopped reporting, and rounds may be further apart.
            bus.write_heartbeat(r, keys, me, totals.heartbeat(cfg, interval_s))
        except bus.REDIS_DOWN as e:
            bus.wait_out_outage(r, e, what="gc", stop=stop.is_set, keys=keys, who=f"gc/{me}")
            continue
        stop.wait(min(BEAT_EVERY_S, max(0.0, next_round - time.monotonic())))
    try:
        r.delete(keys.heartbeat(bus.ROLE_GC, me))
    except bus.REDIS_DOWN:  # stopped during an outage: the heartbeat expires on its own
        pass
    log.info(
        "gc watch stopped: %d rounds, %d shards deleted (%s)",
        totals.rounds,
        totals.deleted,
        format_size(totals.freed_bytes),
    )
    return 0


def _round(r, cfg: ShardWriterSettings, totals: GcTotals) -> None:
    try:
        report = gc(
            r,
            bus.Keys(cfg.namespace),
            cfg.shard_dir,
            max_disk_bytes=cfg.max_disk_bytes,
            min_free_bytes=cfg.min_free_bytes,
            min_reads=cfg.min_reads,
        )
    except StoreUnavailable as e:
        # A bucket that cannot be reached is waited out like Redis: the next round tries again,
        # and the heartbeat (`streamcap status`) says why nothing was freed.
        log.warning("gc: %s", e)
        report = GcReport(stopped_because=str(e))
    totals.add(report)
    if report.deleted:
        log.info(
            "gc: deleted %d shards (%s); %s",
            len(report.deleted),
            format_size(report.freed_bytes),
            report.stopped_because,
        )


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
