"""Hosts as state shared by every worker: backoff after 429/503, the per-host rate, failure tallies.

    board = HostBoard(cfg, r, keys)          # HostBoard(cfg): this process alone (tests, a bare Fetcher)
    await board.start()                       # the sync task: reads Redis every SYNC_EVERY_S
    wait, why = board.backoff(host)           # seconds the host is still paused (0: go), and why
    await board.throttled(host, retry_after)  # a 429/503: may pause the host for every worker
    await board.pace(host)                    # --per-host-rate: returns when a request may go
    board.learned_rate(host)                  # requests/s a host that throttled is paced at (None: not)
    board.ok(host); board.failed(host, reason, detail)
    await board.close()

A host that answers 429 or 503 tells everyone, not just the process that asked. One such answer
with a Retry-After, or a second one in a row without, puts the host in *backoff* in Redis (a
sorted set of host -> until, in Redis's clock): every worker's rows for it wait without holding
a connection slot, or, when the wait is longer than --straggler-seconds, are deferred to the
part's retry part (downloader.part), so their parts commit and move on. Each throttled answer in
a row doubles the pause, from the Retry-After (or BACKOFF_BASE_S) up to --host-backoff-cap; a
successful answer resets the count. Answers to requests sent before the pause began add nothing.

A host that throttled is also *paced* from then on, at a rate learned from its answers and
shared through Redis (`hosts:learned-rates`): LEARN_START_RATE requests/s after its first
throttled answer, halved on each later one, grown by LEARN_GROWTH_PER_S for each second of
successful pacing, and forgotten once it passes LEARN_FORGET_RATE or FORGET_AFTER_S after the
host last throttled. A host's limit is unknown until it first says so; after that, every worker
together stays near it instead of bursting into the next 429 when each pause ends.

`--per-host-rate` R spaces one host's requests 1/R s apart over all workers: a GCRA in a Lua
script, in Redis's clock (one key per host, expiring when idle); a learned rate below R wins.
While Redis is unreachable each process paces alone at the same rates, and backoffs apply to
the process that saw them.

Failures that name a host's problem (HOST_REASONS) are counted per host and reason in Redis
(batched, every SYNC_EVERY_S); `streamcap hosts` and `streamcap status` list the hosts in backoff
and the worst ones (streamcap.ops.hosts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

import redis

from streamcap import bus
from streamcap.common.logs import first_line
from streamcap.downloader.config import DownloaderSettings
from streamcap.formats.records import HOST_REASONS

log = logging.getLogger(__name__)

SYNC_EVERY_S = 1.0
BACKOFF_BASE_S = 1.0
# The learned rate of a host that throttled (requests/s over every worker): where it starts, its
# floor, how fast it grows while answers succeed (a fraction per second), where it is dropped.
LEARN_START_RATE = 1.0
LEARN_MIN_RATE = 0.05
LEARN_GROWTH_PER_S = 0.1
LEARN_FORGET_RATE = 50.0
# Hosts whose failures are kept in Redis; the least failing go first.
TALLY_HOSTS = 10_000
# Backoffs and throttle counts are forgotten this long after they ended.
FORGET_AFTER_S = 3600
_DOWN = (*bus.REDIS_DOWN, bus.RedisUnavailable, redis.ResponseError)

# KEYS[1]=hosts:backoff KEYS[2]=hosts:throttles KEYS[3]=hosts:learned-rates; ARGV[1]=host
# ARGV[2]=Retry-After s (-1: none) ARGV[3]=cap s ARGV[4]=why ARGV[5]=base s ARGV[6]=start rate
# ARGV[7]=min rate. Returns {pause s from now (0: none), strikes, the learned rate ('' = none)}.
_THROTTLED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local host, ra, cap, base = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local raw = redis.call('HGET', KEYS[2], host)
local st = raw and cjson.decode(raw) or {strikes = 0}
local learned_raw = redis.call('HGET', KEYS[3], host)
local learned = learned_raw and cjson.decode(learned_raw).rate or nil
local current = tonumber(redis.call('ZSCORE', KEYS[1], host) or '0')
if current > now then
  -- an answer to a request sent before the pause began: no strike, a longer Retry-After counts
  if ra >= 0 and now + math.min(ra, cap) > current then
    current = now + math.min(ra, cap)
    redis.call('ZADD', KEYS[1], current, host)
    st['until'] = current
    redis.call('HSET', KEYS[2], host, cjson.encode(st))
  end
  return {tostring(current - now), st.strikes, learned and tostring(learned) or ''}
end
learned = learned and math.max(tonumber(ARGV[7]), learned / 2) or tonumber(ARGV[6])
redis.call('HSET', KEYS[3], host, cjson.encode({rate = learned, at = now}))
st.strikes = st.strikes + 1
local pause = 0
if ra >= 0 then
  pause = math.max(ra, base * 2 ^ (st.strikes - 1))
elseif st.strikes >= 2 then
  pause = base * 2 ^ (st.strikes - 1)
end
pause = math.min(pause, cap)
st.why, st.at, st['until'] = ARGV[4], now, now + pause
redis.call('ZADD', KEYS[1], now + pause, host)
redis.call('HSET', KEYS[2], host, cjson.encode(st))
return {tostring(pause), st.strikes, tostring(learned)}
"""

