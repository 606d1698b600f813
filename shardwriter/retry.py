"""Bringing failed work back: dead parts, failed rows and rows of lost shards go on `parts` again.

    streamcap parts retry                                   # dead parts + transient failures
    streamcap parts retry --dead                            # dead parts only
    streamcap parts retry --reason blocked_address --reason connect_error
    streamcap shards reconcile --requeue-missing            # rows of quarantined/vanished shards

    report = retry(r, keys, shard_dir, dead=True, reasons=("timeout",))
    report.summary()   # 'retry: 2 dead parts requeued, 17 failed rows requeued'

A dead part moves from `parts:dead` back to `parts` in one script that deletes the dead entry
first, so two runs never requeue it twice. Failed rows of a done part become a *retry part*
(records.PartRecord with `retry`, `row_list`): a `parts` entry naming the part and exactly the
rows to fetch again. At most one retry per part is open at a time (`parts:retries`): a second
run while the first is queued adds nothing. Its commit (commit.commit_part) replaces those
rows' outcomes in the part's stats file and counters, so a row counts once, with its latest
outcome.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from streamcap import bus
from streamcap.bus.partqueue import read_part_queue
from streamcap.common.store import ShardStore, open_store
from streamcap.formats.records import FAILURE_REASONS, FailedRow, PartRecord, PartStats, retry_id
from streamcap.formats.shards import sample_key
from streamcap.shardwriter import registry
from streamcap.shardwriter.verify import check_stored

log = logging.getLogger(__name__)

# What `parts retry` with no option re-fetches: failures a later try may not repeat.
TRANSIENT_REASONS = ("timeout", "connect_error", "throttled")
# A dns_error is transient unless the name does not exist (no answer, SERVFAIL: the DNS's trouble).
PERMANENT_DNS = ("NXDOMAIN", "no address records")
_HTTP_STATUS = re.compile(r"HTTP (\d{3})")

# KEYS[1]=parts:dead KEYS[2]=parts KEYS[3]=stats; ARGV[1]=dead entry id ARGV[2]=part message json
# ARGV[3]=the part's old (acknowledged) entry on `parts`, removed so the part is enqueued once.
# Deleting the dead entry is the test: only the run that removed it adds the part back.
_REQUEUE_DEAD = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[3] ~= '' then redis.call('XDEL', KEYS[2], ARGV[3]) end
redis.call('XADD', KEYS[2], '*', 'json', ARGV[2])
redis.call('HINCRBY', KEYS[3], '%(dead)s', -1)
redis.call('HINCRBY', KEYS[3], '%(requeued)s', 1)
return 1
""" % {"dead": bus.STAT_PARTS_DEAD, "requeued": bus.STAT_PARTS_REQUEUED}

