"""Claiming parts from the `parts` stream reliably (consumer group `downloaders`).

    claimer = PartClaimer(r, keys, consumer="host-1234", lease_ms=60_000)
    claimed = claimer.claim(block_ms=1000)     # a stale entry of a dead worker first, else a new one
    claimer.keepalive(claimed.entry_id)        # every lease/4: our entry's idle time stays ~0
    claimer.release(claimed.entry_id)          # give it back at once (graceful stop, an error)
    claimer.strike(claimed.entry_id)           # an attempt failed through the part's own fault
    claimer.dead_letter(claimed, error)        # to parts:dead after --max-deliveries strikes

A part is pending for exactly one consumer at a time. A worker that dies stops renewing its
claim; once the entry has been idle for the lease, the next `claim` anywhere takes it over
(XAUTOCLAIM, which also counts the delivery). Every ownership-sensitive step runs as one Lua
script that first checks the entry is still pending for this consumer, so a worker that was
paused past its lease never steals its part back from the worker that reclaimed it.

Redis's delivery counter counts every delivery, lost ones too (a worker killed, or too busy to
renew its lease). Those are no fault of the part, so the part's own failures are counted
apart, as *strikes* (`parts:strikes`, by entry id); the service dead-letters a part on
strikes, and on lost deliveries only far beyond anything churn produces (`service`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ResponseError

from streamcap import bus
from streamcap.bus.partqueue import stream_id
from streamcap.formats.records import PartRecord

# KEYS[1]=parts; ARGV[1]=group ARGV[2]=consumer ARGV[3]=entry id. Returns 1 when renewed.
# Each script checks ownership first; XPENDING runs under pcall, so a group that vanished
# (Redis lost its data) reads as "no longer ours" instead of failing the caller.
_KEEPALIVE = """
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p.err or #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# Make the entry claimable by anyone now: idle time past the lease, delivery count as given.
# ARGV[4]=idle ms ARGV[5]=retry count. Returns 1 when released.
_RELEASE = """
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p.err or #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'RETRYCOUNT', ARGV[5], 'JUSTID')
return 1
"""

