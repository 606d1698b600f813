"""One part, start to finish: read its rows, fetch and process every row, write the shards.

    runner = PartRunner(cfg, fetcher, pool, stats, owner="host-1234", shard_dir=spool.dir)
    runner.admit(part)                                      # when claimed; runner.forget(part) when over
    part_stats, deferred = await runner.run(part, source, claim)   # shards + stats file on disk
    commit_part(r, keys, part_stats, entry_id, consumer=..., follow_up=...)   # the caller commits

Every row of the part ends as exactly one `writer.add` (a sample) or one `writer.fail` (a
reason from streamcap.formats.records.FAILURE_REASONS); rows with an empty or malformed URL are not
dropped but recorded as `invalid_url`. All rows of a part run concurrently; the fetcher's
global and per-host limits decide how many are on the network at once, and a downloaded body
keeps its fetch slot until its image is processed (`Fetcher.fetch_held`). Rows still on the
network long after the rest of the part is done are deferred (`downloader.stragglers`): they
fail as `timeout` now and are fetched again by a retry part the commit enqueues. So are rows
whose host is paused for longer than --straggler-seconds (downloader.hosts), as `throttled`.

A row whose image kills the image worker (or hangs it) fails the whole attempt (`PoisonRow`),
the other rows being cancelled: a crash may be passing (the OOM killer under a burst of large
images), so the part is retried like any failed attempt, and a row that crashes the decoder
every time gets the part dead-lettered after --max-deliveries with that row named in its last
error. A full or read-only shard dir, a source file missing on this machine and a source file
changed since it was enqueued (downloader.pin) fail the attempt too, as failures of the
environment, not of the part (`failures.environment_failure`).
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

from streamcap.common.logs import first_line
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.fetch import Fetcher
from streamcap.downloader.imagepool import ImagePool
from streamcap.downloader.imageproc import Rejection
from streamcap.downloader.livestats import LiveStats
from streamcap.downloader.pin import PinChecker
from streamcap.downloader.security import BlockedAddressError, InvalidURLError, check_url
from streamcap.downloader.sources import Source, open_source
from streamcap.downloader.stragglers import PartProgress, watch_stragglers
from streamcap.formats.records import PartRecord, PartStats, SourceRecord
from streamcap.shardwriter import faults
from streamcap.shardwriter.commit import PartClaim
from streamcap.shardwriter.writer import PartWriter
from streamcap.text.captions import cap_caption, process_caption

# Fault point (STREAMCAP_FAULT=after_fetch): every row fetched and processed, nothing finalized.
FAULT_AFTER_FETCH = "after_fetch"
_SOURCE_CACHE = 8
_CRASH = "processing_crash"


class PoisonRow(RuntimeError):
    """An image worker process died (or hung) on this row's image: the part's attempt fails."""

    def __init__(self, row: int, url: str, detail: str) -> None:
        self.row, self.url = row, url
        super().__init__(f"row {row} ({url[:200]}): {detail}")


class PartRunner:
    """What the parts of one worker process share: settings, fetcher, image pool, counters."""

    def __init__(
        self,
        cfg: DownloaderSettings,
        fetcher: Fetcher,
        pool: ImagePool,
        stats: LiveStats,
        owner: str,
        shard_dir: Path | None = None,
    ) -> None:
        self.cfg, self.fetcher, self.pool, self.stats, self.owner = cfg, fetcher, pool, stats, owner
        self.shard_dir = shard_dir or cfg.shard_dir  # the upload spool when shards go to a bucket (downloader.spool)
        self._sources: dict[str, Source] = {}
        self._pins = PinChecker()
        self._progress: dict[int, PartProgress] = {}
        # Parts wait in the queue (the claim loop's last look found one): stragglers are worth
        # deferring only then (downloader.stragglers).
        self.work_waiting = True

    def admit(self, part: PartRecord) -> None:
        """Count a claimed part's rows as open at once, before its task first runs, so the
        worker does not claim more parts on the strength of counters that lag behind."""
        # A retry part's rows are the stragglers of an earlier try: each gets its full --total-timeout.
        straggler_s = 0.0 if part.retry else self.cfg.straggler_seconds
        # by identity: a duplicate delivery is its own
        self._progress[id(part)] = PartProgress(rows=part.rows, straggler_s=straggler_s)

    def forget(self, part: PartRecord) -> None:
        """The part's task ended (done, failed or cancelled, even before it started)."""
        self._progress.pop(id(part), None)

    @property
    def rows_open(self) -> int:
        """Rows of running parts not finished yet."""
        return sum(p.rows - p.finished for p in self._progress.values())

    @property
    def rows_undispatched(self) -> int:
        """Rows of running parts not yet handed to the fetcher."""
        return sum(p.rows - p.dispatched for p in self._progress.values())

    @property
    def parts_in_tail(self) -> int:
        """Running parts whose every open row is on the network: waiting on servers, not on us."""
        return sum(1 for p in self._progress.values() if p.finished < p.rows and len(p.fetching) == p.rows - p.finished)

    async def run(self, part: PartRecord, source: SourceRecord, claim: PartClaim | None) -> tuple[PartStats, list[int]]:
        """Process every row of an admitted `part`; returns the writer's stats (not committed)
        and the rows deferred as stragglers (downloader.stragglers)."""
        progress = self._progress[id(part)]
        rows = await asyncio.to_thread(self._read_rows, source, part)
        with PartWriter(
            self.shard_dir,
            part,
            max_samples=self.cfg.shard_max_samples,
            max_bytes=self.cfg.shard_max_bytes,
            owner=self.owner,
            claim=claim,
        ) as writer:
            watch = None
            if progress.straggler_s > 0:
                watch = asyncio.create_task(watch_stragglers(progress, lambda: self.work_waiting))
            try:
                # A retry part fetches only its listed rows; `rows` holds the whole part's range.
                await _all_or_none(
                    [self._row(writer, row, rows, row - part.start, source, progress) for row in part.row_numbers]
                )
            finally:
                if watch is not None:
                    watch.cancel()
                    await asyncio.gather(watch, return_exceptions=True)
            faults.maybe_crash(FAULT_AFTER_FETCH, part.part_id)
            stats = await _uninterrupted(asyncio.to_thread(writer.finish, progress.wire_bytes))
            return stats, sorted(progress.deferred)

    def _read_rows(self, source: SourceRecord, part: PartRecord) -> dict[str, list[Any]]:
        # Before every part: a file changed since enqueue would put new rows under old ranges.
        self._pins.verify(source)
        opened = self._sources.get(source.uri)
        if opened is None:
            if len(self._sources) >= _SOURCE_CACHE:
                self._sources.clear()
            opened = self._sources[source.uri] = open_source(source.uri)
        columns = list(dict.fromkeys([source.url_col, source.caption_col, *source.extra_caption_cols]))
        return opened.read_rows(columns, part.start, part.end)

    async def _row(
        self,
        writer: PartWriter,
        row: int,
        rows: dict[str, list[Any]],
        i: int,
        source: SourceRecord,
        progress: PartProgress,
    ) -> None:
        progress.dispatched += 1
        try:
            reason = await self._row_outcome(writer, row, rows, i, source, progress)
        except asyncio.CancelledError:
            why = progress.deferral(row)
            task = asyncio.current_task()
            # Deferred, and cancelled by nothing else (a lost claim, a second stop signal).
            if why is None or task is None or task.uncancel() > 0:
                raise
            reason = _fail(writer, row, _text(rows[source.url_col][i]), "timeout", why)
        finally:
            progress.off_wire(row)
        progress.row_finished(row)
        self.stats.row_done(reason)

    async def _row_outcome(
        self,
        writer: PartWriter,
        row: int,
        rows: dict[str, list[Any]],
        i: int,
        source: SourceRecord,
        progress: PartProgress,
    ) -> str | None:
        """Write the row as a sample (None) or a failure (its reason)."""
        url = _text(rows[source.url_col][i])
        try:
            check_url(url, allow_private=True)  # syntax only here; the fetcher checks addresses
        except InvalidURLError as e:
            return _fail(writer, row, url, "invalid_url", str(e))
        except BlockedAddressError as e:  # an address no server has (security.never_a_server)
            return _fail(writer, row, url, "blocked_address", e.why)
        cell = rows[source.caption_col][i]
        if cell is not None and not isinstance(cell, str):  # a jsonl list or number: its repr is no caption
            return _fail(writer, row, url, "empty_caption", f"caption is a {type(cell).__name__}, not text")
        caption_raw, caption_chars = cap_caption(cell or "")
        caption = process_caption(caption_raw, self.cfg.caption_sentences)
        if not caption:
            return _fail(writer, row, url, "empty_caption", "caption is empty after normalisation")
        watched = progress.on_wire(row)
        watched.defer_s = progress.straggler_s or None  # a retry part waits for its host instead
        async with self.fetcher.fetch_held(url, watched) as result:
            progress.off_wire(row)  # before any await: a row past its fetch is never cut
            progress.wire_bytes += result.wire_bytes
            if result.deferred:  # its host is paused (downloader.hosts): the retry part fetches it
                progress.deferred[row] = result.detail
            if result.data is None:
                return _fail(writer, row, url, result.reason or "connect_error", result.detail)
            image = await self.pool.process(result.data, tag=f"{writer.part.part_id}@{row}")  # selects faults
        if isinstance(image, Rejection) and image.reason == _CRASH:
            raise PoisonRow(row, url, image.detail)
        if isinstance(image, Rejection):
            return _fail(writer, row, url, image.reason, image.detail)
        meta = {
            "url": url,
            "caption_raw": caption_raw,
            "captions": {col: cap_caption(_text(rows[col][i]))[0] for col in source.extra_caption_cols},
            "width": image.width,
            "height": image.height,
            "orig_width": image.orig_width,
            "orig_height": image.orig_height,
            "sha256": image.sha256,
        }
        if caption_chars:
            meta["caption_chars"] = caption_chars  # cut to MAX_CAPTION_CHARS: how long it was
            self.stats.captions_cut += 1
        writer.add(row=row, image=image.data, image_ext=image.ext, caption=caption, meta=meta)
        return None


def describe_failure(e: BaseException) -> str:
    """One line for a part that failed as a whole; a full disk is named `disk_full` first."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"disk_full: {e.strerror or e} ({e.filename or 'shard dir'})"
    if isinstance(e, PoisonRow):
        return f"{_CRASH}: {e}"
    text = first_line(e, default="")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


async def _all_or_none(coros: list) -> None:
    """Run the rows concurrently; when one raises, cancel the others before passing it on, so
    no row of an abandoned attempt keeps a connection or writes into an aborted writer."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _uninterrupted(work):
    """Await `work`; when cancelled meanwhile, let it end before passing the cancellation on.

    A writer's `finish` runs in a thread: cancelling the part (its claim was lost, a second
    stop signal) must not abort the writer under it, half-way through its fsyncs and renames.
    It ends by itself: refused when the claim is gone, or complete and left to be redone.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.gather(task, return_exceptions=True)
        raise


def _fail(writer: PartWriter, row: int, url: str, reason: str, detail: str) -> str:
    writer.fail(row, url, reason, detail)
    return reason


def _text(value: Any) -> str:
    """A cell as text: None (a null, a missing jsonl key) becomes ''."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)
