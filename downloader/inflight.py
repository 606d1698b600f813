"""The parts a worker runs at once: started, kept alive, committed or handed back, drained at a stop.

    parts = PartsInFlight(cfg, queue, stats, claiming, pausing, beat_now=heartbeat.write, spool=spool)
    parts.attach(runner, fetcher)       # once the fetcher is open
    if parts.has_room(): parts.start(claimed, part, source)
    await parts.keepalive()             # every lease/4 (downloader.heartbeat's upkeep)
    await parts.drain()                 # at a stop: --grace-seconds, then release what is left

Room for another part (`has_room`): a free part slot and, with parts running, idle connections.
A part whose open rows all wait on servers (its tail) takes no slot: its rows are deferred
within --straggler-seconds anyway (downloader.stragglers), and meanwhile its connections' share
of the work is elsewhere. MAX_PARTS_FACTOR x --parts-in-flight bounds the parts (their rows,
open shards and file handles) held at once. A tail counts from the moment its rows are all on
the network, not once half the part is done and they have waited a second: that slower
claiming drains the queue later, so more rows are deferred and their retry parts run last,
alone (benchmarks/stragglers.py, 12,000 rows: 148 -> 79 images/s).

A part's run: its shards and stats file are written into the spool (downloader.spool: the shard
dir itself, or with --shard-dir s3://... a local folder), published (uploaded: shards, then the
stats file, once the claim is confirmed), committed (which registers them: only then can a
trainer claim them), and the spool's local copies of a bucket's part are removed whatever
happened.

A part ends one of four ways: committed; superseded (another worker committed it or took it
over: dropped); failed through its own fault (a strike, downloader.claiming); or failed through
the environment's (released uncounted, and the worker pauses: downloader.pausing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamcap.downloader.claiming import Claiming
from streamcap.downloader.claims import Claimed, PartClaimer
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.failures import environment_failure
from streamcap.downloader.fetch import Fetcher
from streamcap.downloader.livestats import LiveStats
from streamcap.downloader.part import PartRunner, describe_failure
from streamcap.downloader.pausing import DISK_RECHECK_S, Pausing
from streamcap.downloader.spool import Spool
from streamcap.formats.records import PartRecord, PartStats, SourceRecord
from streamcap.shardwriter.commit import COMMITTED, CommitResult, PartClaim, commit_part
from streamcap.shardwriter.retry import retry_part
from streamcap.shardwriter.writer import PartSuperseded

log = logging.getLogger("streamcap.downloader")

MAX_PARTS_FACTOR = 4  # parts in flight, tails included, at most this many x --parts-in-flight


@dataclass
class _Active:
    claimed: Claimed
    part: PartRecord
    task: asyncio.Task
    lost: bool = False
    committing: bool = False  # its commit is under way: the entry is acked by it, not lost


class PartsInFlight:
    """The running parts of one worker, by entry id."""

    def __init__(
        self,
        cfg: DownloaderSettings,
        queue: PartClaimer,
        stats: LiveStats,
        claiming: Claiming,
        pausing: Pausing,
        beat_now: Callable[[], None],
        spool: Spool | None = None,
    ) -> None:
        self.cfg, self.queue, self.stats, self.claiming, self.pausing = cfg, queue, stats, claiming, pausing
        self.spool = spool if spool is not None else pausing.spool  # where parts are written (downloader.spool)
        self.beat_now = beat_now  # writes the heartbeat (in a thread): a pause shows at once
        self.active: dict[str, _Active] = {}
        self.runner: PartRunner | None = None
        self.fetcher: Fetcher | None = None

    def attach(self, runner: PartRunner, fetcher: Fetcher) -> None:
        self.runner, self.fetcher = runner, fetcher

    def part_ids(self) -> list[str]:
        return [a.part.part_id for a in self.active.values()]

    def has_room(self) -> bool:
        """Room for another part (the module doc): a free slot, idle connections, under the bound."""
        if len(self.active) >= MAX_PARTS_FACTOR * self.cfg.parts_in_flight:
            return False
        if self.active:
            assert self.runner is not None and self.fetcher is not None
            if len(self.active) - self.runner.parts_in_tail >= self.cfg.parts_in_flight:
                return False
            if self.runner.rows_undispatched or self.fetcher.saturated:
                return False
        return True

    async def wait_for_change(self, stop: asyncio.Event) -> None:
        """Until a part finishes, `stop` is set, or a short tick passes."""
        waiters = [a.task for a in self.active.values()]
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                [*waiters, stopped],
                timeout=0.05 if self.active else DISK_RECHECK_S / 4,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopped.cancel()

    def start(self, claimed: Claimed, part: PartRecord, source: SourceRecord) -> None:
        assert self.runner is not None
        runner = self.runner
        runner.admit(part)
        task = asyncio.create_task(self._run(claimed, part, source), name=f"part {part.part_id}")
        task.add_done_callback(lambda _task: runner.forget(part))
        self.active[claimed.entry_id] = _Active(claimed, part, task)
        self.pausing.working()

    async def _run(self, claimed: Claimed, part: PartRecord, source: SourceRecord) -> None:
        """Run, commit, account. A cancelled part is left in self.active for whoever cancelled it."""
        assert self.runner is not None
        queue = self.queue
        claim = PartClaim(queue.r, queue.keys, claimed.entry_id, queue.consumer)
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.spool.prepare, part)
            stats, deferred = await self.runner.run(part, source, claim)
            await asyncio.to_thread(self.spool.publish, stats, claim)  # before the commit registers it
            if claimed.entry_id in self.active:
                self.active[claimed.entry_id].committing = True
            follow_up = retry_part(stats, deferred) if deferred else None
            result = await self.pausing.through_outages(
                lambda: commit_part(
                    queue.r, queue.keys, stats, claimed.entry_id, consumer=queue.consumer, follow_up=follow_up
                )
            )
        except PartSuperseded as e:
            self.stats.parts_superseded += 1
            log.info("%s", e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the part failed as a whole: released, retried later
            environment = environment_failure(e, self.spool.dir)
            if environment:
                await self._environment_failed(claimed, part, environment)
            else:
                await self.claiming.strike(claimed, part, describe_failure(e))
        else:
            await self._account(claimed, part, stats, deferred, result, started)
        finally:
            await asyncio.to_thread(self.spool.discard, part)  # a bucket's part: its local copies
        self.active.pop(claimed.entry_id, None)

    async def _account(
        self,
        claimed: Claimed,
        part: PartRecord,
        stats: PartStats,
        deferred: list[int],
        result: CommitResult,
        started: float,
    ) -> None:
        if result.status != COMMITTED:
            self.stats.parts_superseded += 1
            log.info("part %s: commit not applied (%s): another worker has it", part.part_id, result.status)
            return
        self.stats.parts_committed += 1
        self.pausing.environment_recovered(busy=bool(self.active))
        if claimed.deliveries > 1:
            await self.pausing.through_outages(self.queue.forget_strikes, claimed.entry_id)
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

    async def _environment_failed(self, claimed: Claimed, part: PartRecord, reason: str) -> None:
        """Not the part's fault: give it back uncounted (another worker may take it now), stop
        claiming for a while, and say why in the heartbeat."""
        await self.claiming.environment_failed(claimed, part, reason)
        await self.pausing.through_outages(self.beat_now)  # `streamcap status` says why at once

    async def keepalive(self) -> None:
        """Renew the claim of every part running; drop a part whose claim another worker took."""
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

    async def drain(self) -> None:
        """Give the parts in flight the grace period, then release what is left."""
        if not self.active:
            return
        self.pausing.stopping()
        tasks = [a.task for a in self.active.values()]
        await asyncio.wait(tasks, timeout=self.cfg.grace_seconds)
        for entry_id, active in list(self.active.items()):
            active.task.cancel()
            await asyncio.gather(active.task, return_exceptions=True)
            if not active.lost:
                released = await asyncio.to_thread(self.claiming.release_quietly, entry_id)
                self.stats.parts_released += released
                log.info("released part %s for another worker", active.part.part_id)
            self.active.pop(entry_id, None)

    def cancel_all(self) -> None:
        """Stop every part now (a second stop signal); `drain` releases them."""
        for active in self.active.values():
            active.task.cancel()
