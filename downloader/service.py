"""The download service: claim parts, download and process their rows, commit, repeat.

    streamcap download --processes 2 --concurrency 128           # a long-running service
    streamcap download --exit-when-empty                         # a batch run: exit when all is done
    python -m streamcap.downloader --redis-url redis://localhost:6379/0    # the same without the root CLI

    from streamcap.downloader.config import DownloaderSettings
    from streamcap.downloader.service import run
    run(DownloaderSettings(redis_url=..., exit_when_empty=True))  # -> exit code

Each worker process runs one asyncio event loop with one aiohttp session and one image-process
pool, and works on up to `--parts-in-flight` parts at once: it claims another part whenever a
connection slot is free and no row waits for one (so the slow tail of one part never leaves the
network idle). Parts whose open rows all wait on servers do not count; their stragglers are
deferred to a retry part after `--straggler-seconds` (downloader.stragglers). It keeps its
claims alive while working (re-XCLAIM of its own entries every lease/4) and takes over parts
whose worker stopped renewing for `--lease-seconds`.

Failures (`failures`): a row's failure is recorded for the row. A part failure (a row that kills
the image process, a corrupt source) is a strike: the part is released, counted, and after
`--max-deliveries` strikes moved to `parts:dead` with its last error. A delivery lost to a dead
or stalled worker is no strike: a healthy part in flight at a run of kills is not poison; only
LOST_DELIVERIES_FACTOR x `--max-deliveries` lost deliveries dead-letter it (a part that takes
its whole worker down every time). An environment failure (shard dir full or read-only, source
unreadable here) releases the part uncounted and pauses claiming, backing off from
ENV_BACKOFF_S up to ENV_BACKOFF_MAX_S; a commit ends the pause. With `--exit-when-empty` the
worker gives up after `--environment-patience` s of it with exit code EXIT_GAVE_UP (3).
SIGTERM/SIGINT: no new claims; the parts in flight get `--grace-seconds` to finish and commit,
the rest are released for other workers (their delivery not counted); one summary line. A
second signal stops at once. Redis outages are waited out (`bus.wait_out_outage`); a stop
signal ends the claim loop's wait.

Heartbeat (`hb:downloader:<id>`, refreshed every HEARTBEAT_EVERY_S), fields:
    state            working | idle | paused | paused_for_disk | waiting_for_redis | stopping
    reason           why paused, e.g. "shard dir not writable: ..." ('' otherwise)
    urls_per_s, images_per_s, mb_per_s    rates over the last 30 s
    in_flight        requests on the network now
    rows_open        rows of claimed parts not finished yet
    parts            JSON list of the part ids in flight
    urls, images     totals since start (rows finished; rows that became samples)
    failures         JSON {reason: count} since start
    parts_committed, parts_released, parts_failed, parts_superseded, parts_dead, image_crashes
    parts_env_failed attempts given back because of the environment
    rows_deferred    slow rows deferred to a retry part (downloader.stragglers)
    concurrency, pid, started, version
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from aiohttp.abc import AbstractResolver

from streamcap import __version__, bus
from streamcap.common.logs import first_line, instance_id, setup_logging
from streamcap.common.settings import to_json_text
from streamcap.downloader.claims import Claimed, PartClaimer
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.failures import EXIT_GAVE_UP, environment_failure, is_disk_full
from streamcap.downloader.fetch import Fetcher
from streamcap.downloader.hosts import HostBoard
from streamcap.downloader.imagepool import ImagePool
from streamcap.downloader.imageproc import ImageOptions
from streamcap.downloader.livestats import LiveStats
from streamcap.downloader.part import PartRunner, describe_failure
from streamcap.downloader.security import AddressPolicy
from streamcap.downloader.supervisor import STOP_SIGNALS, supervise
from streamcap.formats.records import PartRecord, SourceRecord
from streamcap.shardwriter import registry, tempfiles
from streamcap.shardwriter.commit import COMMITTED, PartClaim, commit_part
from streamcap.shardwriter.retention import disk_pressure
from streamcap.shardwriter.retry import retry_part
from streamcap.shardwriter.writer import PartSuperseded

log = logging.getLogger("streamcap.downloader")

HEARTBEAT_EVERY_S = 5.0
DISK_RECHECK_S = 2.0
ENV_BACKOFF_S, ENV_BACKOFF_MAX_S = 2.0, 30.0
# Lost deliveries (killed or stalled workers) that dead-letter a part with no strike: far beyond
# churn (a part would have to be in flight at 20 kills), yet an end for a part that kills its
# whole worker process every time, which no worker lives to record as a strike.
LOST_DELIVERIES_FACTOR = 4
MAX_PARTS_FACTOR = 4  # parts in flight, tails included, at most this many x --parts-in-flight
STATE_PAUSED, STATE_PAUSED_FOR_DISK = "paused", "paused_for_disk"
_REDIS_DOWN = (*bus.REDIS_DOWN, bus.RedisUnavailable)


@dataclass
class _Active:
    claimed: Claimed
    part: PartRecord
    task: asyncio.Task
    lost: bool = False
    committing: bool = False  # its commit is under way: the entry is acked by it, not lost


class Worker:
    """One worker process: the claim loop, the parts in flight, heartbeats and keep-alives."""

    def __init__(
        self,
        cfg: DownloaderSettings,
        r: redis.Redis,
        consumer: str | None = None,
        *,
        resolver: AbstractResolver | None = None,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        self.cfg, self.r = cfg, r
        self._resolver, self._policy = resolver, address_policy  # Fetcher's (tests pass their own)
        self.consumer = consumer or f"{instance_id()}-{secrets.token_hex(2)}"
        self.keys = bus.Keys(cfg.namespace)
        self.queue = PartClaimer(r, self.keys, self.consumer, lease_ms=int(cfg.lease_seconds * 1000))
        self.stats = LiveStats()
        self.active: dict[str, _Active] = {}
        self.state, self.reason = "idle", ""
        self.stop_requested = asyncio.Event()
        self.runner: PartRunner | None = None
        self.fetcher: Fetcher | None = None
        self.pool: ImagePool | None = None
        self._paused_until = 0.0
        self._stop_at = 0.0
        self._disk_checked_at = -DISK_RECHECK_S
        self._env_since: float | None = None  # the environment has failed since (no commit since)
        self._env_backoff = 0.0
        self._env_retry_said = False
        self.gave_up = ""  # the environment failure --exit-when-empty gave up on

    # --- lifecycle -------------------------------------------------------------------------------

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="dl-io"))  # Redis, files
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        started = time.monotonic()
        await self._redis(self.queue.ensure_group)
        swept = await asyncio.to_thread(self._sweep_temp_files)
        if swept:
            log.info("removed %d temporary files of writers that are gone", swept)
        self.pool = ImagePool(ImageOptions.from_settings(self.cfg), self.cfg.image_workers_per_process)
        booting = asyncio.create_task(self.pool.start())  # boots while the first parts are fetched
        why = "queue empty"
        try:
            hosts = HostBoard(self.cfg, self.r, self.keys)  # 429s and rates shared by every worker
            async with Fetcher(self.cfg, self._resolver, address_policy=self._policy, hosts=hosts) as fetcher:
                self.fetcher = fetcher
                self.runner = PartRunner(self.cfg, fetcher, self.pool, self.stats, self.consumer)
                await self._redis(self._heartbeat)  # visible in `streamcap status` before any claim
                upkeep = asyncio.create_task(self._upkeep())
                try:
                    why = await self._claim_loop()
                    await self._drain()
                finally:
                    upkeep.cancel()
                    await asyncio.gather(upkeep, return_exceptions=True)
        finally:
            await asyncio.gather(booting, return_exceptions=True)
            self.pool.close()
            await asyncio.to_thread(self._clear_heartbeat)
        log.info("downloader %s stopped (%s): %s", self.consumer, why, self.stats.summary(time.monotonic() - started))
        return EXIT_GAVE_UP if self.gave_up else 0

    def request_stop(self, sig: int | None = None) -> None:
        now = time.monotonic()
        if self.stop_requested.is_set():
            # A second signal stops at once; one within a second is the same request arriving
            # twice (Ctrl-C reaches the process group, and `--processes` forwards it as well).
            if now - self._stop_at > 1.0:
                log.warning("second stop signal: releasing the parts in flight now")
                for active in self.active.values():
                    active.task.cancel()
            return
        self._stop_at = now
        name = signal.Signals(sig).name if sig else "stop"
        log.info(
            "%s received: no new parts; finishing %d in flight (grace %.0f s)",
            name,
            len(self.active),
            self.cfg.grace_seconds,
        )
        self.stop_requested.set()

    async def _claim_loop(self) -> str:
        while not self.stop_requested.is_set():
            try:
                if self._should_give_up():
                    return f"gave up: {self.gave_up}"
                if not await self._may_claim():
                    await self._wait_for_change()
                    continue
                # Short blocks while parts run (claims must not lag) or a batch run waits to end.
                block_ms = 200 if self.active or self.cfg.exit_when_empty else 1000
                if self._env_since is not None and not self._env_retry_said:
                    log.info("trying a part again after the pause (%s)", self.reason)
                    self._env_retry_said = True
                elif self._env_since is None and self.state == STATE_PAUSED_FOR_DISK:
                    log.info("claiming parts again after the pause (%s)", self.reason)
                claimed = await asyncio.to_thread(self.queue.claim, block_ms)
                assert self.runner is not None
                self.runner.work_waiting = claimed is not None
                if claimed is not None:
                    await self._start(claimed)
                elif not self.active and self.cfg.exit_when_empty and await asyncio.to_thread(self.queue.is_empty):
                    return "queue empty"
                if self._env_since is None:  # while the environment fails, status keeps saying why
                    self.state, self.reason = ("working" if self.active else "idle"), ""
            except _REDIS_DOWN as e:
                await self._wait_for_redis(e, "claiming parts", stop=self.stop_requested.is_set)
        return "stop requested"

    def _should_give_up(self) -> bool:
        """A batch run whose environment has failed for --environment-patience s, nothing running."""
        if not self.cfg.exit_when_empty or self._env_since is None or self.active:
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

    async def _may_claim(self) -> bool:
        """Room for another part: a free part slot, and (with parts running) idle connections.

        A part whose open rows all wait on servers (its tail) takes no slot: its rows are
        deferred within --straggler-seconds anyway, and meanwhile its connections' share of
        the work is elsewhere. MAX_PARTS_FACTOR x --parts-in-flight bounds the parts (their
        rows, open shards and file handles) held at once. A tail counts from the moment its
        rows are all on the network, not once half the part is done and they have waited a
        second: that slower claiming drains the queue later, so more rows are deferred and
        their retry parts run last, alone (benchmarks/stragglers.py, 12,000 rows: 148 -> 79
        images/s)."""
        if time.monotonic() < self._paused_until or len(self.active) >= MAX_PARTS_FACTOR * self.cfg.parts_in_flight:
            return False
        if self.active:
            assert self.runner is not None and self.fetcher is not None
            if len(self.active) - self.runner.parts_in_tail >= self.cfg.parts_in_flight:
                return False
            if self.runner.rows_undispatched or self.fetcher.saturated:
                return False
        if self.cfg.has_disk_budget and time.monotonic() >= self._disk_checked_at + DISK_RECHECK_S:
            self._disk_checked_at = time.monotonic()  # a scan of the shard dir: not on every tick
            reason = await asyncio.to_thread(
                disk_pressure, self.r, self.keys, self.cfg.shard_dir, self.cfg.max_disk_bytes, self.cfg.min_free_bytes
            )
            if reason:
                if self.state != "paused_for_disk":
                    log.warning("pausing: %s", reason)
                self.state, self.reason = "paused_for_disk", reason
                self._paused_until = time.monotonic() + DISK_RECHECK_S
                return False
            if self.state == "paused_for_disk":
                log.info("disk back under budget: resuming")
                self.state, self.reason = "idle", ""
        return True

    async def _wait_for_change(self) -> None:
        """Until a part finishes, a stop is requested, or a short tick passes."""
        waiters = [a.task for a in self.active.values()]
        stop = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait(
                [*waiters, stop],
                timeout=0.05 if self.active else DISK_RECHECK_S / 4,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.cancel()

    async def _wait_for_redis(self, e: BaseException, what: str, stop: Callable[[], bool] | None = None) -> None:
        """Wait out the outage `e` (in a thread), then recreate the group Redis may have lost;
        with `stop`, return as soon as it is true."""
        previous, self.state = self.state, "waiting_for_redis"
        back = await asyncio.to_thread(
            bus.wait_out_outage, self.r, e, what=what, stop=stop, keys=self.keys, who=f"downloader {self.consumer}"
        )
        if back:
            await asyncio.to_thread(self.queue.ensure_group)  # Redis may have come back empty
        self.state = previous

    async def _redis(self, fn, *args):
        # `bus.call_through_outages` for the event loop: the try and the wait run in threads,
        # the other parts go on, and the heartbeat's state says waiting_for_redis meanwhile.
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except _REDIS_DOWN as e:
                await self._wait_for_redis(e, "the downloader's bookkeeping")

    # --- one part ------------------------------------------------------------------------------

    async def _start(self, claimed: Claimed) -> None:
        try:
            part = claimed.part()
        except (bus.MessageError, KeyError, TypeError, ValueError) as e:
            await self._dead_letter(claimed, None, f"unreadable part entry: {e}")
            return
        if await asyncio.to_thread(self.queue.is_done, part.done_id):
            await asyncio.to_thread(self.queue.ack, claimed.entry_id)  # a duplicate delivery of a done part
            return
        verdict = await self._verdict(claimed, part) if claimed.deliveries > 1 else None
        if verdict:
            await self._dead_letter(claimed, part, verdict)
            return
        source = await asyncio.to_thread(self._source, part.source)
        if source is None:
            await self._attempt_failed(
                claimed,
                part,
                f"source {part.source!r} is not enqueued (no definition in Redis or in {self.cfg.shard_dir})",
            )
            return
        log.info(
            "claimed part %s (rows %d-%d, delivery %d)", part.done_id, part.start, part.end - 1, claimed.deliveries
        )
        assert self.runner is not None
        self.runner.admit(part)
        task = asyncio.create_task(self._run_part(claimed, part, source), name=f"part {part.part_id}")
        task.add_done_callback(lambda _task: self.runner.forget(part))
        self.active[claimed.entry_id] = _Active(claimed, part, task)
        self.state = "working"

    async def _verdict(self, claimed: Claimed, part: PartRecord) -> str | None:
        """Why a redelivered part is dead, or None: `--max-deliveries` strikes (failures of its
        own), or so many lost deliveries that it must be taking its workers down."""
        strikes = await asyncio.to_thread(self.queue.strikes, claimed.entry_id)
        lost = claimed.deliveries - 1 - strikes  # earlier deliveries that ended with no verdict
        if strikes < self.cfg.max_deliveries and lost < LOST_DELIVERIES_FACTOR * self.cfg.max_deliveries:
            return None
        last = await asyncio.to_thread(self.queue.last_error, part.done_id)
        error = (last or {}).get("error") or "no error recorded: the workers that took it died or were killed"
        if strikes < self.cfg.max_deliveries:
            return f"delivered {claimed.deliveries} times, its worker lost {lost} times; last error: {error}"
        return f"delivered {claimed.deliveries} times; last error: {error}"

    def _sweep_temp_files(self) -> int:
        self.cfg.shard_dir.mkdir(parents=True, exist_ok=True)
        return len(tempfiles.sweep(self.cfg.shard_dir, self.cfg.temp_stale_seconds))

    def _source(self, source_id: str) -> SourceRecord | None:
        raw = self.r.hget(self.keys.sources, source_id)
        if raw:
            return SourceRecord.from_message(json.loads(raw))
        return registry.load_source(self.cfg.shard_dir, source_id)

    async def _run_part(self, claimed: Claimed, part: PartRecord, source: SourceRecord) -> None:
        """Run, commit, account. A cancelled part is left in self.active for whoever cancelled it."""
        assert self.runner is not None
        claim = PartClaim(self.r, self.keys, claimed.entry_id, self.consumer)
        started = time.monotonic()
        try:
            stats, deferred = await self.runner.run(part, source, claim)
            if claimed.entry_id in self.active:
                self.active[claimed.entry_id].committing = True
            follow_up = retry_part(stats, deferred) if deferred else None
            result = await self._redis(
                lambda: commit_part(
                    self.r, self.keys, stats, claimed.entry_id, consumer=self.consumer, follow_up=follow_up
                )
            )
        except PartSuperseded as e:
            self.stats.parts_superseded += 1
            log.info("%s", e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the part failed as a whole: released, retried later
            environment = environment_failure(e, self.cfg.shard_dir)
            if environment:
                await self._environment_failed(claimed, part, environment)
            else:
                await self._attempt_failed(claimed, part, describe_failure(e))
        else:
            if result.status == COMMITTED:
                self.stats.parts_committed += 1
                self._environment_recovered()
                if claimed.deliveries > 1:
                    await self._redis(self.queue.forget_strikes, claimed.entry_id)
                self.stats.rows_deferred += len(deferred)
                log.info(
                    "committed part %s: %d samples, %d failures, %d shards in %.1f s%s",
                    part.done_id,
                    stats.samples,
                    len(stats.failures),
                    len(stats.shards),
                    time.monotonic() - started,
                    f"; {len(deferred)} slow rows deferred to a retry part" if deferred else "",
                )
            else:
                self.stats.parts_superseded += 1
                log.info("part %s: commit not applied (%s): another worker has it", part.part_id, result.status)
        self.active.pop(claimed.entry_id, None)

    async def _attempt_failed(self, claimed: Claimed, part: PartRecord, error: str) -> None:
        """The part's own failure: a strike, the error recorded, the part released for a retry."""
        self.stats.parts_failed += 1
        await self._redis(self.queue.record_error, part.done_id, error)
        strikes = await self._redis(self.queue.strike, claimed.entry_id)
        log.warning(
            "part %s failed (strike %d of at most %d, delivery %d): %s",
            part.part_id,
            strikes,
            self.cfg.max_deliveries,
            claimed.deliveries,
            error,
        )
        # Back off before the next try (anywhere): 2 s per strike so far, at most the lease.
        delay_ms = min(self.queue.lease_ms, 2000 * strikes)
        await self._redis(lambda: self.queue.release(claimed.entry_id, count_delivery=True, after_ms=delay_ms))

    async def _environment_failed(self, claimed: Claimed, part: PartRecord, reason: str) -> None:
        """Not the part's fault: give it back uncounted (another worker may take it now), stop
        claiming for a while, and say why in the heartbeat."""
        self.stats.parts_env_failed += 1
        now = time.monotonic()
        if self._env_since is None:
            self._env_since = now
        self._env_backoff = min(ENV_BACKOFF_MAX_S, max(ENV_BACKOFF_S, 2 * self._env_backoff))
        self._paused_until = max(self._paused_until, now + self._env_backoff)
        self._env_retry_said = False
        self.state = STATE_PAUSED_FOR_DISK if is_disk_full(reason) else STATE_PAUSED
        self.reason = reason
        if is_disk_full(reason):
            log.warning(
                "shard disk full: no new parts for %.0f s; part %s released for a retry, its delivery not counted (%s)",
                self._env_backoff,
                part.part_id,
                reason,
            )
        else:
            log.warning(
                "part %s not done: %s; released without counting the delivery; no new parts for %.0f s",
                part.part_id,
                reason,
                self._env_backoff,
            )
        await self._redis(lambda: self.queue.release(claimed.entry_id, count_delivery=False))
        await self._redis(self._heartbeat)  # `streamcap status` says why at once

    def _environment_recovered(self) -> None:
        if self._env_since is not None:
            log.info("a part committed: the environment works again (was: %s)", self.reason)
            self._env_since, self._env_backoff = None, 0.0
            self.state, self.reason = ("working" if self.active else "idle"), ""

    async def _dead_letter(self, claimed: Claimed, part: PartRecord | None, error: str) -> None:
        if await self._redis(self.queue.dead_letter, claimed, part, error):
            self.stats.parts_dead += 1
            log.error("part %s moved to parts:dead: %s", part.part_id if part else claimed.entry_id, error)

    # --- stopping --------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Give the parts in flight the grace period, then release what is left."""
        if not self.active:
            return
        self.state = "stopping"
        tasks = [a.task for a in self.active.values()]
        await asyncio.wait(tasks, timeout=self.cfg.grace_seconds)
        for entry_id, active in list(self.active.items()):
            active.task.cancel()
            await asyncio.gather(active.task, return_exceptions=True)
            if not active.lost:
                released = await asyncio.to_thread(self._release_quietly, entry_id)
                self.stats.parts_released += released
                log.info("released part %s for another worker", active.part.part_id)
            self.active.pop(entry_id, None)

    def _release_quietly(self, entry_id: str) -> int:
        try:
            return int(self.queue.release(entry_id, count_delivery=False))
        except _REDIS_DOWN:  # the lease brings it back to another worker anyway
            return 0

    # --- upkeep: keep-alives and heartbeats ------------------------------------------------------------

    async def _upkeep(self) -> None:
        keepalive_every = max(0.5, self.cfg.lease_seconds / 4)
        next_beat = next_keepalive = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_keepalive:
                    await self._keepalive()
                    next_keepalive = now + keepalive_every
                if now >= next_beat:
                    await asyncio.to_thread(self._heartbeat)
                    next_beat = now + HEARTBEAT_EVERY_S
            except _REDIS_DOWN:
                pass  # the claim loop waits for Redis; renewals resume when it is back
            except redis.ResponseError as e:  # never let one odd reply end the renewals for good
                log.warning("keep-alive or heartbeat refused by Redis: %s", first_line(e))
            await asyncio.sleep(min(keepalive_every, HEARTBEAT_EVERY_S) / 2)

    async def _keepalive(self) -> None:
        for entry_id, active in list(self.active.items()):
            if active.task.done() or active.committing:
                continue
            renewed = await asyncio.to_thread(self.queue.keepalive, entry_id)
            if not renewed and not (active.committing or active.task.done()):  # not our own commit's ack
                active.lost = True
                log.warning(
                    "lost the claim on part %s (reclaimed by another worker or done): dropping it", active.part.part_id
                )
                active.task.cancel()
                self.active.pop(entry_id, None)
                self.stats.parts_superseded += 1

    def _heartbeat(self) -> None:
        fetcher, s = self.fetcher, self.stats
        fields = {
            "state": self.state,
            "reason": self.reason,
            **s.rates(fetcher.wire_bytes if fetcher else 0),
            "in_flight": fetcher.in_flight if fetcher else 0,
            "rows_open": self.runner.rows_open if self.runner else 0,
            "parts": [a.part.part_id for a in self.active.values()],
            "urls": s.urls,
            "images": s.images,
            "failures": dict(s.failures),
            "parts_committed": s.parts_committed,
            "parts_released": s.parts_released,
            "parts_failed": s.parts_failed,
            "parts_superseded": s.parts_superseded,
            "parts_dead": s.parts_dead,
            "parts_env_failed": s.parts_env_failed,
            "rows_deferred": s.rows_deferred,
            "image_crashes": self.pool.crashes if self.pool else 0,
            "concurrency": self.cfg.concurrency,
            "pid": os.getpid(),
            "started": s.started,
            "version": __version__,
        }
        bus.write_heartbeat(self.r, self.keys, bus.ROLE_DOWNLOADER, self.consumer, fields)

    def _clear_heartbeat(self) -> None:
        try:
            self.r.delete(self.keys.heartbeat(bus.ROLE_DOWNLOADER, self.consumer))
        except _REDIS_DOWN:
            pass


# --- entry points ------------------------------------------------------------------------------------


def run_worker(cfg: DownloaderSettings) -> int:
    """One worker process (what `--processes 1` runs)."""
    r = bus.connect(cfg.require_redis(), keys=bus.Keys(cfg.namespace), who=f"downloader {instance_id()}")
    bus.wait_for_redis(r, what="Redis (downloader start)")
    try:
        return asyncio.run(Worker(cfg, r).serve())
    finally:
        r.close()


def _child_main(cfg: DownloaderSettings, index: int) -> None:
    # A forked worker inherits the parent's handlers and (see supervisor) blocked stop signals.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    setup_logging("downloader", cfg.log_level)
    raise SystemExit(run_worker(cfg))


def run(cfg: DownloaderSettings) -> int:
    """The download service: `--processes` worker processes (this one, or children)."""
    setup_logging("downloader", cfg.log_level)
    cfg.require_redis()
    log.info("streamcap %s downloader settings: %s", __version__, to_json_text(cfg))
    if cfg.processes == 1:
        return run_worker(cfg)
    return supervise(cfg, _child_main)
