"""Streams and consumer groups: creating groups, reclaiming stale entries, delivery counts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
from redis.exceptions import ResponseError


def ensure_group(r: redis.Redis, stream: str, group: str, start_id: str = "0") -> bool:
    """Create `group` on `stream` (and the stream) unless it exists. True when created.

    `start_id="0"` makes a new group see every entry already in the stream, which is what a
    group recreated after Redis lost its data needs.
    """
    try:
        r.xgroup_create(stream, group, id=start_id, mkstream=True)
        return True
    except ResponseError as e:
        if "BUSYGROUP" in str(e):
            return False
        raise


def claim_stale(
    r: redis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 1
) -> list[tuple[str, dict[str, str]]]:
    """Take over up to `count` entries idle longer than `min_idle_ms` in `group`'s pending list.

    Works with Redis 6.2 and 7.x. For pending entries whose data was trimmed away, 7.x drops
    them from the pending list itself and lists their ids in a third element (ignored here);
    6.2 claims them and returns (None, None) placeholders, so they are found and acknowledged
    here instead of clogging the pending list forever.
    """
    start, claimed, saw_placeholder = "0-0", [], False
    while len(claimed) < count:
        reply = r.xautoclaim(stream, group, consumer, min_idle_ms, start_id=start, count=count - len(claimed))
        next_start, entries = reply[0], reply[1]
        for entry in entries:
            if entry is None or entry[1] is None:  # 6.2 placeholder: (None, None), id unknown
                saw_placeholder = True
            else:
                claimed.append((entry[0], entry[1]))
        if next_start in ("0-0", "0"):
            break
        start = next_start
    if saw_placeholder:
        _ack_trimmed(r, stream, group, consumer, keep={entry_id for entry_id, _ in claimed})
    return claimed


def _ack_trimmed(r: redis.Redis, stream: str, group: str, consumer: str, keep: set[str]) -> None:
    """Acknowledge `consumer`'s pending ids whose entries no longer exist (Redis 6.2 only)."""
    for pending in r.xpending_range(stream, group, "-", "+", 1000, consumername=consumer):
        entry_id = pending["message_id"]
        if entry_id not in keep and not r.xrange(stream, entry_id, entry_id, count=1):
            r.xack(stream, group, entry_id)


def delivery_count(r: redis.Redis, stream: str, group: str, entry_id: str) -> int:
    """How many times `entry_id` has been delivered in `group` (0 if it is not pending)."""
    info = r.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
    return int(info[0]["times_delivered"]) if info else 0


def group_info(r: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    """XINFO GROUPS entry of `group` on `stream` (pending, lag, ...), or None."""
    try:
        groups = r.xinfo_groups(stream)
    except ResponseError:  # no such key
        return None
    for g in groups:
        if g.get("name") == group:
            return g
    return None


def xrange_pages(r: redis.Redis, stream: str, page: int = 1000) -> Iterator[list[tuple[str, dict[str, str]]]]:
    """The whole stream, oldest first, `page` entries per XRANGE round trip."""
    start = "-"
    while True:
        entries = r.xrange(stream, min=start, max="+", count=page)
        yield entries
        if len(entries) < page:
            return
        start = "(" + entries[-1][0]