# KEYS[1]=parts:retries KEYS[2]=parts KEYS[3]=parts:done; ARGV[1]=part id ARGV[2]=retry id
# ARGV[3]=retry part message json. Only a done part, and only one open retry per part.
_ENQUEUE_RETRY = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'json', ARGV[3])
return 1
"""


@dataclass
class RetryReport:
    dead_requeued: list[str] = field(default_factory=list)
    rows_requeued: int = 0
    retry_parts: list[str] = field(default_factory=list)  # retry ids enqueued
    skipped: list[str] = field(default_factory=list)  # parts with a retry still open

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        return f"retry: {len(self.dead_requeued)} dead parts requeued, {self.rows_requeued} failed rows requeued"


# Connection errors no later try repeats differently: TLS refused (https:// to a plain HTTP
# server) or a certificate that does not verify. The fetcher words them "TLS: ..."; rows
# recorded by earlier builds carry aiohttp's exception name.
_PERMANENT_CONNECT = ("TLS: ", "ClientConnectorSSLError", "ClientConnectorCertificateError", "ClientSSLError")


def is_transient(failure: FailedRow) -> bool:
    """Timeouts, connection errors (but TLS ones), throttling, HTTP 429 or 5xx, and DNS lookups
    that got no verdict (no answer, SERVFAIL; not NXDOMAIN)."""
    if failure.reason == "connect_error" and failure.detail.startswith(_PERMANENT_CONNECT):
        return False
    if failure.reason in TRANSIENT_REASONS:
        return True
    if failure.reason == "dns_error":
        return not failure.detail.startswith(PERMANENT_DNS)
    if failure.reason != "http_status":
        return False
    m = _HTTP_STATUS.search(failure.detail)
    return m is not None and (m.group(1) == "429" or m.group(1).startswith("5"))


def check_reasons(reasons: Iterable[str]) -> list[str]:
    """The reasons, each a known failure reason (ValueError naming the unknown one)."""
    chosen = list(dict.fromkeys(reasons))
    for reason in chosen:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"--reason {reason!r} is no failure reason; expected one of {', '.join(FAILURE_REASONS)}")
    return chosen


def requeue_dead(r: redis.Redis, keys: bus.Keys) -> list[str]:
    """Move every dead part back to `parts`; returns the ids moved (none twice, even concurrently)."""
    script = r.register_script(_REQUEUE_DEAD)
    moved = []
    for entries in bus.xrange_pages(r, keys.parts_dead, 1000):
        for entry_id, fields in entries:
            try:
                dead = bus.decode(fields)
                part = PartRecord.from_message(dead)
            except (bus.MessageError, KeyError, TypeError, ValueError) as e:
                log.warning("parts:dead entry %s is no part, left there: %s", entry_id, e)
                continue
            msg = bus.encode(part.to_message())["json"]
            old_entry = str(dead.get("entry", ""))
            if script(keys=[keys.parts_dead, keys.parts, keys.stats], args=[entry_id, msg, old_entry]):
                moved.append(part.done_id)
    return moved


def next_seq(stats: PartStats) -> int:
    """A shard sequence number no shard of the part ever had (dropped ones included)."""
    seqs = [s.seq for s in stats.shards]
    for record in stats.retries.values():
        seqs += [s.seq for s in record.dropped] + [record.seq0 - 1]
    return max(seqs, default=-1) + 1


def retry_part(stats: PartStats, rows: Iterable[int], drop: Iterable[str] = ()) -> PartRecord:
    """A retry part of the part `stats` describes, fetching `rows` again (and leaving out the
    `drop` shards), with a new retry id and shard numbers no shard of the part ever had."""
    return PartRecord(
        source=stats.source,
        part=stats.part,
        start=stats.start,
        end=stats.end,
        retry=f"r{time.time_ns():x}",
        row_list=tuple(sorted(set(rows))),
        seq0=next_seq(stats),
        drop=tuple(sorted(set(drop))),
    )


def enqueue_retry(
    r: redis.Redis, keys: bus.Keys, stats: PartStats, rows: Iterable[int], drop: Iterable[str] = ()
) -> str | None:
    """Queue a retry part of done part `stats` for `rows`; its id, or None when one is open already."""
    part = retry_part(stats, rows, drop)
    rid = part.retry
    script = r.register_script(_ENQUEUE_RETRY)
    msg = bus.encode(part.to_message())["json"]
    applied = script(keys=[keys.parts_retries, keys.parts, keys.parts_done], args=[stats.part_id, rid, msg])
    return part.done_id if applied else None


def retry(
    r: redis.Redis,
    keys: bus.Keys,
    shard_dir: ShardStore | Path | str,
    *,
    dead: bool,
    reasons: Iterable[str] = (),
    transient: bool = False,
) -> RetryReport:
    """Requeue dead parts (`dead`) and the failed rows of done parts with one of `reasons`
    (or, with `transient`, a transient failure)."""
    chosen = set(check_reasons(reasons))
    report = RetryReport()
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    if dead:
        report.dead_requeued = requeue_dead(r, keys)
    if not chosen and not transient:
        return report
    queue = read_part_queue(r, keys, [])
    for pid, stats in sorted(registry.load_part_stats(open_store(shard_dir)).items()):
        if pid not in queue.done:
            continue  # its stats file is an uncommitted attempt's; the part runs again anyway
        rows = [f.row for f in stats.failures if f.reason in chosen or (transient and is_transient(f))]
        if rows:
            _enqueue(r, keys, stats, rows, (), report)
    return report


def requeue_missing(r: redis.Redis, keys: bus.Keys, shard_dir: ShardStore | Path | str) -> RetryReport:
    """Queue a retry part for the rows of every done part's shards in `shards:lost`."""
    shard_dir = open_store(shard_dir)
    report = RetryReport()
    lost = set(r.smembers(keys.shards_lost))
    if not lost:
        return report
    gc_deleted = set(r.smembers(keys.shards_deleted)) - lost
    queue = read_part_queue(r, keys, [])
    for pid, stats in sorted(registry.load_part_stats(shard_dir).items()):
        gone = [s for s in stats.shards if s.name in lost]
        if pid in queue.done and gone:
            _enqueue(r, keys, stats, missing_rows(shard_dir, stats, gone, gc_deleted), [s.name for s in gone], report)
    return report


def missing_rows(shard_dir: ShardStore, stats: PartStats, gone: list, gc_deleted: set[str]) -> list[int]:
    """The rows whose samples were in the `gone` shards: in their row ranges, and neither a
    failure, a sample of a shard still on disk, nor in the range of a shard gc deleted."""
    taken = {f.row for f in stats.failures}
    gone_names = {s.name for s in gone}
    for shard in stats.shards:
        if shard.name in gone_names:
            continue
        if shard.name in gc_deleted:
            taken.update(range(shard.first_row, shard.last_row + 1))
            continue
        keys = set(check_stored(shard_dir, shard.name, decode_images=False).keys)
        taken.update(row for row in range(shard.first_row, shard.last_row + 1) if sample_key(stats.source, row) in keys)
    rows: set[int] = set()
    for shard in gone:
        rows.update(row for row in range(shard.first_row, shard.last_row + 1) if row not in taken)
    return sorted(rows)


def committed_stats(stats: PartStats, retries_done: set[str]) -> PartStats:
    """The part's committed outcome: its stats file less a merged retry not committed yet (the
    writer merges before the commit; a crash between the two leaves the retry open)."""
    while stats.retries:
        last = next(reversed(stats.retries))
        if retry_id(stats.part_id, last) in retries_done:
            break
        stats = stats.without_retry(last)
    return stats


def _enqueue(
    r: redis.Redis, keys: bus.Keys, stats: PartStats, rows: list[int], drop: Iterable[str], report: RetryReport
) -> None:
    done_id = enqueue_retry(r, keys, stats, rows, drop)
    if done_id is None:
        report.skipped.append(stats.part_id)
        return
    report.retry_parts.append(done_id)
    report.rows_requeued += len(rows)