# KEYS[2]=parts:dead KEYS[3]=stats KEYS[4]=parts:errors KEYS[5]=parts:done KEYS[6]=parts:strikes
# ARGV[4]=dead message json ARGV[5]=part id ARGV[6]=dead counter name. Returns 1 when moved.
_DEAD_LETTER = """
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p.err or #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
if redis.call('SISMEMBER', KEYS[5], ARGV[5]) == 0 then
  redis.call('XADD', KEYS[2], '*', 'json', ARGV[4])
  redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[5])
redis.call('HDEL', KEYS[6], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Claimed:
    entry_id: str
    fields: dict[str, str]
    deliveries: int  # including this one

    def part(self) -> PartRecord:
        """The part this entry describes; bus.MessageError / KeyError / ValueError if unreadable."""
        return PartRecord.from_message(bus.decode(self.fields))


class PartClaimer:
    """The downloaders' side of the `parts` stream for one consumer."""

    def __init__(
        self, r: redis.Redis, keys: bus.Keys, consumer: str, lease_ms: int, group: str = bus.GROUP_DOWNLOADERS
    ) -> None:
        self.r, self.keys, self.consumer, self.lease_ms, self.group = r, keys, consumer, lease_ms, group
        self._keepalive = r.register_script(_KEEPALIVE)
        self._release = r.register_script(_RELEASE)
        self._dead_letter = r.register_script(_DEAD_LETTER)

    def ensure_group(self) -> None:
        """Create the group if missing (first start, or Redis lost its data)."""
        bus.ensure_group(self.r, self.keys.parts, self.group)

    def claim(self, block_ms: int = 1000) -> Claimed | None:
        """A part entry for this consumer: one idle past the lease first, else a new one."""
        try:
            stale = bus.claim_stale(self.r, self.keys.parts, self.group, self.consumer, self.lease_ms, count=1)
            if stale:
                entry_id, fields = stale[0]
                return Claimed(entry_id, fields, self.deliveries(entry_id))
            reply = self.r.xreadgroup(self.group, self.consumer, {self.keys.parts: ">"}, count=1, block=block_ms)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            self.ensure_group()
            return None
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                return Claimed(entry_id, fields or {}, 1)  # ">" hands out never-delivered entries only
        return None

    def deliveries(self, entry_id: str) -> int:
        return max(1, bus.delivery_count(self.r, self.keys.parts, self.group, entry_id))

    def keepalive(self, entry_id: str) -> bool:
        """Reset the entry's idle time; False when it is no longer ours (reclaimed, acked)."""
        return bool(self._keepalive(keys=[self.keys.parts], args=[self.group, self.consumer, entry_id]))

    def release(self, entry_id: str, *, count_delivery: bool, after_ms: int = 0) -> bool:
        """Let any worker claim the entry in `after_ms` (its idle time is set to lease - after).

        A graceful stop or an environment failure does not count as a delivery; a part failure does.
        """
        deliveries = self.deliveries(entry_id)
        retry_count = deliveries if count_delivery else max(0, deliveries - 1)
        idle_ms = max(0, self.lease_ms - after_ms) + (1000 if after_ms <= 0 else 0)
        args = [self.group, self.consumer, entry_id, idle_ms, retry_count]
        return bool(self._release(keys=[self.keys.parts], args=args))

    def record_error(self, part_id: str, error: str) -> None:
        """Remember why an attempt failed, for the dead letter if it comes to that."""
        value = json.dumps({"error": error[:1000], "consumer": self.consumer, "ts": time.time()})
        self.r.hset(self.keys.parts_errors, part_id, value)

    def strike(self, entry_id: str) -> int:
        """Count an attempt that failed through the part's own fault; returns the strikes so far."""
        return int(self.r.hincrby(self.keys.parts_strikes, entry_id, 1))

    def strikes(self, entry_id: str) -> int:
        """Attempts of this entry that failed through the part's own fault (not lost ones)."""
        return int(self.r.hget(self.keys.parts_strikes, entry_id) or 0)

    def forget_strikes(self, entry_id: str) -> None:
        """The entry is done: its strikes are history."""
        self.r.hdel(self.keys.parts_strikes, entry_id)

    def last_error(self, part_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.keys.parts_errors, part_id)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return {"error": raw}

    def dead_letter(self, claimed: Claimed, part: PartRecord | None, error: str) -> bool:
        """Move the entry to parts:dead (unless the part is done), acknowledge it, count it."""
        base = part.to_message() if part is not None else {"raw": claimed.fields}
        message = bus.encode(
            {
                **base,
                "error": error[:2000],
                "deliveries": claimed.deliveries,
                "entry": claimed.entry_id,
                "consumer": self.consumer,
                "ts": time.time(),
            }
        )["json"]
        part_id = part.done_id if part is not None else f"?{claimed.entry_id}"
        script_keys = [
            self.keys.parts,
            self.keys.parts_dead,
            self.keys.stats,
            self.keys.parts_errors,
            self.keys.parts_done,
            self.keys.parts_strikes,
        ]
        args = [self.group, self.consumer, claimed.entry_id, message, part_id, bus.STAT_PARTS_DEAD]
        return bool(self._dead_letter(keys=script_keys, args=args))

    def is_done(self, part_id: str) -> bool:
        return bool(self.r.sismember(self.keys.parts_done, part_id))

    def ack(self, entry_id: str) -> None:
        self.r.xack(self.keys.parts, self.group, entry_id)

    def is_empty(self) -> bool:
        """No part waits to be delivered and none is in flight anywhere (so --exit-when-empty may exit)."""
        group = bus.group_info(self.r, self.keys.parts, self.group)
        if group is None:
            return not self.r.exists(self.keys.parts)
        if int(group.get("pending", 0)):
            return False
        last = self.r.xrevrange(self.keys.parts, count=1)
        return not last or stream_id(last[0][0]) <= stream_id(group.get("last-delivered-id", "0-0"))
