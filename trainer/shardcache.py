"""Shards from a bucket for the loader: a local cache, filled ahead of the readers.

    cache = ShardCache(open_store("s3://b/p"), Path("/tmp/c"), max_bytes=20e9)
    path, waited_s = cache.fetch("relaion-000003-0000.tar", on_problem, give_up)   # None: skip it
    prefetcher = Prefetcher(cache, r, keys, run)        # a daemon thread in one loader worker per rank
    prefetcher.start()

`fetch` returns the cached copy or downloads it (to a temporary name, checked against the
length and CRC32 it was uploaded with, then renamed). An object that is gone (gc, a hand, a
lifecycle rule) or fails its checksum is reported through `on_problem` and answered None: the
stream counts it and skips it exactly like a shard file missing from a local shard dir. A bucket
that does not answer (endpoint down, timeouts, a 5xx) is waited out, retrying with a backoff up
to STORE_RETRY_MAX_S and saying so once; the time goes to the caller as data wait
(`fresh_wait_s`). `give_up()` (the training process died) ends the wait.

The prefetcher reads what the run's consumer group will hand out next (the `shards` entries after
the group's last-delivered id) and downloads them while the readers are still on earlier ones, up
to half the cache's budget of not-yet-read bytes. Several ranks on one machine may share a cache
directory: a shard two of them download at once is renamed into place twice, whole both times.

Eviction keeps the cache under `max_bytes`, oldest use first; a file used in the last
EVICT_GRACE_S is kept (a reader may be about to open it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from streamcap import bus
from streamcap.common.logs import first_line
from streamcap.common.store import ShardStore, StoreCorrupt, StoreUnavailable
from streamcap.formats.records import ShardRecord
from streamcap.formats.shards import SHARD_SUFFIX

log = logging.getLogger(__name__)

STORE_RETRY_S, STORE_RETRY_MAX_S = 1.0, 10.0
EVICT_GRACE_S = 120.0
PREFETCH_EVERY_S = 1.0
PREFETCH_AHEAD = 16  # registered shards looked at past the group's last-delivered entry


class ShardCache:
    """A bucket's shards, copied to a local folder on demand. See the module docstring."""

    def __init__(self, store: ShardStore, cache_dir: Path, max_bytes: int) -> None:
        self.store, self.dir, self.max_bytes = store, Path(cache_dir), max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self._said_down = False

    def cached(self, name: str) -> Path | None:
        path = self.dir / name
        return path if path.is_file() else None

    def fetch(
        self, name: str, on_problem: Callable[[str, str], None], give_up: Callable[[], bool] = lambda: False
    ) -> tuple[Path | None, float]:
        """(local path or None when the shard is to be skipped, seconds spent waiting for the bucket)."""
        path = self.cached(name)
        if path is not None:
            _touch(path)
            return path, 0.0
        started, delay = time.monotonic(), STORE_RETRY_S
        while True:
            try:
                got = self.store.get_file(name, self.dir / name)
            except StoreCorrupt as e:
                on_problem(name, f"shard object fails its checksum, skipped: {e}")
                return None, time.monotonic() - started
            except StoreUnavailable as e:
                if not self._said_down:
                    log.warning("shard bucket not answering (%s); waiting for it, counted as data wait", e)
                    self._said_down = True
                if give_up():
                    return None, time.monotonic() - started
                time.sleep(delay)
                delay = min(STORE_RETRY_MAX_S, delay * 2)
                continue
            if self._said_down:
                log.info("shard bucket answering again")
                self._said_down = False
            if got is None:
                on_problem(name, f"shard object {self.store}/{name} does not exist")
                return None, time.monotonic() - started
            self.evict()
            return self.dir / name, time.monotonic() - started

    def prefetch(self, name: str) -> bool:
        """Download `name` unless it is cached; False when the bucket did not give it."""
        if self.cached(name) is not None:
            return True
        try:
            got = self.store.get_file(name, self.dir / name)
        except (StoreUnavailable, StoreCorrupt):  # the reader fetches it again and says why
            return False
        if got is not None:
            self.evict()
        return got is not None

    def usage(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every cached shard."""
        out = []
        for entry in os.scandir(self.dir):
            if entry.name.endswith(SHARD_SUFFIX) and not entry.name.startswith("."):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def evict(self, room: int = 0) -> bool:
        """Remove the least recently used shards until `room` more bytes fit; False if they don't."""
        if not self.max_bytes:
            return True
        files = sorted(self.usage())
        total = sum(size for _, size, _ in files)
        now = time.time()
        for used, size, path in files:
            if total + room <= self.max_bytes or now - used < EVICT_GRACE_S:
                break  # (everything after this one was used more recently still)
            path.unlink(missing_ok=True)
            total -= size
        return total + room <= self.max_bytes


class Prefetcher(threading.Thread):
    """Downloads the shards the run's readers will be handed next. See the module docstring."""

    def __init__(self, cache: ShardCache, redis_url: str, keys: bus.Keys, run: str) -> None:
        super().__init__(name="shard-prefetch", daemon=True)
        self.cache, self.keys, self.group = cache, keys, keys.train_group(run)
        self.r = bus.connect(redis_url, retries=0, connect_timeout=2.0, socket_timeout=5.0)
        self.fetched = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except (*bus.REDIS_DOWN, redis.ResponseError) as e:  # waited out by the readers too
                log.debug("prefetch paused: %s", first_line(e))
            self._stop.wait(PREFETCH_EVERY_S)

    def _round(self) -> None:
        for record in self.upcoming():
            if self._stop.is_set() or self.cache.cached(record.name) is not None:
                continue
            if not self.cache.evict(room=record.bytes):
                return  # the cache is full of shards in use: the readers fetch on demand
            if self.cache.prefetch(record.name):
                self.fetched += 1

    def upcoming(self) -> list[ShardRecord]:
        """Registered shards the group has not delivered yet, oldest first."""
        last = "0-0"
        for group in self.r.xinfo_groups(self.keys.shards):
            if group["name"] == self.group:
                last = group["last-delivered-id"]
        entries = self.r.xrange(self.keys.shards, min=f"({last}", max="+", count=PREFETCH_AHEAD)
        deleted = self.r.smembers(self.keys.shards_deleted)
        out = []
        for _entry_id, fields in entries:
            try:
                record = ShardRecord.from_message(bus.decode(fields))
            except (bus.MessageError, TypeError, KeyError):
                continue
            if record.name not in deleted and "/" not in record.name and not record.name.startswith("."):
                out.append(record)
        return out


def _touch(path: Path) -> None:
    try:
        os.utime(path)  # the eviction order is last use
    except FileNotFoundError:
        pass
