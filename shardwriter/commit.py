"""The part commit: one Lua script that registers a part's shards and acknowledges the part.

    stats = writer.finish()                       # shards + stats file are on disk
    result = commit_part(r, keys, stats, entry_id, consumer="host-1234")
    result.status                                  # 'committed' | 'already_done' | 'lost_claim'

In one script (atomic, and in the AOF as one unit): XADD each shard to `shards`, HINCRBY the
`stats` counters, XACK the part entry in its group, SADD `parts:done` (and, with `consumer`,
note in `parts:deliveries` how often the part was delivered: the audit's redelivery
histogram). It is a no-op when the part is already in `parts:done` (counted as
`commits_wasted`), so a redelivered part, a slow consumer or a retried command (redis-py
retries on timeouts; the reply may have been lost) never registers anything twice. With
`consumer` given it also refuses, as `lost_claim`, when the part entry is no longer pending
for that consumer (another worker reclaimed it and may be writing the same shard names right
now, or Redis lost the consumer group).

`confirm_claim` is the same check done before the shards are renamed (see
`PartWriter(claim=...)`); it also restarts the entry's idle clock, so the lease is fresh for
the renames. Scripts run with EVALSHA (Redis 6.2 has no FUNCTION); redis-py reloads them
after a server restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from streamcap import bus
from streamcap.formats.records import PartRecord, PartStats
from streamcap.shardwriter import faults

COMMITTED, ALREADY_DONE, LOST_CLAIM, CONFIRMED = "committed", "already_done", "lost_claim", "ok"

# A check of the claim, shared by both scripts. KEYS[1]=parts KEYS[2]=parts:done KEYS[3]=stats
# ARGV[1]=group ARGV[2]=entry id ARGV[3]=part id ARGV[4]=consumer ('' = no ownership check)
_CHECK = """
local function refuse(status)
  redis.call('HINCRBY', KEYS[3], '%(wasted)s', 1)
  return status
end
local function check_claim()
  if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 1 then
    -- the part is done; its entry (a duplicate delivery) needs no more work
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
    return '%(done)s'
  end
  if ARGV[4] ~= '' then
    -- pcall: a group that vanished (Redis lost its data) means nobody holds the part any more
    local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
    if p.err or #p == 0 or p[1][2] ~= ARGV[4] then return '%(lost)s' end
  end
  return nil
end
""" % {"wasted": bus.STAT_COMMITS_WASTED, "done": ALREADY_DONE, "lost": LOST_CLAIM}

_CONFIRM = (
    _CHECK
    + """
local refused = check_claim()
if refused then return refuse(refused) end
if ARGV[4] ~= '' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[4], 0, ARGV[2], 'JUSTID')
end
return '%(ok)s'
"""
    % {"ok": CONFIRMED}
)

# KEYS[4]=shards KEYS[5]=parts:commits KEYS[6]=parts:deliveries KEYS[7]=parts:retries;
# ARGV[5]=attempt token ARGV[6]=part id whose pending retry this commit ends ('' = none)
# ARGV[7]=retry id and ARGV[8]=message of a follow-up retry part to enqueue ('' = none)
# ARGV[9]=n shards, then n shard messages, then counter name/value pairs (deltas: a retry's
# commit takes back the retried rows' old outcomes, so they may be negative).
_COMMIT = (
    _CHECK
    + """
local refused = check_claim()
if refused then
  if refused == '%(done)s' and ARGV[5] ~= '' and redis.call('HGET', KEYS[5], ARGV[3]) == ARGV[5] then
    return '%(committed)s:retry'
  end
  return refuse(refused)
end
local n = tonumber(ARGV[9])
for i = 10, 9 + n do redis.call('XADD', KEYS[4], '*', 'json', ARGV[i]) end
for i = 10 + n, #ARGV, 2 do
  -- a retry that took a reason's last failure back leaves no 'fail:<reason> 0' behind
  if redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) == 0 then redis.call('HDEL', KEYS[3], ARGV[i]) end
end
if ARGV[4] ~= '' then
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
  redis.call('HSET', KEYS[6], ARGV[3], p[1][4])
end
if ARGV[6] ~= '' then redis.call('HDEL', KEYS[7], ARGV[6]) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[5], ARGV[3], ARGV[5])
if ARGV[8] ~= '' and redis.call('HSETNX', KEYS[7], ARGV[3], ARGV[7]) == 1 then
  redis.call('XADD', KEYS[1], '*', 'json', ARGV[8])
end
return '%(committed)s'
"""
    % {"done": ALREADY_DONE, "committed": COMMITTED}
)


@dataclass(frozen=True)
class PartClaim:
    """Who holds a part: its entry in the `parts` stream, pending for `consumer` in `group`."""

    r: redis.Redis
    keys: bus.Keys
    entry_id: str
    consumer: str
    group: str = bus.GROUP_DOWNLOADERS


@dataclass(frozen=True)
class CommitResult:
    status: str  # COMMITTED | ALREADY_DONE | LOST_CLAIM
    part_id: str
    shards: int = 0
    retried: bool = False  # the same attempt's commit had been applied already (reply lost)

    @property
    def applied(self) -> bool:
        """The part's output is registered by this attempt (now or by an earlier try of this call)."""
        return self.status == COMMITTED


