"""A part's stragglers: rows still on the network long after the rest of their part is done.

    progress = PartProgress(rows=250, straggler_s=5.0)     # one per running part
    fetch = progress.on_wire(row)                           # the row's fetch, watched while it runs
    ...                                                      # progress.off_wire(row), progress.row_finished(row)
    await watch_stragglers(progress, work_waiting)          # cancels the stragglers' fetches (a task)
    progress.deferral(row)                                  # why the row was cut, or None

A part commits once every row has an outcome, so a single row that hangs until --total-timeout
holds its part, its open shard and its part slot that long, and with every part waiting on one
such row the network sits idle. `--straggler-seconds` S bounds that. Once at least half of a
part's rows are done, no *fast* row of it (one on the network for less than S) has finished for
S seconds, and every row still open has been on the network (holding a connection slot) for S
seconds, those rows are *deferred*: their requests are cancelled, each is recorded as a
`timeout` failure that says so, and the part commits. The commit also enqueues a retry part of
exactly the deferred rows at the end of the queue (`shardwriter.commit`; once: a retry part
defers nothing), where each row gets its full --total-timeout again; that commit replaces their
outcomes, so every row counts once, with its latest outcome, and the audit stays exact.

Why these conditions: a row waiting for a connection slot is held up by this process's load,
not by its server, so it is not a straggler; a part whose rows are all slow (one slow host) has
no "rest of the part" to wait less for, so it is left alone: deferring needs half the part
done, some of it by fast rows; and a slow row that does finish says nothing about the hung
ones, so it does not restart the clock.
Deferring only pays while other parts wait to be claimed: with the queue drained, the retry
part would start at once and spend its full time again, so then nothing is deferred.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from streamcap.downloader.fetch import FetchResult

# The share of a part's rows that must be done before its open rows can be stragglers.
TAIL_SHARE = 0.5
# How often a part's open rows are looked at: a straggler is cut at most this late.
WATCH_EVERY_S = 0.25


@dataclass
class _OnWire:
    task: asyncio.Task
    fetch: FetchResult


@dataclass
class PartProgress:
    """Counters of one running part, and which of its rows are fetching now."""

    rows: int
    straggler_s: float = 0.0  # 0: never defer
    dispatched: int = 0  # rows handed to the fetcher (or failed before it)
    finished: int = 0
    wire_bytes: int = 0
    last_finished: float | None = None  # loop time the last fast row finished; None: none yet
    fetching: dict[int, _OnWire] = field(default_factory=dict)
    deferred: dict[int, str] = field(default_factory=dict)  # row -> why it was cut
    _slow: set[int] = field(default_factory=set)  # rows whose fetch took S or longer

    def on_wire(self, row: int) -> FetchResult:
        """The FetchResult row `row` (of the current task) fetches into, watched while it runs."""
        task = asyncio.current_task()
        assert task is not None
        fetch = FetchResult()
        self.fetching[row] = _OnWire(task, fetch)
        return fetch

    def off_wire(self, row: int) -> None:
        """The row's fetch is over (its body is in, it failed, or it was cut)."""
        on_wire = self.fetching.pop(row, None)
        since = on_wire.fetch.on_wire_since if on_wire else None
        if since is not None and asyncio.get_running_loop().time() - since >= self.straggler_s:
            self._slow.add(row)

    def row_finished(self, row: int) -> None:
        self.finished += 1
        if row not in self._slow:  # only a fast row says the part is still moving
            self.last_finished = asyncio.get_running_loop().time()

    def deferral(self, row: int) -> str | None:
        return self.deferred.get(row)

    def stragglers(self, now: float) -> list[int]:
        """The open rows to defer now (see the module doc); [] when there are none."""
        open_rows = self.rows - self.finished
        if self.straggler_s <= 0 or not open_rows or self.finished < TAIL_SHARE * self.rows:
            return []
        if self.last_finished is None or now - self.last_finished < self.straggler_s:
            return []  # no fast row yet (a slow host: nothing to wait less for), or one just now
        if len(self.fetching) != open_rows:
            return []  # an open row is not fetching (waiting for a slot, or its image in work)
        for on_wire in self.fetching.values():
            since = on_wire.fetch.on_wire_since
            if since is None or now - since < self.straggler_s:
                return []
        return sorted(self.fetching)

    def defer(self, now: float) -> int:
        """Cancel the stragglers' fetches; each row's task records its deferral. Returns how many."""
        rows = self.stragglers(now)
        for row in rows:
            on_wire = self.fetching.pop(row)
            waited = now - (on_wire.fetch.on_wire_since or now)
            self.deferred[row] = (
                f"deferred after {waited:.1f} s on the network, the rest of its part done "
                f"(--straggler-seconds {self.straggler_s:g}); a retry part fetches it again"
            )
            on_wire.task.cancel()
        return len(rows)


async def watch_stragglers(progress: PartProgress, work_waiting: Callable[[], bool]) -> None:
    """Defer the part's stragglers whenever there are some and `work_waiting()` says other
    parts wait to be claimed; runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(WATCH_EVERY_S)
        if work_waiting():
            progress.defer(loop.time())