# KEYS[1]=hosts:backoff KEYS[2]=hosts:throttles KEYS[3]=hosts:learned-rates; ARGV[1]=forget after s.
# Returns {{host, seconds left, why, ...} for the hosts in backoff now, {host, learned rate, ...}};
# forgets old ones.
_SNAPSHOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local forget = now - tonumber(ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', forget, 'LIMIT', 0, 500)
for _, host in ipairs(old) do
  redis.call('ZREM', KEYS[1], host)
  redis.call('HDEL', KEYS[2], host)
end
local paused = {}
local active = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #active, 2 do
  local raw = redis.call('HGET', KEYS[2], active[i])
  local why = raw and cjson.decode(raw).why or ''
  table.insert(paused, active[i])
  table.insert(paused, tostring(tonumber(active[i + 1]) - now))
  table.insert(paused, why)
end
local rates = {}
local learned = redis.call('HGETALL', KEYS[3])
for i = 1, #learned, 2 do
  local st = cjson.decode(learned[i + 1])
  if st.at < forget then
    redis.call('HDEL', KEYS[3], learned[i])
  else
    table.insert(rates, learned[i])
    table.insert(rates, tostring(st.rate))
  end
end
return {paused, rates}
"""

# KEYS[1]=the host's rate key KEYS[2]=hosts:learned-rates; ARGV[1]=host ARGV[2]=--per-host-rate
# (0: none) ARGV[3]=growth per s ARGV[4]=forget rate. GCRA with no burst at the lower of the two
# rates; a request let through grows the learned rate. Returns {µs to wait (0: go), learned ('' = none)}.
_PACE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local raw = redis.call('HGET', KEYS[2], ARGV[1])
local st = raw and cjson.decode(raw) or nil
local rate = tonumber(ARGV[2])
if st and (rate <= 0 or st.rate < rate) then rate = st.rate end
local learned = st and tostring(st.rate) or ''
if rate <= 0 then return {0, learned} end
local interval = math.max(1, math.floor(1000000 / rate))
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then return {tat - now, learned} end
redis.call('SET', KEYS[1], string.format('%d', now + interval), 'PX', math.ceil(interval / 1000) + 1000)
if st then
  st.rate = st.rate * (1 + tonumber(ARGV[3]) * interval / 1000000)
  if st.rate >= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[2], ARGV[1])
    learned = ''
  else
    redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(st))
    learned = tostring(st.rate)
  end
end
return {0, learned}
"""

# KEYS[1]=hosts:failures KEYS[2]=hosts:failure-reasons; ARGV: keep, then (host, reason, n, detail)*.
_TALLY = """
local keep = tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
  local host = ARGV[i]
  redis.call('ZINCRBY', KEYS[1], ARGV[i + 2], host)
  redis.call('HINCRBY', KEYS[2], host .. ' ' .. ARGV[i + 1], ARGV[i + 2])
  redis.call('HSET', KEYS[2], host, ARGV[i + 3])
end
local excess = redis.call('ZCARD', KEYS[1]) - keep
if excess > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[1], excess)
  for i = 1, #gone, 2 do
    redis.call('HDEL', KEYS[2], gone[i], %(fields)s)
  end
end
return 0
""" % {"fields": ", ".join(f"gone[i] .. ' {reason}'" for reason in HOST_REASONS)}


@dataclass
class _Pause:
    until: float  # time.monotonic() of this process
    why: str


class HostBoard:
    """This process's view of the hosts' state; shared through Redis when it has one."""

    def __init__(self, cfg: DownloaderSettings, r: redis.Redis | None = None, keys: bus.Keys | None = None) -> None:
        self.cfg, self.r, self.keys = cfg, r, keys
        self._paused: dict[str, _Pause] = {}
        self._strikes: dict[str, int] = {}  # hosts this process saw throttle, since their last success
        self._next_go: dict[str, float] = {}  # per-host rate without Redis: monotonic time of the next request
        self._learned: dict[str, float] = {}  # hosts that throttled -> the requests/s they are paced at
        self._tally: Counter[tuple[str, str]] = Counter()
        self._last: dict[str, str] = {}
        self._task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._redis_ok = True
        self._scripts = {}
        if r is not None:
            self._scripts = {
                name: r.register_script(text)
                for name, text in (
                    ("throttled", _THROTTLED),
                    ("snapshot", _SNAPSHOT),
                    ("pace", _PACE),
                    ("tally", _TALLY),
                )
            }

    @property
    def shared(self) -> bool:
        return self.r is not None

    async def start(self) -> None:
        """Read the hosts in backoff (a worker knows them before its first request), then keep reading."""
        if self.shared and self._task is None:
            await self._sync_once()
            self._task = asyncio.create_task(self._sync_loop(), name="hosts sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.shared and self._tally:
            await self._sync_once()
        await asyncio.gather(*self._background, return_exceptions=True)

    # --- backoff -----------------------------------------------------------------------------

    def backoff(self, host: str) -> tuple[float, str]:
        """(seconds `host` stays paused, why); (0, '') when requests may go."""
        pause = self._paused.get(host)
        if pause is None:
            return 0.0, ""
        left = pause.until - time.monotonic()
        if left <= 0:
            del self._paused[host]
            return 0.0, ""
        return left, pause.why

    async def throttled(self, host: str, status: int, retry_after: float | None) -> float:
        """Record a 429/503 of `host`; returns the pause it is in now (0: none yet)."""
        why = f"HTTP {status}" + (f", Retry-After {retry_after:g} s" if retry_after is not None else "")
        ra = -1.0 if retry_after is None else retry_after
        cap = self.cfg.host_backoff_cap
        if cap <= 0:
            return 0.0  # --host-backoff-cap 0: rows wait for their own Retry-After, hosts are never paused
        result = None
        if self.shared:
            script = self._scripts["throttled"]
            keys = [self.keys.hosts_backoff, self.keys.hosts_throttles, self.keys.hosts_learned_rates]
            args = [host, ra, cap, why, BACKOFF_BASE_S, LEARN_START_RATE, LEARN_MIN_RATE]
            result = await self._call(script, keys=keys, args=args)
        if result is not None:
            pause, strikes = float(result[0]), int(result[1])
            self._learn(host, result[2])
        else:  # alone: the same rules, in this process
            left, _ = self.backoff(host)
            if left > 0:
                return left
            strikes = self._strikes.get(host, 0) + 1
            grown = BACKOFF_BASE_S * 2 ** (strikes - 1)
            pause = min(cap, max(ra, grown) if ra >= 0 else (grown if strikes >= 2 else 0.0))
            learned = self._learned.get(host)
            self._learned[host] = max(LEARN_MIN_RATE, learned / 2) if learned else LEARN_START_RATE
        self._strikes[host] = strikes
        if pause > 0:
            self._pause(host, pause, why)
        return pause

    def ok(self, host: str) -> None:
        """A successful answer: the host's throttled answers in a row start again from none."""
        if self._strikes.pop(host, None) is not None and self.shared:
            keys = self.keys
            task = asyncio.ensure_future(self._call(self.r.hdel, keys.hosts_throttles, host))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _pause(self, host: str, seconds: float, why: str) -> None:
        until = time.monotonic() + seconds
        current = self._paused.get(host)
        if current is None or current.until < until:
            self._paused[host] = _Pause(until, why)

    # --- the per-host rate -------------------------------------------------------------------

    def learned_rate(self, host: str) -> float | None:
        """The requests/s `host` is paced at since it throttled; None when it is not."""
        return self._learned.get(host)

    def _learn(self, host: str, rate: str | float | None) -> None:
        if rate in (None, ""):
            self._learned.pop(host, None)
        else:
            self._learned[host] = float(rate)

    async def pace(self, host: str) -> None:
        """Return once a request to `host` fits --per-host-rate and the rate it was learned to
        take (at once when neither applies)."""
        ceiling = self.cfg.per_host_rate
        if ceiling <= 0 and host not in self._learned:
            return
        key = self.keys.host_rate(host) if self.keys else ""
        while self.shared and self._redis_ok:
            args = [host, ceiling, LEARN_GROWTH_PER_S, LEARN_FORGET_RATE]
            reply = await self._call(self._scripts["pace"], keys=[key, self.keys.hosts_learned_rates], args=args)
            if reply is None:
                break  # Redis is away: pace alone until it is back
            self._learn(host, reply[1])
            if int(reply[0]) <= 0:
                return
            await asyncio.sleep(int(reply[0]) / 1e6)
        learned = self._learned.get(host)
        rates = [r for r in (ceiling, learned or 0.0) if r > 0]
        if not rates:
            return
        rate = min(rates)
        now = time.monotonic()
        go = max(now, self._next_go.get(host, 0.0))
        self._next_go[host] = go + 1 / rate
        if learned:
            grown = learned * (1 + LEARN_GROWTH_PER_S / rate)
            self._learn(host, None if grown >= LEARN_FORGET_RATE else grown)
        if go > now:
            await asyncio.sleep(go - now)
        if len(self._next_go) > 10_000:  # forget hosts idle past their next slot
            self._next_go = {h: t for h, t in self._next_go.items() if t > now}

    # --- failures ----------------------------------------------------------------------------

    def failed(self, host: str, reason: str, detail: str) -> None:
        if host and reason in HOST_REASONS:
            self._tally[(host, reason)] += 1
            self._last[host] = f"{reason}: {detail}"[:200]

    # --- Redis -------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_EVERY_S)
            await self._sync_once()

    async def _sync_once(self) -> None:
        tally, last = self._tally, self._last
        self._tally, self._last = Counter(), {}
        reply = await self._call(self._sync, tally, last)
        if reply is None:  # Redis away: keep the counts for the next try
            self._tally.update(tally)
            self._last = last | self._last
            return
        paused, rates = reply
        for i in range(0, len(paused), 3):
            self._pause(str(paused[i]), float(paused[i + 1]), str(paused[i + 2]))
        self._learned = {str(rates[i]): float(rates[i + 1]) for i in range(0, len(rates), 2)}

    def _sync(self, tally: Counter, last: dict[str, str]) -> list:
        """Send the failure counts, read the hosts in backoff (in a thread)."""
        if tally:
            args: list = [TALLY_HOSTS]
            for (host, reason), n in tally.items():
                args += [host, reason, n, last.get(host, "")]
            self._scripts["tally"](keys=[self.keys.hosts_failures, self.keys.hosts_failure_reasons], args=args)
        keys = [self.keys.hosts_backoff, self.keys.hosts_throttles, self.keys.hosts_learned_rates]
        return self._scripts["snapshot"](keys=keys, args=[FORGET_AFTER_S])

    async def _call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) in a thread; None (and one warning per outage) when Redis is away."""
        try:
            result = await asyncio.to_thread(fn, *args, **kwargs)
        except _DOWN as e:
            if self._redis_ok:
                log.warning("host state not shared while Redis is away (each worker on its own): %s", first_line(e))
            self._redis_ok = False
            return None
        if not self._redis_ok:
            log.info("host state shared through Redis again")
        self._redis_ok = True
        return result
