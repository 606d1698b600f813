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

With `--shard-dir s3://bucket/prefix` the parts are written into a local spool, uploaded, and
only then committed (downloader.spool); a bucket that cannot be used pauses claiming like a full
disk, with the reason in the heartbeat (`shard store unavailable: ...`).

The worker is put together from parts, each in its module, in the order they act:
    spool       where parts are written: the shard dir, or a local spool uploaded to a bucket
    pausing     the state its heartbeat shows; disk (or bucket), environment and Redis pauses
    claiming    a claimed entry taken in (or dead-lettered), and the ways a part goes back
    inflight    the parts running at once: room for more, run, commit, keep alive, drain
    heartbeat   `hb:downloader:<id>` (a DownloaderHeartbeat) and the keep-alive loop
    supervisor  `--processes N`
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from aiohttp.abc import AbstractResolver

from streamcap import __version__, bus
from streamcap.common import namespaces
from streamcap.common.logs import instance_id, setup_logging
from streamcap.common.settings import to_json_text
from streamcap.downloader.claiming import Claiming
from streamcap.downloader.claims import PartClaimer
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.failures import EXIT_GAVE_UP
from streamcap.downloader.fetch import Fetcher
from streamcap.downloader.heartbeat import Heartbeat, downloader_heartbeat
from streamcap.downloader.hosts import HostBoard
from streamcap.downloader.imagepool import ImagePool
from streamcap.downloader.imageproc import ImageOptions
from streamcap.downloader.inflight import PartsInFlight
from streamcap.downloader.livestats import LiveStats
from streamcap.downloader.part import PartRunner
from streamcap.downloader.pausing import REDIS_DOWN, Pausing
from streamcap.downloader.progress import DownloadProgress, ProgressThread
from streamcap.downloader.security import AddressPolicy
from streamcap.downloader.spool import Spool
from streamcap.downloader.supervisor import STOP_SIGNALS, supervise

log = logging.getLogger("streamcap.downloader")


