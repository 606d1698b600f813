"""The sample stream of one loader worker: shards in, shuffled raw samples out, never ending.

Order of sources when the worker needs another shard:
1. shards restored from a checkpoint, then the fresh shards its consumer name still holds;
2. every 30 s, fresh shards held by consumers that left the job, or taken under this worker's
   own name by a loader worker of its previous incarnation that outlived it;
3. a never-read fresh shard (taken at once when there is one; once fewer than `min_ready`
   samples are buffered, waiting up to `fresh_wait_ms` for one to land);
4. a replay of a shard this run has already read that gc has not deleted, so no GPU idles
   while any data exists: with `replay="balanced"` (the default) one this worker has read least
   often (fresh or replayed; ties broken at random, seeded per rank and worker), so every
   shard's read count stays close to the mean however long fresh shards lag; `uniform` picks
   any at random, which reads the first shards of a run over and over;
5. nothing at all yet: wait, and say so once (calling `while_waiting` meanwhile: in the training
   process, the heartbeat, and the end of the wait when another rank stopped the run).

A run of shard readings none of whose samples the batch maker could use (it says so through
`judge`) is counted by `unusable_streak` (trainer.unusable): a wrong --caption-column stops the
run instead of replaying the same shards for ever.

While Redis is down, a worker that knows shards it can replay (read by itself, or listed by
Redis before the outage) does not wait for Redis: it replays them, asking Redis again every
REDIS_RECHECK_S, and takes fresh shards again once Redis answers. (The training process records
the reads once Redis is back: `ReadLedger`.) A worker that knows none waits the outage out.

Samples pass through a shuffle buffer that mixes shards. A shard is *finished* when its last
sample has left the buffer; finished shards travel with the batch that carries that sample,
so the training process acknowledges and counts them only once it has trained on them.

`state_dict()` between two samples captures everything needed to continue exactly: the open
shards and how far each was read, the buffer as (shard, ordinal) references and the RNG. Raw
bytes stay on disk; `load_state_dict()` reads them back.

With --shard-dir s3://bucket/prefix, shards are read from a local cache of the bucket
(trainer.shardcache, handed in as `cache`): an object gone or failing its checksum is reported
and skipped like a missing shard file, and the time spent waiting for a bucket that does not
answer counts as data wait (`fresh_wait_s`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamcap.formats.shards import Sample, iter_samples
from streamcap.trainer.config import TrainerSettings
from streamcap.trainer.shardcache import ShardCache
from streamcap.trainer.shardqueue import FinishedShard, Orphaned, RedisDown, ShardClaim, ShardQueue
from streamcap.trainer.unusable import UnusableShards

log = logging.getLogger(__name__)

TOUCH_EVERY_S = 30.0
ORPHAN_CHECK_EVERY_S = 30.0
DRY_RECHECK_S = 10.0  # after an empty wait for a fresh shard, replay without waiting this long
REDIS_RECHECK_S = 10.0  # while Redis is down, replay known shards this long before asking again
STATE_VERSION = 1


@dataclass
class StreamCounters:
    """Per-worker counts since the last batch; the training process sums them per rank."""

    fresh: int = 0
    replay: int = 0
    fresh_wait_s: float = 0.0
    problems: int = 0

    def take(self) -> dict[str, float]:
        out = {"fresh": self.fresh, "replay": self.replay, "fresh_wait_s": self.fresh_wait_s, "problems": self.problems}
        self.fresh = self.replay = self.problems = 0
        self.fresh_wait_s = 0.0
        return out


@dataclass
class OpenShard:
    claim: ShardClaim
    reader: Iterator[Sample] | None = None
    read: int = 0  # samples taken from the file (their ordinals are 0..read-1)
    emitted: int = 0  # samples that have left the buffer
    done_reading: bool = False
    missing: bool = False  # the file was not there

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim.to_dict(),
            "read": self.read,
            "emitted": self.emitted,
            "done_reading": self.done_reading,
            "missing": self.missing,
        }


@dataclass
class Buffered:
    slot: int
    ordinal: int
    sample: Sample


class SampleStream:
    """Raw samples of one worker, shuffled across shards; see the module docstring.

    It reads the loader settings of `cfg` as they are: --shard-dir, --shuffle-buffer (the buffer),
    --fresh-wait-ms, --replay and --batch-size (below a batch of buffered samples it waits or
    replays). What is this worker's own comes beside them: its seed, the consumers of the whole
    job (whose shards are not orphans), whether it is the one to say it waits for a shard, and
    (shards in a bucket) the local cache it reads them through.
    """

    def __init__(
        self,
        queue: ShardQueue,
        cfg: TrainerSettings,
        on_problem,
        *,
        worker_seed: int,
        job_consumers: frozenset[str] = frozenset(),
        announce_waiting: bool = True,
        cache: ShardCache | None = None,
        while_waiting: Callable[[], None] = lambda: None,
    ) -> None:
        self.queue, self.cfg, self._report = queue, cfg, on_problem
        self.cache = cache  # shards from a bucket (--shard-dir s3://...), see trainer.shardcache
        self.job_consumers, self.announce_waiting = job_consumers, announce_waiting
        self.while_waiting = while_waiting
        self.rng = np.random.default_rng(worker_seed)
        self.counters = StreamCounters()
        self.open: dict[int, OpenShard] = {}
        self.buffer: list[Buffered] = []
        self.queued: list[ShardClaim] = []
        self.finished: list[FinishedShard] = []
        self.unusable_streak = UnusableShards(cfg.max_unusable_shards)
        self._emitted_slot: int | None = None  # the reading of the sample `next_sample` returned last
        self._unusable: set[str] = set()  # replay candidates that had no readable sample
        # Shards this worker read through: replayable at once, before the training process has
        # counted them in Redis (it does so only when their last sample is trained on).
        self._read_here: set[str] = set()
        self._unshared: list[str] = []  # read through here, not yet told to the other workers
        self._opened: dict[str, int] = {}  # times this worker started reading each shard
        self._known: list[str] = []  # replay candidates Redis listed last time it answered
        self._redis_down_until = 0.0
        self._reading: int | None = None  # slot being read into the buffer
        self._next_slot = 0
        self._next_fresh_check = 0.0
        self._dry_until = 0.0
        self._next_touch = time.monotonic() + TOUCH_EVERY_S
        self._next_orphan_check = 0.0
        self._said_waiting = False
        self._low_water = max(1, min(cfg.shuffle_buffer // 2, cfg.batch_size))
        self._started = False

    # --- public ---------------------------------------------------------------------------

    def start(self) -> None:
        """Join the group and queue the fresh shards this consumer name still holds."""
        self.queue.ensure_group()
        self.queued += self._pending_not_held()
        self._started = True

    def next_sample(self) -> tuple[Sample, ShardClaim]:
        """The next raw sample and the shard it came from; blocks only while no data exists at all."""
        if not self._started:
            self.start()
        # With shards to replay, no Redis call may hold the worker up during an outage.
        with self.queue.impatient(bool(self._local_candidates())):
            self._touch_held()
            while True:
                self._refill()
                if self.buffer:
                    return self._emit()
                if self.queue.orphaned():
                    raise Orphaned(0)
                self.while_waiting()

    def judge(self, why: str | None) -> None:
        """Whether the sample `next_sample` returned last became training data (`why` None) or
        was skipped for `why`: what `unusable_streak` counts."""
        self.unusable_streak.judged(self._emitted_slot, why)

    def take_finished(self) -> list[FinishedShard]:
        out, self.finished = self.finished, []
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "rng": self.rng.bit_generator.state,
            "open": {str(slot): s.to_dict() for slot, s in self.open.items()},
            "reading": self._reading,
            "buffer": [(b.slot, b.ordinal) for b in self.buffer],
            "queued": [c.to_dict() for c in self.queued],
            "next_slot": self._next_slot,
            "read_here": sorted(self._read_here),
            "opened": dict(sorted(self._opened.items())),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off: reopen its shards and refill the buffer from them.

        Fresh shards Redis no longer holds for this run (acknowledged after the checkpoint)
        and replays of shards gc deleted are dropped, so no acknowledged shard is read again.
        """
        if state.get("version") != STATE_VERSION:
            log.warning(
                "loader state has version %r, this trainer reads %d; starting the stream afresh",
                state.get("version"),
                STATE_VERSION,
            )
            return
        self.rng.bit_generator.state = state["rng"]
        self._next_slot = int(state["next_slot"])
        self._read_here = set(state.get("read_here", []))
        self._opened = {name: int(n) for name, n in state.get("opened", {}).items()}
        self.queued = [c for c in map(ShardClaim.from_dict, state["queued"]) if self._still_readable(c)]
        wanted: dict[int, list[tuple[int, int]]] = {}
        for position, (slot, ordinal) in enumerate(state["buffer"]):
            wanted.setdefault(int(slot), []).append((ordinal, position))
        restored: dict[int, Buffered] = {}
        for slot_key, saved in state["open"].items():
            slot, shard = int(slot_key), _open_from_dict(saved)
            if not self._still_readable(shard.claim):
                continue
            self._restore_shard(slot, shard, dict(wanted.get(slot, [])), restored)
        self.buffer = [restored[p] for p in sorted(restored)]
        reading = state.get("reading")
        self._reading = reading if reading in self.open else None

    # --- reading ------------------------------------------------------------------------

    def _refill(self) -> None:
        """Read samples in until the buffer is full or no sample is available without waiting."""
        while len(self.buffer) < self.cfg.shuffle_buffer:
            # Waiting for a fresh shard, then replaying, only once the buffer runs low: fresh
            # samples must not be diluted by replays while buffered ones last.
            item = self._read_one(may_wait=len(self.buffer) < self._low_water)
            if item is None:
                return
            self.buffer.append(item)

    def _read_one(self, may_wait: bool) -> Buffered | None:
        while True:
            if self._reading is not None:
                item = self._next_from(self._reading)
                if item is not None:
                    return item
            claim = self._next_claim(may_wait)
            if claim is None:
                return None
            self._reading = self._open(claim)

    def _next_from(self, slot: int) -> Buffered | None:
        shard = self.open[slot]
        try:
            sample = next(shard.reader) if shard.reader is not None else None
        except StopIteration:
            sample = None
        except Exception as e:  # a reader bug must not kill the worker: end this shard
            self._report(shard.claim.name, f"reading failed: {type(e).__name__}: {e}")
            sample = None
        if sample is None:
            shard.done_reading, shard.reader, self._reading = True, None, None
            self.unusable_streak.all_read(slot, shard.read)
            self._read_here.add(shard.claim.name)
            self._unshared.append(shard.claim.name)
            self._maybe_finish(slot)
            return None
        shard.read += 1
        return Buffered(slot=slot, ordinal=shard.read - 1, sample=sample)

    def _pick_replay(self, candidates: list[str]) -> str:
        if self.cfg.replay == "balanced":
            # This worker's own counts: they need no Redis round trip, are saved with the
            # checkpoint (so a resume picks the same) and include reads not yet recorded. Every
            # worker balances its own reads over the shards it knows, so a shard's total stays
            # within about one read per worker of any other's.
            least = min(self._opened.get(name, 0) for name in candidates)
            candidates = [name for name in candidates if self._opened.get(name, 0) == least]
        return candidates[int(self.rng.integers(len(candidates)))]

    def _open(self, claim: ShardClaim) -> int:
        slot, self._next_slot = self._next_slot, self._next_slot + 1
        self._opened[claim.name] = self._opened.get(claim.name, 0) + 1
        self.unusable_streak.opened(slot, claim.name)
        path = self._local(claim.name)
        reader = iter_samples(path, on_problem=self._report) if path is not None else None
        self.open[slot] = OpenShard(claim=claim, reader=reader, missing=reader is None)
        return slot

    def _local(self, name: str) -> Path | None:
        """The shard's file to read, or None (said through `on_problem`): missing, or from a bucket
        gone or failing its checksum. Waiting for a bucket counts as waiting for data."""
        if self.cache is None:
            path = self.cfg.shard_dir / name
            if not path.is_file():
                self._report(name, f"shard file {path} does not exist")
                return None
            return path
        path, waited = self.cache.fetch(name, self._report, self.queue.orphaned)
        self.counters.fresh_wait_s += waited
        return path

    def _next_claim(self, may_wait: bool) -> ShardClaim | None:
        now = time.monotonic()
        if now < self._redis_down_until:
            return self._replay_known() if may_wait else None
        try:
            return self._next_claim_from_redis(may_wait, now)
        except RedisDown as e:
            log.warning("Redis is not answering (%s); replaying shards this worker knows meanwhile", e)
            self._redis_down_until = time.monotonic() + REDIS_RECHECK_S
            return self._replay_known() if may_wait else None

    def _local_candidates(self) -> list[str]:
        return [n for n in sorted(self._read_here | set(self._known)) if n not in self._unusable]

    def _replay_known(self) -> ShardClaim | None:
        candidates = self._local_candidates()
        if not candidates:
            return None
        return ShardClaim(name=self._pick_replay(candidates), samples=-1, fresh=False)

    def _next_claim_from_redis(self, may_wait: bool, now: float) -> ShardClaim | None:
        if self._unshared:  # before anything else: the other workers may be waiting with nothing to replay
            self.queue.share_reads(self._unshared)
            self._unshared = []
        if now >= self._next_orphan_check:
            self._next_orphan_check = now + ORPHAN_CHECK_EVERY_S
            self.queued += self.queue.reclaim_orphans(self.job_consumers)
            self.queued += self._strays()  # after the orphans are queued: they are pending here too
        if self.queued:
            return self.queued.pop(0)
        if not may_wait:
            if now < self._next_fresh_check:  # after a miss: not a Redis round trip per sample
                return None
            fresh = self.queue.next_fresh(0)
            if fresh is None:
                self._next_fresh_check = now + self.cfg.fresh_wait_ms / 1000
            return fresh
        # Once a wait came back empty, keep checking without waiting for a while: replays then
        # follow each other without a pause per shard.
        dry = now < self._dry_until
        fresh = self.queue.next_fresh(0 if dry else self.cfg.fresh_wait_ms)
        self.counters.fresh_wait_s += time.monotonic() - now
        if fresh is not None:
            self._dry_until = 0.0
            return fresh
        if not dry:
            self._dry_until = time.monotonic() + DRY_RECHECK_S
        self._known = self.queue.replay_candidates(self._read_here)
        candidates = [name for name in self._known if name not in self._unusable]
        if candidates:
            return ShardClaim(name=self._pick_replay(candidates), samples=-1, fresh=False)
        if not self._said_waiting:
            self._said_waiting = True
            (log.info if self.announce_waiting else log.debug)(
                "no shards to read yet; waiting for the first one to land in %s", self.queue.keys.shards
            )
        self._dry_until = 0.0  # nothing to replay either: the next attempt waits for a fresh shard
        if dry or self.cfg.fresh_wait_ms < 200:  # XREADGROUP did not block: don't spin on Redis
            time.sleep(0.2)
            self.counters.fresh_wait_s += 0.2
        return None

    # --- emitting -----------------------------------------------------------------------

    def _emit(self) -> tuple[Sample, ShardClaim]:
        index = int(self.rng.integers(len(self.buffer)))
        self.buffer[index], self.buffer[-1] = self.buffer[-1], self.buffer[index]
        item = self.buffer.pop()
        self._emitted_slot = item.slot
        shard = self.open[item.slot]
        shard.emitted += 1
        if shard.claim.fresh:
            self.counters.fresh += 1
        else:
            self.counters.replay += 1
        self._maybe_finish(item.slot)
        return item.sample, shard.claim

    def _maybe_finish(self, slot: int) -> None:
        shard = self.open[slot]
        if shard.done_reading and shard.emitted >= shard.read:
            if shard.read == 0:  # missing or nothing readable: never pick it for replay again
                self._unusable.add(shard.claim.name)
            self.finished.append(FinishedShard(shard.claim, samples=shard.read, missing=shard.missing))
            del self.open[slot]

    def _pending_not_held(self) -> list[ShardClaim]:
        """Fresh shards pending under this consumer name that are neither open nor queued here."""
        held = {s.claim.entry_id for s in self.open.values() if s.claim.fresh} | {c.entry_id for c in self.queued}
        return [c for c in self.queue.own_pending() if c.entry_id not in held]

    def _strays(self) -> list[ShardClaim]:
        """Fresh shards pending under this consumer name that this worker never took.

        A loader worker of the previous incarnation can outlive its training process by a few
        seconds and claim shards under the same consumer name after `start()` listed them.
        Nobody else would ever read or acknowledge those: adopt them.
        """
        strays = [c for c in self._pending_not_held() if c.name not in self._read_here]
        if strays:
            log.info(
                "%s adopted %d shard(s) claimed under its name by an earlier incarnation",
                self.queue.consumer,
                len(strays),
            )
        return strays

    def _touch_held(self) -> None:
        now = time.monotonic()
        if now >= self._next_touch:
            self._next_touch = now + TOUCH_EVERY_S
            with contextlib.suppress(RedisDown):  # touched again at the next period
                self.queue.touch([s.claim.entry_id for s in self.open.values() if s.claim.fresh])

    # --- restoring ----------------------------------------------------------------------

    def _still_readable(self, claim: ShardClaim) -> bool:
        if claim.fresh and not self.queue.is_held(claim.entry_id):
            log.info("shard %s was acknowledged after the checkpoint; not reading it again", claim.name)
            return False
        if not claim.fresh and self.queue.is_deleted(claim.name):
            log.info("shard %s was deleted by gc; dropping its replay", claim.name)
            return False
        return True

    def _restore_shard(self, slot: int, shard: OpenShard, wanted: dict[int, int], out: dict[int, Buffered]) -> None:
        """Re-read `shard` up to where it was read, putting the buffered ordinals back."""
        if self.cache is None:
            reader: Iterator[Sample] = iter_samples(self.cfg.shard_dir / shard.claim.name, on_problem=self._report)
        else:
            path = self._local(shard.claim.name)
            reader = iter_samples(path, on_problem=self._report) if path is not None else iter(())
        got = 0
        for ordinal, sample in zip(range(shard.read), reader):
            got += 1
            if ordinal in wanted:
                out[wanted[ordinal]] = Buffered(slot=slot, ordinal=ordinal, sample=sample)
        if got < shard.read:
            self._report(shard.claim.name, f"shard changed since the checkpoint ({got} of {shard.read} samples)")
            shard.done_reading = True
        # Buffered samples that could not be read back count as emitted, so the shard still finishes.
        shard.emitted = shard.read - sum(1 for o in wanted if o < got)
        shard.reader = None if shard.done_reading else reader
        self.open[slot] = shard
        self._maybe_finish(slot)


def _open_from_dict(d: dict[str, Any]) -> OpenShard:
    return OpenShard(
        claim=ShardClaim.from_dict(d["claim"]),
        read=int(d["read"]),
        emitted=int(d["emitted"]),
        done_reading=bool(d["done_reading"]),
        missing=bool(d.get("missing", False)),
    )
