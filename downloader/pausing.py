"""Why a worker is not claiming now: the shard disk over budget, an environment that fails, Redis down.

    pausing = Pausing(cfg, queue, spool)          # queue: the worker's PartClaimer; spool: downloader.spool
    if pausing.holding() or not await pausing.disk_allows(): ...     # no new claim now
    pausing.environment_failed(part_id, "shard dir not writable: ...")  # back off, say why
    pausing.environment_recovered(busy=True)                         # a commit ends the pause
    await pausing.through_outages(queue.ack, entry_id)               # waits an outage out

It also holds the worker's state as its heartbeat shows it (`state`, `reason`; the states are in
streamcap.formats.heartbeats), since every pause is a change of state:

- **disk budget** (`--max-disk-bytes`, `--min-free-bytes`): the shard dir is measured at most
  every DISK_RECHECK_S while there is room for a part; over budget, claiming stops
  (`paused_for_disk`) until it is back under.
- **the bucket and the spool** (--shard-dir s3://..., downloader.spool): checked as often as the
  disk budget. A bucket that cannot be used (endpoint down, bucket missing, credentials
  refused) pauses claiming (`paused`, `shard store unavailable: ...`) before any part is
  claimed, so none loses its downloads; a spool over --spool-max-bytes (or its disk under
  --min-free-bytes) is `paused_for_disk`, and so is a bucket whose shards are over
  --max-disk-bytes (measured every BUCKET_RECHECK_S: a listing costs requests). Claiming
  resumes by itself once the check passes.
- **environment** (downloader.failures: shard dir full, read-only or not writable, source
  unreadable here): claiming stops for a backoff from ENV_BACKOFF_S doubling to ENV_BACKOFF_MAX_S,
  then one part is tried again; a commit ends the pause. With `--exit-when-empty` the worker
  gives up after `--environment-patience` s of it, with nothing running.
- **Redis outages** (`bus.wait_out_outage`): waited out in a thread, the state saying
  `waiting_for_redis`; the consumer group is created again when Redis comes back empty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from streamcap import bus
from streamcap.common.store import StoreUnavailable
from streamcap.downloader.claims import PartClaimer
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.failures import STORE_UNAVAILABLE, is_disk_full, is_store_down
from streamcap.downloader.spool import Spool
from streamcap.formats.heartbeats import (
    DOWNLOADER_IDLE,
    DOWNLOADER_PAUSED,
    DOWNLOADER_PAUSED_FOR_DISK,
    DOWNLOADER_STOPPING,
    DOWNLOADER_WAITING_FOR_REDIS,
    DOWNLOADER_WORKING,
)
from streamcap.shardwriter.retention import disk_pressure

log = logging.getLogger("streamcap.downloader")

DISK_RECHECK_S = 2.0
BUCKET_RECHECK_S = 15.0
ENV_BACKOFF_S, ENV_BACKOFF_MAX_S = 2.0, 30.0
REDIS_DOWN = (*bus.REDIS_DOWN, bus.RedisUnavailable)


class Pausing:
    """The worker's state and the pauses that hold its claiming back."""

    def __init__(self, cfg: DownloaderSettings, queue: PartClaimer, spool: Spool | None = None) -> None:
        self.cfg, self.queue = cfg, queue
        self.spool = spool if spool is not None else Spool.for_settings(cfg)  # where parts are written
        self.r, self.keys, self.consumer = queue.r, queue.keys, queue.consumer
        self.state, self.reason = DOWNLOADER_IDLE, ""
        self.gave_up = ""  # the environment failure --exit-when-empty gave up on
        self._paused_until = 0.0
        self._disk_checked_at = -DISK_RECHECK_S
        self._bucket_checked_at = -BUCKET_RECHECK_S
        self._bucket_reason: str | None = None  # the bucket's budget, as last measured
        self._env_since: float | None = None  # the environment has failed since (no commit since)
        self._env_backoff = 0.0
        self._env_retry_said = False

    # --- the state ---------------------------------------------------------------------------------

    def working(self) -> None:
        """A part started. While the environment fails, a retry starting changes nothing an
        operator should see: the state keeps saying why (paused, with its reason)."""
        if self._env_since is None:
            self.state = DOWNLOADER_WORKING

    def stopping(self) -> None:
        self.state = DOWNLOADER_STOPPING

    def before_claim(self) -> None:
        """Say so when a claim ends a pause."""
        if self._env_since is not None and not self._env_retry_said:
            log.info("trying a part again after the pause (%s)", self.reason)
            self._env_retry_said = True
        elif self._env_since is None and self.state == DOWNLOADER_PAUSED_FOR_DISK:
            log.info("claiming parts again after the pause (%s)", self.reason)

    def after_claim(self, busy: bool) -> None:
        if self._env_since is None:  # while the environment fails, status keeps saying why
            self.state, self.reason = (DOWNLOADER_WORKING if busy else DOWNLOADER_IDLE), ""

    # --- the disk budget ----------------------------------------------------------------------------

    def holding(self) -> bool:
        """Claiming is paused for now (a backoff, or the disk's next check)."""
        return time.monotonic() < self._paused_until

    async def disk_allows(self) -> bool:
        """False while the shard dir is over its budget, or (with a bucket) the bucket cannot be
        used or the spool is full; measured at most every DISK_RECHECK_S."""
        remote = self.spool.remote
        if not (remote or self.cfg.has_disk_budget) or time.monotonic() < self._disk_checked_at + DISK_RECHECK_S:
            return True
        self._disk_checked_at = time.monotonic()  # a scan of the shard dir: not on every tick
        reason = await asyncio.to_thread(self._bucket_pressure if remote else self._disk_pressure)
        if reason:
            state = DOWNLOADER_PAUSED if is_store_down(reason) else DOWNLOADER_PAUSED_FOR_DISK
            if self.state != state or (is_store_down(reason) and not is_store_down(self.reason)):
                log.warning("pausing: %s", reason)  # once per pause (a disk's figures change every check)
            self.state, self.reason = state, reason
            self._paused_until = time.monotonic() + DISK_RECHECK_S
            return False
        if self.state == DOWNLOADER_PAUSED_FOR_DISK or (self._env_since is None and is_store_down(self.reason)):
            log.info(
                "%s: resuming",
                "shard store reachable again" if is_store_down(self.reason) else "disk back under budget",
            )
            self.state, self.reason = DOWNLOADER_IDLE, ""
        return True

    def _disk_pressure(self) -> str | None:
        cfg = self.cfg
        return disk_pressure(self.r, self.keys, cfg.shard_dir, cfg.max_disk_bytes, cfg.min_free_bytes)

    def _bucket_pressure(self) -> str | None:
        """The bucket usable and the spool not full, then the bucket's budget (--max-disk-bytes
        counts its shards; --min-free-bytes guards the spool's disk)."""
        reason = self.spool.pressure()
        if reason or not self.cfg.max_disk_bytes:
            return reason
        # Measuring a bucket is a listing (requests, paid for on most clouds): less often than a disk.
        if time.monotonic() >= self._bucket_checked_at + BUCKET_RECHECK_S:
            self._bucket_checked_at = time.monotonic()
            try:
                self._bucket_reason = disk_pressure(self.r, self.keys, self.spool.store, self.cfg.max_disk_bytes, 0)
            except StoreUnavailable as e:
                return f"{STORE_UNAVAILABLE}: {e}"
        return self._bucket_reason

    # --- the environment ------------------------------------------------------------------------------

    def environment_failed(self, part_id: str, reason: str) -> None:
        """Not the part's fault: stop claiming for a growing while, and say why in the state."""
        now = time.monotonic()
        if self._env_since is None:
            self._env_since = now
        self._env_backoff = min(ENV_BACKOFF_MAX_S, max(ENV_BACKOFF_S, 2 * self._env_backoff))
        self._paused_until = max(self._paused_until, now + self._env_backoff)
        self._env_retry_said = False
        self.state = DOWNLOADER_PAUSED_FOR_DISK if is_disk_full(reason) else DOWNLOADER_PAUSED
        self.reason = reason
        if is_disk_full(reason):
            log.warning(
                "shard disk full: no new parts for %.0f s; part %s released for a retry, its delivery not counted (%s)",
                self._env_backoff,
                part_id,
                reason,
            )
        else:
            log.warning(
                "part %s not done: %s; released without counting the delivery; no new parts for %.0f s",
                part_id,
                reason,
                self._env_backoff,
            )

    def environment_recovered(self, busy: bool) -> None:
        """A part committed: whatever failed works again."""
        if self._env_since is not None:
            log.info("a part committed: the environment works again (was: %s)", self.reason)
            self._env_since, self._env_backoff = None, 0.0
            self.state, self.reason = (DOWNLOADER_WORKING if busy else DOWNLOADER_IDLE), ""

    def should_give_up(self, busy: bool) -> bool:
        """A batch run whose environment has failed for --environment-patience s, nothing running."""
        if not self.cfg.exit_when_empty or self._env_since is None or busy:
            return False
        if time.monotonic() - self._env_since < self.cfg.environment_patience:
            return False
        self.gave_up = self.reason
        log.error(
            "giving up after %.0f s of failures of the environment (--environment-patience): %s",
            time.monotonic() - self._env_since,
            self.reason,
        )
        return True

    # --- Redis outages ------------------------------------------------------------------------------

    async def wait_for_redis(self, e: BaseException, what: str, stop: Callable[[], bool] | None = None) -> None:
        """Wait out the outage `e` (in a thread), then recreate the group Redis may have lost;
        with `stop`, return as soon as it is true."""
        previous, self.state = self.state, DOWNLOADER_WAITING_FOR_REDIS
        back = await asyncio.to_thread(
            bus.wait_out_outage, self.r, e, what=what, stop=stop, keys=self.keys, who=f"downloader {self.consumer}"
        )
        if back:
            await asyncio.to_thread(self.queue.ensure_group)  # Redis may have come back empty
        self.state = previous

    async def through_outages(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a thread, again after each outage until it goes through."""
        # `bus.call_through_outages` for the event loop: the try and the wait run in threads,
        # the other parts go on, and the heartbeat's state says waiting_for_redis meanwhile.
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except REDIS_DOWN as e:
                await self.wait_for_redis(e, "the downloader's bookkeeping")