class Worker:
    """One worker process: the claim loop over its parts (module doc)."""

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
        self.queue = PartClaimer(r, bus.Keys(cfg.namespace), self.consumer, lease_ms=int(cfg.lease_seconds * 1000))
        self.stats = LiveStats()
        self.stop_requested = asyncio.Event()
        self._stop_at = 0.0
        self.pool: ImagePool | None = None
        self.spool = Spool.for_settings(cfg)  # the shard dir itself, or a local spool for a bucket
        self.pausing = Pausing(cfg, self.queue, self.spool)
        self.claiming = Claiming(cfg, self.queue, self.stats, self.pausing, self.spool.store)
        self.heartbeat = Heartbeat(
            self.queue, lambda: downloader_heartbeat(cfg, self.pausing, self.stats, self.parts, self.pool)
        )
        self.parts = PartsInFlight(
            cfg, self.queue, self.stats, self.claiming, self.pausing, self.heartbeat.write, spool=self.spool
        )

    @property
    def gave_up(self) -> str:
        """The environment failure --exit-when-empty gave up on ('' when it did not)."""
        return self.pausing.gave_up

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="dl-io"))  # Redis, files
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        started = time.monotonic()
        await self.pausing.through_outages(self.queue.ensure_group)
        swept = await asyncio.to_thread(self._sweep_temp_files)
        if swept:
            log.info("removed %d temporary files of writers that are gone", swept)
        self.pool = ImagePool(ImageOptions.from_settings(self.cfg), self.cfg.image_workers_per_process)
        booting = asyncio.create_task(self.pool.start())  # boots while the first parts are fetched
        why = "queue empty"
        try:
            hosts = HostBoard(self.cfg, self.r, bus.Keys(self.cfg.namespace))  # 429s and rates shared by every worker
            async with Fetcher(self.cfg, self._resolver, address_policy=self._policy, hosts=hosts) as fetcher:
                runner = PartRunner(self.cfg, fetcher, self.pool, self.stats, self.consumer, self.spool.dir)
                self.parts.attach(runner, fetcher)
                await self.pausing.through_outages(self.heartbeat.write)  # in `streamcap status` before any claim
                upkeep = asyncio.create_task(self.heartbeat.upkeep(self.parts.keepalive, self.cfg.lease_seconds))
                try:
                    why = await self._claim_loop()
                    await self.parts.drain()
                finally:
                    upkeep.cancel()
                    await asyncio.gather(upkeep, return_exceptions=True)
        finally:
            await asyncio.gather(booting, return_exceptions=True)
            self.pool.close()
            await asyncio.to_thread(self.heartbeat.clear)
        log.info("downloader %s stopped (%s): %s", self.consumer, why, self.stats.summary(time.monotonic() - started))
        return EXIT_GAVE_UP if self.gave_up else 0

    def request_stop(self, sig: int | None = None) -> None:
        now = time.monotonic()
        if self.stop_requested.is_set():
            # A second signal stops at once; one within a second is the same request arriving
            # twice (Ctrl-C reaches the process group, and `--processes` forwards it as well).
            if now - self._stop_at > 1.0:
                log.warning("second stop signal: releasing the parts in flight now")
                self.parts.cancel_all()
            return
        self._stop_at = now
        name = signal.Signals(sig).name if sig else "stop"
        log.info(
            "%s received: no new parts; finishing %d in flight (grace %.0f s)",
            name,
            len(self.parts.active),
            self.cfg.grace_seconds,
        )
        self.stop_requested.set()

    async def _claim_loop(self) -> str:
        parts, pausing = self.parts, self.pausing
        while not self.stop_requested.is_set():
            try:
                if pausing.should_give_up(busy=bool(parts.active)):
                    return f"gave up: {pausing.gave_up}"
                if pausing.holding() or not parts.has_room() or not await pausing.disk_allows():
                    await parts.wait_for_change(self.stop_requested)
                    continue
                # Short blocks while parts run (claims must not lag) or a batch run waits to end.
                block_ms = 200 if parts.active or self.cfg.exit_when_empty else 1000
                pausing.before_claim()
                claimed = await asyncio.to_thread(self.queue.claim, block_ms)
                assert parts.runner is not None
                parts.runner.work_waiting = claimed is not None
                if claimed is not None:
                    admitted = await self.claiming.admit(claimed)
                    if admitted is not None:
                        parts.start(claimed, *admitted)
                elif not parts.active and self.cfg.exit_when_empty and await asyncio.to_thread(self.queue.is_empty):
                    return "queue empty"
                pausing.after_claim(busy=bool(parts.active))
            except REDIS_DOWN as e:
                await pausing.wait_for_redis(e, "claiming parts", stop=self.stop_requested.is_set)
        return "stop requested"

    def _sweep_temp_files(self) -> int:
        return self.spool.sweep(self.cfg.temp_stale_seconds)


# --- entry points ------------------------------------------------------------------------------------


def run_worker(cfg: DownloaderSettings, redis_url: str) -> int:
    """One worker process (what `--processes 1` runs); `redis_url` as `run` resolved it."""
    r = bus.connect(redis_url, keys=bus.Keys(cfg.namespace), who=f"downloader {instance_id()}")
    bus.wait_for_redis(r, what="Redis (downloader start)")
    try:
        return asyncio.run(Worker(cfg, r).serve())
    finally:
        r.close()


def _child_main(cfg: DownloaderSettings, index: int, redis_url: str) -> None:
    # A forked worker inherits the parent's handlers and (see supervisor) blocked stop signals.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    setup_logging("downloader", cfg.log_level)
    raise SystemExit(run_worker(cfg, redis_url))


def run(cfg: DownloaderSettings) -> int:
    """The download service: `--processes` worker processes (this one, or children)."""
    setup_logging("downloader", cfg.log_level)
    redis_url = cfg.require_redis()  # before any process starts: a missing URL is one line
    namespaces.claim(cfg.shard_dir, cfg.namespace)
    log.info("streamcap %s downloader settings: %s", __version__, to_json_text(cfg))
    if cfg.processes == 1:
        with ProgressThread(DownloadProgress(cfg, redis_url, pids=lambda: {os.getpid()})):
            return run_worker(cfg, redis_url)
    child = functools.partial(_child_main, redis_url=redis_url)
    return supervise(cfg, child, progress=lambda pids: DownloadProgress(cfg, redis_url, pids))
