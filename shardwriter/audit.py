"""The accounting check: Redis, the stats files and the shard contents must tell one story.

    report = audit(r, keys, shard_dir)
    report.lost, report.duplicates, report.parts, report.discrepancies, report.ok

Checked (the accounting invariant of docs/architecture.md, row by row):
- every enqueued part (from the source definitions) is in exactly one state: pending, in
  flight, done (`parts:done`) or dead (`parts:dead`, acknowledged), and enqueued once;
- every row of a done part is exactly one sample in its registered shards or one recorded
  failure with a reason (the part's stats file); rows of dead parts are counted as dead;
- every registered shard is registered once, exists (or was deleted by gc), verifies, and
  matches its part's stats file; no sample key appears twice anywhere;
- rows whose shard is gone without gc (quarantined by `shards verify --quarantine`, deleted by
  hand and marked by `shards reconcile`: `shards:lost`) are `missing`, never fine, until
  `streamcap shards reconcile --requeue-missing` and a download fetch them again;
- the `stats` counters equal the sums of the done parts' stats files, and `parts_dead` the
  dead parts;
- no temporary file is left, no finalized shard of a done part is unregistered.

It also reports how often parts were delivered (`deliveries`: times delivered -> parts, for
parts a downloader committed or dead-lettered), the redelivery histogram of the chaos tests.

`lost` counts rows that are in no state; `missing` rows whose samples were in a lost shard;
`duplicates` counts samples (or rows) present twice. Retries (`streamcap parts retry`) are
merged into their part's stats file, each row counted once with its latest outcome; a retry
merged but not committed yet is left out (retry.committed_stats), and `retried_rows` /
`retried_samples` say how many rows were fetched again and how many became samples.
Rows of pending and in-flight parts are `unfinished`, not lost: audit a running pipeline
freely, and pass `expect_done=True` to also require that every part is done or dead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

from streamcap import bus
from streamcap.bus.partqueue import PartQueueSnapshot, read_part_queue
from streamcap.common import namespaces
from streamcap.common.store import ShardStore, open_store
from streamcap.formats.records import PartRecord, PartStats, ShardRecord
from streamcap.formats.shards import SHARD_SUFFIX, part_prefix, sample_key
from streamcap.shardwriter import registry, retry, tempfiles
from streamcap.shardwriter.commit import part_counters
from streamcap.shardwriter.verify import check_shard

MAX_LISTED = 50  # per kind of discrepancy, so a broken run still prints a readable report
# A temporary file of another host untouched this long is a leftover (the default --temp-stale-seconds).
TEMP_STALE_S = 3600.0


@dataclass
class AuditReport:
    rows_enqueued: int = 0
    samples: int = 0
    failures: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    dead_rows: int = 0
    unfinished_rows: int = 0
    lost: int = 0
    missing: int = 0
    retried_rows: int = 0
    retried_samples: int = 0
    retries_open: int = 0
    duplicates: int = 0
    parts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(bus.PART_STATES, 0))
    shards: int = 0
    shards_deleted: int = 0
    deliveries: dict[int, int] = field(default_factory=dict)
    discrepancies: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.parts["pending"] == 0 and self.parts["in_flight"] == 0

    @property
    def redelivered_parts(self) -> int:
        """Parts that needed more than one delivery (a worker died, failed or was too slow)."""
        return sum(n for times, n in self.deliveries.items() if times > 1)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.missing == 0 and self.duplicates == 0 and not self.discrepancies

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "complete": self.complete,
            "rows_enqueued": self.rows_enqueued,
            "samples": self.samples,
            "failures": self.failures,
            "failures_by_reason": self.failures_by_reason,
            "dead_rows": self.dead_rows,
            "unfinished_rows": self.unfinished_rows,
            "lost": self.lost,
            "missing": self.missing,
            "retried_rows": self.retried_rows,
            "retried_samples": self.retried_samples,
            "retries_open": self.retries_open,
            "duplicates": self.duplicates,
            "parts": self.parts,
            "shards": self.shards,
            "shards_deleted": self.shards_deleted,
            "deliveries": {str(k): v for k, v in sorted(self.deliveries.items())},
            "redelivered_parts": self.redelivered_parts,
            "discrepancies": self.discrepancies,
            "notes": self.notes,
        }

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.failures_by_reason.items(), key=lambda kv: -kv[1]))
        parts = ", ".join(f"{k} {v}" for k, v in self.parts.items())
        return (
            f"audit: {self.rows_enqueued} rows -> {self.samples} samples + {self.failures} failures"
            f"{f' ({reasons})' if reasons else ''}, dead rows {self.dead_rows}, unfinished rows "
            f"{self.unfinished_rows}; parts: {parts}; redelivered parts {self.redelivered_parts}; "
            f"retried rows {self.retried_rows} ({self.retried_samples} now samples, {self.retries_open} retries open); "
            f"lost={self.lost}, missing={self.missing}, duplicates={self.duplicates}, "
            f"discrepancies={len(self.discrepancies)}"
        )


class _Findings:
    """Discrepancies grouped by kind, each kind listed up to MAX_LISTED times."""

    def __init__(self, report: AuditReport) -> None:
        self.report, self.counts = report, Counter()

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_LISTED:
            self.report.discrepancies.append(message)
        elif self.counts[kind] == MAX_LISTED + 1:
            self.report.discrepancies.append(f"... more of: {kind} (not listed)")


def _part_states(
    parts: dict[str, PartRecord], q: PartQueueSnapshot, report: AuditReport, found: _Findings
) -> dict[str, str]:
    """The one state of every expected part; lost parts and double states are discrepancies."""
    states: dict[str, str] = {}
    for pid, part in parts.items():
        ids = q.entries.get(pid, [])
        if len(ids) > 1:
            found.add("enqueued twice", f"part {pid} is enqueued {len(ids)} times ({', '.join(ids)})")
        have = q.states(pid)
        if not have:
            found.add(
                "lost part",
                f"part {pid} (rows {part.start}-{part.end - 1}) is in no state: not done, dead, pending or in flight",
            )
            report.lost += part.rows
            continue
        if len(have) > 1:
            found.add("two states", f"part {pid} is {' and '.join(have)} at once")
        states[pid] = have[0]
        report.parts[have[0]] += 1
        if have[0] == "dead":
            report.dead_rows += part.rows
        elif have[0] != "done":
            report.unfinished_rows += part.rows
    for pid in sorted((q.done | q.dead) - set(parts)):
        found.add("unknown part", f"part {pid} is done or dead but belongs to no enqueued source")
    return states


def audit(
    r: redis.Redis, keys: bus.Keys, shard_dir: Path, *, expect_done: bool = False, decode_images: bool = True
) -> AuditReport:
    """Reconcile Redis, the stats files and the shard contents (see the module docstring)."""
    store = open_store(shard_dir)  # a directory or a bucket (streamcap.common.store)
    namespaces.check(store, keys.namespace)  # another namespace's sources would all count as lost
    report = AuditReport()
    found = _Findings(report)
    parts = _expected_parts(r, keys, store, report, found)
    problems: list[str] = []
    queue = read_part_queue(r, keys, problems)
    states = _part_states(parts, queue, report, found)
    if expect_done and not report.complete:
        found.add(
            "not complete",
            f"{report.parts['pending']} parts pending and {report.parts['in_flight']} "
            "in flight, but every part should be done or dead",
        )
    all_stats = registry.load_part_stats(store, problems)
    for problem in problems:
        found.add("unreadable", problem)
    done = {pid: _committed(all_stats.get(pid), queue) for pid, state in states.items() if state == "done"}
    report.retries_open = len(queue.retries_open)
    registered = registry.registered_shards(r, keys)
    deleted = set(r.smembers(keys.shards_deleted))
    lost = set(r.smembers(keys.shards_lost))
    keys_seen = _check_registry(registered, deleted, lost, done, store, report, found, decode_images)
    registered_names = {s.name for _, s in registered}
    for pid, stats in done.items():
        _check_done_part(parts[pid], stats, keys_seen, registered_names, deleted, lost, report, found)
    dead = len(queue.dead) + len(queue.retries_dead)
    _check_counters(r, keys, [s for s in done.values() if s], len(queue.done), dead, found)
    retrying = {i.partition("~")[0] for i in queue.retries_open}
    _check_disk(store, registered, states, retrying, found, report)
    report.deliveries = _deliveries(r, keys, states)
    return report


def _committed(stats: PartStats | None, queue: PartQueueSnapshot) -> PartStats | None:
    return None if stats is None else retry.committed_stats(stats, queue.retries_done)


def _expected_parts(
    r: redis.Redis, keys: bus.Keys, shard_dir: ShardStore, report: AuditReport, found: _Findings
) -> dict[str, PartRecord]:
    in_redis = {s.id for s in registry.redis_sources(r, keys)}
    in_dir = {s.id for s in registry.load_sources(shard_dir)}
    for sid in sorted(in_dir - in_redis):
        found.add(
            "source", f"source {sid} is recorded in the shard dir but not in Redis (run `streamcap shards reconcile`)"
        )
    for sid in sorted(in_redis - in_dir):
        found.add("source", f"source {sid} is in Redis but has no definition in {shard_dir}/{registry.SOURCES_DIR}")
    parts = {}
    for source in registry.all_sources(r, keys, shard_dir):
        for index in range(source.parts):
            part = source.part(index)
            parts[part.part_id] = part
            report.rows_enqueued += part.rows
    return parts


def _check_registry(
    registered: list[tuple[str, ShardRecord]],
    deleted: set[str],
    lost: set[str],
    done: dict[str, PartStats | None],
    shard_dir: ShardStore,
    report: AuditReport,
    found: _Findings,
    decode_images: bool,
) -> dict[str, str]:
    """Verify every registered shard once; returns sample key -> shard name of every sample read."""
    keys_seen: dict[str, str] = {}
    names = Counter(s.name for _, s in registered)
    report.shards = len(names)
    for name, n in names.items():
        if n > 1:
            found.add("registered twice", f"shard {name} is registered {n} times")
    checked: set[str] = set()
    for _entry_id, shard in registered:
        if shard.name in checked:
            report.duplicates += shard.samples
            continue
        checked.add(shard.name)
        if shard.part_id not in done:
            found.add("uncommitted", f"shard {shard.name} is registered but part {shard.part_id} is not done")
        elif done[shard.part_id] is not None and shard not in done[shard.part_id].shards and shard.name not in lost:
            # (a lost shard leaves its part's stats once a retry fetched its rows again)
            found.add(
                "stale registration",
                f"registered shard {shard.name} differs from (or is missing in) the stats file of part {shard.part_id}",
            )
        if shard.name in deleted:
            report.shards_deleted += 1
            continue
        with shard_dir.local_copy(shard.name) as path:  # a bucket's shard: a temporary copy
            if path is None:
                found.add(
                    "missing shard",
                    f"registered shard {shard.name} does not exist (and was not deleted by gc): its rows are lost; "
                    "`streamcap shards reconcile --requeue-missing` fetches them again",
                )
                continue
            check = check_shard(path, decode_images=decode_images)
        for problem in check.problems:
            found.add("bad shard", f"shard {problem}")
        if check.samples != shard.samples:
            found.add(
                "sample count", f"shard {shard.name} holds {check.samples} samples, registered with {shard.samples}"
            )
        for key in check.keys:
            if key in keys_seen:
                report.duplicates += 1
                found.add("duplicate key", f"sample {key} is in {keys_seen[key]} and {shard.name}")
            else:
                keys_seen[key] = shard.name
    return keys_seen


def _check_done_part(
    part: PartRecord,
    stats: PartStats | None,
    keys_seen: dict[str, str],
    registered: set[str],
    deleted: set[str],
    lost: set[str],
    report: AuditReport,
    found: _Findings,
) -> None:
    """Every row of a done part: exactly one sample or one failure (or missing: in a lost shard)."""
    pid = part.part_id
    if stats is None:
        found.add("no stats", f"part {pid} is done but has no stats file in the shard dir")
        report.lost += part.rows
        return
    if (stats.start, stats.end) != (part.start, part.end):
        found.add(
            "stats range",
            f"stats file of {pid} covers rows {stats.start}-{stats.end - 1}, the part is {part.start}-{part.end - 1}",
        )
    failed = Counter(f.row for f in stats.failures)
    report.failures += len(stats.failures)
    for f in stats.failures:
        report.failures_by_reason[f.reason] = report.failures_by_reason.get(f.reason, 0) + 1
    listed = {s.name for s in stats.shards}
    for name in sorted(listed - registered - deleted):
        found.add("unregistered", f"shard {name} of done part {pid} is in its stats file but not registered")
    sample_rows = {row for row in range(part.start, part.end) if keys_seen.get(sample_key(part.source, row)) in listed}
    report.retried_rows += stats.retried_rows
    report.retried_samples += stats.retried_samples
    deleted_samples = sum(s.samples for s in stats.shards if s.name in deleted and s.name not in lost)
    report.samples += len(sample_rows) + deleted_samples
    missing = 0
    for shard in stats.shards:
        if shard.name in lost:
            missing += shard.samples
            found.add(
                "missing rows",
                f"part {pid}: shard {shard.name} (rows {shard.first_row}-{shard.last_row}) was quarantined or "
                f"went missing: {shard.samples} samples missing; `streamcap shards reconcile --requeue-missing` "
                "fetches them again",
            )
    report.missing += missing
    twice = [row for row, n in failed.items() if n > 1] + sorted(sample_rows & set(failed))
    if twice:
        report.duplicates += len(twice)
        found.add("row twice", f"part {pid}: rows {twice[:10]} are recorded twice (sample and/or failure)")
    covered = len(sample_rows | set(failed)) + deleted_samples + missing
    if covered < part.rows:
        report.lost += part.rows - covered
        found.add(
            "lost rows", f"part {pid}: {part.rows - covered} of {part.rows} rows are neither a sample nor a failure"
        )
    if stats.samples + len(stats.failures) != part.rows:
        found.add(
            "stats sum",
            f"stats file of {pid}: {stats.samples} samples + {len(stats.failures)} failures != {part.rows} rows",
        )


_COMMIT_COUNTERS = {
    bus.STAT_ROWS,
    bus.STAT_SAMPLES,
    bus.STAT_FAILURES,
    bus.STAT_BYTES_DOWNLOADED,
    bus.STAT_SHARDS,
    bus.STAT_SHARD_BYTES,
    bus.STAT_PARTS_COMMITTED,
    bus.STAT_PARTS_DEAD,
    bus.STAT_RETRIED_ROWS,
    bus.STAT_RETRIED_SAMPLES,
}


def _check_counters(
    r: redis.Redis, keys: bus.Keys, done_stats: list[PartStats], done_parts: int, dead_parts: int, found: _Findings
) -> None:
    """The counters the commits add must equal the sums of the done parts' stats files."""
    expected: Counter = Counter()
    for stats in done_stats:
        expected.update(dict(part_counters(stats)))
    expected[bus.STAT_PARTS_COMMITTED] = done_parts
    expected[bus.STAT_PARTS_DEAD] = dead_parts
    actual = {
        k: int(v)
        for k, v in r.hgetall(keys.stats).items()
        if k in _COMMIT_COUNTERS or k.startswith(bus.STAT_FAIL_PREFIX)
    }
    for name in sorted(set(expected) | set(actual)):
        if expected.get(name, 0) != actual.get(name, 0):
            source = "parts:dead holds" if name == bus.STAT_PARTS_DEAD else "the done parts' stats files sum to"
            found.add("counter", f"stats counter {name} is {actual.get(name, 0)}, {source} {expected.get(name, 0)}")


