"""A snapshot of the part queue: which entries exist, which are in flight, done or dead.

    q = read_part_queue(r, keys, problems=[])
    q.states("relaion:3")     # e.g. ['in_flight'] or ['done'] -- more than one is a discrepancy

Read by `streamcap status`, the audit, reconcile, `streamcap parts retry` and the downloader's
claims (for stream ids). States (bus.PART_STATES): `pending` (an entry not yet
delivered to any downloader), `in_flight` (delivered, not acknowledged), `done` (in
`parts:done`), `dead` (in `parts:dead`).

Retry parts (`streamcap parts retry`) are listed under their own ids ('<part id>~<retry id>'),
so a done part with a retry queued stays `done`: `retries` holds those ids' states apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import redis

from streamcap import bus
from streamcap.formats.records import PartRecord, is_retry_id

_BATCH = 1000


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class PartQueueSnapshot:
    entries: dict[str, list[str]]  # part id -> its entry ids in `parts`
    pending: dict[str, str]  # entry id -> consumer, for delivered, unacknowledged entries
    last_delivered: tuple[int, int]
    done: set[str]
    dead: set[str]
    retries_done: set[str] = dataclasses.field(default_factory=set)  # retry ids committed
    retries_dead: set[str] = dataclasses.field(default_factory=set)

    @property
    def retries_open(self) -> list[str]:
        """Retry ids on the stream (pending or in flight) not committed yet."""
        return sorted(i for i in self.entries if is_retry_id(i) and i not in self.retries_done)

    def in_flight(self, part_id: str) -> list[str]:
        return [i for i in self.entries.get(part_id, []) if i in self.pending]

    def queued(self, part_id: str) -> list[str]:
        return [
            i for i in self.entries.get(part_id, []) if i not in self.pending and stream_id(i) > self.last_delivered
        ]

    def states(self, part_id: str) -> list[str]:
        flags = (
            ("done", part_id in self.done),
            ("dead", part_id in self.dead),
            ("in_flight", bool(self.in_flight(part_id))),
            ("pending", bool(self.queued(part_id))),
        )
        return [state for state, present in flags if present]


def _decode_parts(entries: list, problems: list[str], stream_name: str) -> list[tuple[str, PartRecord]]:
    decoded = []
    for entry_id, fields in entries:
        try:
            decoded.append((entry_id, PartRecord.from_message(bus.decode(fields))))
        except (bus.MessageError, KeyError, TypeError, ValueError) as e:
            problems.append(f"{stream_name} entry {entry_id} is unreadable: {e}")
    return decoded


def _xrange_all(r: redis.Redis, key: str) -> list:
    return [entry for page in bus.xrange_pages(r, key, _BATCH) for entry in page]


def read_part_queue(r: redis.Redis, keys: bus.Keys, problems: list[str]) -> PartQueueSnapshot:
    """The queue as it is now; unreadable entries are described in `problems`."""
    entries: dict[str, list[str]] = {}
    for entry_id, part in _decode_parts(_xrange_all(r, keys.parts), problems, "parts"):
        entries.setdefault(part.done_id, []).append(entry_id)
    group = bus.group_info(r, keys.parts, bus.GROUP_DOWNLOADERS)
    pending: dict[str, str] = {}
    if group:
        last = stream_id(group["last-delivered-id"])
        start = "-"
        while True:
            batch = r.xpending_range(keys.parts, bus.GROUP_DOWNLOADERS, start, "+", _BATCH)
            pending.update({p["message_id"]: p["consumer"] for p in batch})
            if len(batch) < _BATCH:
                break
            start = "(" + batch[-1]["message_id"]
    else:
        last = (0, 0)
    dead = {part.done_id for _, part in _decode_parts(_xrange_all(r, keys.parts_dead), problems, "parts:dead")}
    done = set(r.smembers(keys.parts_done))
    return PartQueueSnapshot(
        entries,
        pending,
        last,
        {i for i in done if not is_retry_id(i)},
        {i for i in dead if not is_retry_id(i)},
        retries_done={i for i in done if is_retry_id(i)},
        retries_dead={i for i in dead if is_retry_id(i)},
    )
