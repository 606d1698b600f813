"""A claimed part, from the worker's side: taken in, or handed back one of three ways.

    claiming = Claiming(cfg, queue, stats, pausing, store)   # queue: the worker's PartClaimer
    await claiming.environment_failed(claimed, part, reason)   # released uncounted, the worker pauses
    taken = await claiming.admit(claimed)              # (part, source) to run, or None: dealt with
    await claiming.strike(claimed, part, error)        # the part's own failure: counted, released
    await claiming.give_back(claimed)                  # the environment's fault: released uncounted
    await claiming.dead_letter(claimed, part, error)   # to parts:dead

`admit` deals with what a claim may bring besides work: a duplicate delivery of a part already
done (acknowledged), an entry that is no part, or a redelivered part whose deliveries are up
(dead-lettered), a part whose source is defined nowhere (a strike). A redelivered part is dead
after `--max-deliveries` strikes, or after LOST_DELIVERIES_FACTOR x `--max-deliveries`
deliveries lost to workers that died or stalled (downloader.claims).

A source not in Redis is read from the shard store (the shard dir, or its bucket:
streamcap.common.store); a bucket that does not answer then is a failure of the environment:
the part goes back uncounted and the worker pauses.
"""

from __future__ import annotations

import asyncio
import json
import logging

from streamcap import bus
from streamcap.common.store import ShardStore, StoreUnavailable
from streamcap.downloader.claims import Claimed, PartClaimer
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.failures import environment_failure
from streamcap.downloader.livestats import LiveStats
from streamcap.downloader.pausing import REDIS_DOWN, Pausing
from streamcap.formats.records import PartRecord, SourceRecord
from streamcap.shardwriter import registry

log = logging.getLogger("streamcap.downloader")

# Lost deliveries (killed or stalled workers) that dead-letter a part with no strike: far beyond
# churn (a part would have to be in flight at 20 kills), yet an end for a part that kills its
# whole worker process every time, which no worker lives to record as a strike.
LOST_DELIVERIES_FACTOR = 4


class Claiming:
    """What one worker does with the entries it claims, besides running them."""

    def __init__(
        self, cfg: DownloaderSettings, queue: PartClaimer, stats: LiveStats, pausing: Pausing, store: ShardStore
    ) -> None:
        self.cfg, self.queue, self.stats, self.pausing = cfg, queue, stats, pausing
        self.store = store  # where sources are recorded besides Redis: the shard dir or its bucket

    async def admit(self, claimed: Claimed) -> tuple[PartRecord, SourceRecord] | None:
        """The part and its source, to run; None when the entry was dealt with here."""
        try:
            part = claimed.part()
        except (bus.MessageError, KeyError, TypeError, ValueError) as e:
            await self.dead_letter(claimed, None, f"unreadable part entry: {e}")
            return None
        if await asyncio.to_thread(self.queue.is_done, part.done_id):
            await asyncio.to_thread(self.queue.ack, claimed.entry_id)  # a duplicate delivery of a done part
            return None
        verdict = await self._verdict(claimed, part) if claimed.deliveries > 1 else None
        if verdict:
            await self.dead_letter(claimed, part, verdict)
            return None
        try:
            source = await asyncio.to_thread(self._source, part.source)
        except StoreUnavailable as e:  # the bucket, not the part: give it back uncounted and pause
            await self.environment_failed(claimed, part, environment_failure(e, self.cfg.shard_dir) or str(e))
            return None
        if source is None:
            await self.strike(
                claimed,
                part,
                f"source {part.source!r} is not enqueued (no definition in Redis or in {self.store})",
            )
            return None
        log.info(
            "claimed part %s (rows %d-%d, delivery %d)", part.done_id, part.start, part.end - 1, claimed.deliveries
        )
        return part, source

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

    def _source(self, source_id: str) -> SourceRecord | None:
        raw = self.queue.r.hget(self.queue.keys.sources, source_id)
        if raw:
            return SourceRecord.from_message(json.loads(raw))
        return registry.load_source(self.store, source_id)

    async def strike(self, claimed: Claimed, part: PartRecord, error: str) -> None:
        """The part's own failure: a strike, the error recorded, the part released for a retry."""
        self.stats.parts_failed += 1
        await self.pausing.through_outages(self.queue.record_error, part.done_id, error)
        strikes = await self.pausing.through_outages(self.queue.strike, claimed.entry_id)
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
        await self.pausing.through_outages(
            lambda: self.queue.release(claimed.entry_id, count_delivery=True, after_ms=delay_ms)
        )

    async def give_back(self, claimed: Claimed) -> None:
        """Release the part uncounted: another worker may take it now."""
        await self.pausing.through_outages(lambda: self.queue.release(claimed.entry_id, count_delivery=False))

    async def environment_failed(self, claimed: Claimed, part: PartRecord, reason: str) -> None:
        """Not the part's fault: counted as such, the worker pauses (saying why), the part goes back uncounted."""
        self.stats.parts_env_failed += 1
        self.pausing.environment_failed(part.part_id, reason)
        await self.give_back(claimed)

    async def dead_letter(self, claimed: Claimed, part: PartRecord | None, error: str) -> None:
        if await self.pausing.through_outages(self.queue.dead_letter, claimed, part, error):
            self.stats.parts_dead += 1
            log.error("part %s moved to parts:dead: %s", part.part_id if part else claimed.entry_id, error)

    def release_quietly(self, entry_id: str) -> int:
        """Release uncounted if Redis answers; 1 when released (a stop's release, in a thread)."""
        try:
            return int(self.queue.release(entry_id, count_delivery=False))
        except REDIS_DOWN:  # the lease brings it back to another worker anyway
            return 0
