"""Live counters of one worker process and the rates its heartbeat reports.

    stats = LiveStats()
    stats.row_done(reason=None)                 # a sample
    stats.row_done(reason="timeout")            # a failure
    stats.rates(wire_bytes=fetcher.wire_bytes)  # {'urls_per_s': ..., 'images_per_s': ..., 'mb_per_s': ...}

Rates are measured over the last RATE_WINDOW_S seconds (or since start, when shorter), so a
heartbeat shows what the worker does now, not its lifetime average.
"""

from __future__ import annotations

import time
from collections import Counter, deque

from streamcap.text.captions import MAX_CAPTION_CHARS

RATE_WINDOW_S = 30.0


class LiveStats:
    def __init__(self) -> None:
        self.started = time.time()
        self.urls = 0  # rows finished (a sample or a failure)
        self.images = 0  # rows that became a sample
        self.failures: Counter[str] = Counter()
        self.parts_committed = 0
        self.parts_released = 0
        self.parts_failed = 0  # attempts that ended in an error of the part (a strike; retried)
        self.parts_env_failed = 0  # attempts the environment failed (released uncounted)
        self.parts_superseded = 0  # another worker committed or reclaimed the part first
        self.parts_dead = 0
        self.rows_deferred = 0  # stragglers cut from committed parts, fetched again by a retry part
        self.captions_cut = 0  # samples whose caption was cut to text.captions.MAX_CAPTION_CHARS
        self._samples: deque[tuple[float, int, int, int]] = deque()

    def row_done(self, reason: str | None) -> None:
        self.urls += 1
        if reason is None:
            self.images += 1
        else:
            self.failures[reason] += 1

    def rates(self, wire_bytes: int, now: float | None = None) -> dict[str, float]:
        """urls/s, images/s and MB/s over the recent window."""
        now = time.monotonic() if now is None else now
        self._samples.append((now, self.urls, self.images, wire_bytes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        t0, urls0, images0, bytes0 = self._samples[0]
        span = now - t0
        if span <= 0:
            return {"urls_per_s": 0.0, "images_per_s": 0.0, "mb_per_s": 0.0}
        return {
            "urls_per_s": round((self.urls - urls0) / span, 2),
            "images_per_s": round((self.images - images0) / span, 2),
            "mb_per_s": round((wire_bytes - bytes0) / span / 1e6, 3),
        }

    def summary(self, elapsed: float) -> str:
        top = ", ".join(f"{reason} {n}" for reason, n in self.failures.most_common(5))
        rate = self.images / elapsed if elapsed > 0 else 0.0
        return (
            f"{self.parts_committed} parts committed, {self.parts_released} released, "
            f"{self.parts_failed} failed attempts, {self.parts_env_failed} given back to the environment, "
            f"{self.parts_dead} dead; {self.urls} urls -> "
            f"{self.images} images + {sum(self.failures.values())} failures"
            f"{f' ({top})' if top else ''}"
            f"{f', {self.rows_deferred} slow rows deferred to retry parts' if self.rows_deferred else ''}"
            f"{f', {self.captions_cut} captions cut to {MAX_CAPTION_CHARS} characters' if self.captions_cut else ''}"
            f" in {elapsed:.0f} s ({rate:.1f} images/s)"
        )