def _check_disk(
    shard_dir: ShardStore,
    registered: list[tuple[str, ShardRecord]],
    states: dict[str, str],
    retrying: set[str],
    found: _Findings,
    report: AuditReport,
) -> None:
    """Unregistered shard files of done parts and temporary files are leftovers."""
    names = {s.name for _, s in registered}
    part_by_prefix = {}
    for pid in states:
        source, _, index = pid.rpartition(":")
        part_by_prefix[part_prefix(source, int(index))] = pid
    for info in shard_dir.list(suffix=SHARD_SUFFIX):
        if info.name in names:
            continue
        pid = part_by_prefix.get(info.name.rsplit("-", 1)[0])
        if pid is not None and pid in retrying:
            report.notes.append(f"unregistered shard {info.name} of part {pid}: its retry is not committed yet")
        elif pid is not None and states[pid] != "done":
            report.notes.append(
                f"unregistered shard {info.name} of unfinished part {pid} (its redelivery overwrites it)"
            )
        else:
            found.add("orphan", f"shard file {info.name} is not registered{f' (part {pid} is done)' if pid else ''}")
    if shard_dir.remote:  # writers' temporary files stay on their own disks
        return
    # A live writer's file is work in progress, not a problem: an audit of a healthy running
    # pipeline exits 0. Off-host writers cannot be asked, so their files count as live while
    # written to within the sweeper's own bound (tempfiles.owner_gone).
    for path in tempfiles.temp_files(shard_dir.root):
        parsed = tempfiles.parse_temp_name(path.name)
        alive = parsed[0].alive() if parsed else None
        if not tempfiles.owner_gone(path, TEMP_STALE_S):
            who = "its writer is running" if alive else "written by another host, recently"
            report.notes.append(f"temporary file {path.name} is being written ({who})")
            continue
        state = (
            "its writer is gone" if alive is False else f"written by another host, untouched for {TEMP_STALE_S:.0f} s"
        )
        found.add("temp file", f"temporary file {path.name} is left ({state})")


def _deliveries(r: redis.Redis, keys: bus.Keys, states: dict[str, str]) -> dict[int, int]:
    """times delivered -> parts, over done parts a worker committed and dead parts."""
    times: dict[str, int] = {
        pid: int(n) for pid, n in r.hgetall(keys.parts_deliveries).items() if states.get(pid) == "done"
    }
    for _entry_id, fields in r.xrange(keys.parts_dead):
        try:
            dead = bus.decode(fields)
            times[PartRecord.from_message(dead).done_id] = int(dead.get("deliveries", 0))
        except (bus.MessageError, KeyError, TypeError, ValueError):
            continue  # unreadable entries are discrepancies already (read_part_queue)
    return dict(sorted(Counter(times.values()).items()))
