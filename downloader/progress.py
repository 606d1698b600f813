"""What `streamcap download` shows while it runs: rows done, ok and failed, per second, for the
whole command (all its `--processes` workers), and the rows left in the queue.

    progress = DownloadProgress(cfg, redis_url, pids=lambda: {os.getpid()})
    progress.tick()         # often: reads Redis once per READ_EVERY_S, draws (streamcap.common.progress)
    progress.close()

The counts come from the workers' heartbeats (streamcap.formats.heartbeats), the ones whose pid is
one of this command's: a worker process writes its totals there anyway, so the parent learns them
without a pipe of its own. A heartbeat is written every few seconds, so the numbers trail the
work by that much. A worker that exited or was restarted keeps the counts it last reported; the
closing totals are each worker's own "downloader ... stopped" line. The
rows left are the queue's (every downloader's): rows enqueued less rows committed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import redis

from streamcap import bus
from streamcap.common.progress import Progress
from streamcap.downloader.config import DownloaderSettings
from streamcap.formats.heartbeats import DownloaderHeartbeat
from streamcap.formats.records import SourceRecord

READ_EVERY_S = 1.0


class DownloadProgress:
    def __init__(self, cfg: DownloaderSettings, redis_url: str, pids: Callable[[], set[int]]) -> None:
        self.redis_url, self.keys, self.pids = redis_url, bus.Keys(cfg.namespace), pids
        self.progress = Progress("download", unit="rows", every=cfg.progress_every)
        self._r: redis.Redis | None = None  # connected on the first read: `--processes` forks before it
        self._last: dict[str, DownloaderHeartbeat] = {}  # by worker id, also of workers gone
        self._next_read = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next_read:
            return
        self._next_read = now + READ_EVERY_S
        try:
            self._read()
        except (redis.RedisError, bus.RedisUnavailable, OSError):
            pass  # the workers wait out the outage and say so; the numbers resume with Redis

    def _read(self) -> None:
        if self._r is None:
            self._r = bus.connect(self.redis_url, retries=0)
        pids = self.pids()
        for beat in bus.read_heartbeats(self._r, self.keys, bus.ROLE_DOWNLOADER):
            if isinstance(beat.record, DownloaderHeartbeat) and beat.record.pid in pids:
                self._last[beat.id] = beat.record
        rows = sum(b.urls for b in self._last.values())
        ok = sum(b.images for b in self._last.values())
        left = self._rows_left()
        self.progress.update(
            rows,
            total=rows + left if left else None,
            note=f"ok {ok}, failed {rows - ok}, {len(self._last)} worker(s)",
        )

    def _rows_left(self) -> int | None:
        assert self._r is not None
        enqueued = sum(SourceRecord.from_message(json.loads(raw)).rows for raw in self._r.hvals(self.keys.sources))
        if not enqueued:
            return None
        committed = int(self._r.hget(self.keys.stats, bus.STAT_ROWS) or 0)
        return max(0, enqueued - committed)

    def close(self) -> None:
        # No closing line of totals: an exiting worker takes its heartbeat with it, so they would
        # trail; each worker's own "downloader ... stopped" line has its exact totals.
        self.progress.close(finished=False)
        if self._r is not None:
            self._r.close()


class ProgressThread:
    """`tick` once a second in a thread, for a process whose main thread runs the event loop."""

    def __init__(self, progress: DownloadProgress) -> None:
        self.progress = progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-progress", daemon=True)

    def __enter__(self) -> ProgressThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.progress.close()

    def _run(self) -> None:
        while not self._stop.wait(READ_EVERY_S):
            self.progress.tick()
