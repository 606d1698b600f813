"""A worker's heartbeat (`hb:downloader:<consumer>`) and the upkeep loop that also renews its claims.

    heartbeat = Heartbeat(queue, describe=lambda: downloader_heartbeat(cfg, pausing, stats, parts, pool))
    heartbeat.write()                                           # in a thread: Redis is blocking
    await heartbeat.upkeep(parts.keepalive, cfg.lease_seconds)  # a task, until cancelled
    heartbeat.clear()                                           # at exit

The record is a `DownloaderHeartbeat` (streamcap.formats.heartbeats): the state and why, live
rates, requests and rows open, the parts in flight and the counters since start. It is written
every HEARTBEAT_EVERY_S, and at once when the worker pauses; claims are renewed every lease/4.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

import redis

from streamcap import __version__, bus
from streamcap.common.logs import first_line
from streamcap.downloader.claims import PartClaimer
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.imagepool import ImagePool
from streamcap.downloader.inflight import PartsInFlight
from streamcap.downloader.livestats import LiveStats
from streamcap.downloader.pausing import REDIS_DOWN, Pausing
from streamcap.formats.heartbeats import DownloaderHeartbeat

log = logging.getLogger("streamcap.downloader")

HEARTBEAT_EVERY_S = 5.0


def downloader_heartbeat(
    cfg: DownloaderSettings, pausing: Pausing, stats: LiveStats, parts: PartsInFlight, pool: ImagePool | None
) -> DownloaderHeartbeat:
    """What the worker says about itself now."""
    fetcher, runner = parts.fetcher, parts.runner
    rates = stats.rates(fetcher.wire_bytes if fetcher else 0)
    return DownloaderHeartbeat(
        state=pausing.state,
        reason=pausing.reason,
        urls_per_s=rates["urls_per_s"],
        images_per_s=rates["images_per_s"],
        mb_per_s=rates["mb_per_s"],
        in_flight=fetcher.in_flight if fetcher else 0,
        rows_open=runner.rows_open if runner else 0,
        parts=parts.part_ids(),
        urls=stats.urls,
        images=stats.images,
        failures=dict(stats.failures),
        parts_committed=stats.parts_committed,
        parts_released=stats.parts_released,
        parts_failed=stats.parts_failed,
        parts_superseded=stats.parts_superseded,
        parts_dead=stats.parts_dead,
        parts_env_failed=stats.parts_env_failed,
        rows_deferred=stats.rows_deferred,
        image_crashes=pool.crashes if pool else 0,
        dns_lookups=fetcher.dns.lookups if fetcher else 0,
        dns_cache_hits=fetcher.dns.hits if fetcher else 0,
        concurrency=cfg.concurrency,
        pid=os.getpid(),
        started=stats.started,
        version=__version__,
    )


class Heartbeat:
    """One worker's heartbeat hash: written, refreshed with the keep-alives, removed at exit."""

    def __init__(self, queue: PartClaimer, describe: Callable[[], DownloaderHeartbeat]) -> None:
        self.r, self.keys, self.consumer = queue.r, queue.keys, queue.consumer
        self.describe = describe

    def write(self) -> None:
        bus.write_heartbeat(self.r, self.keys, self.consumer, self.describe())

    def clear(self) -> None:
        try:
            self.r.delete(self.keys.heartbeat(bus.ROLE_DOWNLOADER, self.consumer))
        except REDIS_DOWN:
            pass

    async def upkeep(self, keepalive: Callable[[], Awaitable[None]], lease_seconds: float) -> None:
        """Renew the claims every lease/4 and write the heartbeat every HEARTBEAT_EVERY_S, until cancelled."""
        keepalive_every = max(0.5, lease_seconds / 4)
        next_beat = next_keepalive = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_keepalive:
                    await keepalive()
                    next_keepalive = now + keepalive_every
                if now >= next_beat:
                    await asyncio.to_thread(self.write)
                    next_beat = now + HEARTBEAT_EVERY_S
            except REDIS_DOWN:
                pass  # the claim loop waits for Redis; renewals resume when it is back
            except redis.ResponseError as e:  # never let one odd reply end the renewals for good
                log.warning("keep-alive or heartbeat refused by Redis: %s", first_line(e))
            await asyncio.sleep(min(keepalive_every, HEARTBEAT_EVERY_S) / 2)