def part_counters(stats: PartStats) -> list[tuple[str, int]]:
    """The `stats` hash counters one committed part adds."""
    failures = stats.failures_by_reason()
    counters = [
        (bus.STAT_ROWS, stats.samples + len(stats.failures)),
        (bus.STAT_SAMPLES, stats.samples),
        (bus.STAT_FAILURES, len(stats.failures)),
        (bus.STAT_BYTES_DOWNLOADED, stats.bytes_downloaded),
        (bus.STAT_SHARDS, len(stats.shards)),
        (bus.STAT_SHARD_BYTES, sum(s.bytes for s in stats.shards)),
        (bus.STAT_PARTS_COMMITTED, 1),
        (bus.STAT_RETRIED_ROWS, stats.retried_rows),
        (bus.STAT_RETRIED_SAMPLES, stats.retried_samples),
    ]
    counters += [(bus.STAT_FAIL_PREFIX + reason, n) for reason, n in sorted(failures.items())]
    return [(name, n) for name, n in counters if n]


def commit_counters(stats: PartStats) -> list[tuple[str, int]]:
    """What committing `stats` adds to the `stats` hash: a part's counters, or for a retry the
    difference its merge made (the retried rows' old outcomes out, their new ones in)."""
    if not stats.retry:
        return part_counters(stats)
    delta = dict(part_counters(stats))
    for name, n in part_counters(stats.without_retry(stats.retry)):
        delta[name] = delta.get(name, 0) - n
    return [(name, n) for name, n in sorted(delta.items()) if n]


def confirm_claim(claim: PartClaim, part_id: str) -> str:
    """CONFIRMED when `claim` still holds the part and it is not done; else why not."""
    script = claim.r.register_script(_CONFIRM)
    keys = [claim.keys.parts, claim.keys.parts_done, claim.keys.stats]
    return script(keys=keys, args=[claim.group, claim.entry_id, part_id, claim.consumer])


def commit_part(
    r: redis.Redis,
    keys: bus.Keys,
    stats: PartStats,
    entry_id: str,
    group: str = bus.GROUP_DOWNLOADERS,
    *,
    consumer: str | None = None,
    token: str | None = None,
    follow_up: PartRecord | None = None,
) -> CommitResult:
    """Register the part's shards, add its counters, ack it, mark it done: all or nothing.

    `consumer` (recommended): refuse unless the entry is still pending for this consumer.
    `token`: an id of this attempt; a retry of an applied commit with the same token reports
    COMMITTED (retried=True) instead of a wasted commit. Defaults to consumer + entry id.
    `follow_up`: a retry part of this part (shardwriter.retry.retry_part) enqueued at the end
    of `parts` by the same script, recorded as the part's open retry: the rows a downloader
    deferred are never left behind by a crash between the commit and their retry.
    """
    part_id = stats.done_id
    if follow_up is not None and stats.retry:
        raise ValueError("a retry's commit enqueues no follow-up: its rows had their full time")
    faults.maybe_crash("before_commit", part_id)
    # A retry registers only its own new shards; the part's earlier ones are registered already.
    new = [s for s in stats.shards if s.seq >= stats.retries[stats.retry].seq0] if stats.retry else stats.shards
    shard_msgs = [bus.encode(s.to_message())["json"] for s in new]
    args: list[str | int] = [
        group,
        entry_id,
        part_id,
        consumer or "",
        token or f"{consumer or ''}/{entry_id}",
        stats.part_id if stats.retry else "",
        follow_up.retry if follow_up else "",
        bus.encode(follow_up.to_message())["json"] if follow_up else "",
        len(shard_msgs),
        *shard_msgs,
    ]
    for name, n in commit_counters(stats):
        args += [name, n]
    script_keys = [
        keys.parts,
        keys.parts_done,
        keys.stats,
        keys.shards,
        keys.parts_commits,
        keys.parts_deliveries,
        keys.parts_retries,
    ]
    script = r.register_script(_COMMIT)
    if faults.armed("during_commit", part_id):
        _send_and_die(r, script, script_keys, args)
    status = script(keys=script_keys, args=args)
    faults.maybe_crash("after_commit", part_id)
    retried = status.endswith(":retry")
    status = status.split(":")[0]
    return CommitResult(status, part_id, shards=len(new) if status == COMMITTED else 0, retried=retried)


def _send_and_die(r: redis.Redis, script, script_keys: list[str], args: Iterable) -> None:
    """Fault `during_commit`: the command reaches Redis, its reply is never read."""
    script.sha = r.script_load(script.script)
    conn = r.connection_pool.get_connection()
    conn.send_command("EVALSHA", script.sha, len(script_keys), *script_keys, *args)
    time.sleep(0.3)  # let the server run it; the client dies with the reply unread
    faults.crash_now("during_commit")
