"""The Redis bus: every key name, group name, TTL and message format, and the connection.

All services meet here. Nothing else in the code base spells a Redis key: ask `Keys` for it.

    from streamcap import bus
    r = bus.connect("redis://localhost:6379/0")
    keys = bus.Keys("streamcap")
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    r.xadd(keys.parts, bus.encode({"source": "relaion", "part": 0, "start": 0, "end": 1000}))

Messages are JSON with a version field (`v`), stored in a stream entry's single `json` field, so
`redis-cli XRANGE` stays readable and no reader ever unpickles anything.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import BusyLoadingError, ResponseError
from redis.retry import Retry

log = logging.getLogger(__name__)

MESSAGE_VERSION = 1

# Consumer groups.
GROUP_DOWNLOADERS = "downloaders"
GROUP_EVALUATORS = "evaluators"

# Heartbeats expire when their writer stops refreshing them; a reader treats an entry older
# than HEARTBEAT_STALE_S as stale even while it still exists.
HEARTBEAT_TTL_S = 60
HEARTBEAT_STALE_S = 20

# Blocking stream reads must return well before the socket timeout, or redis-py would treat a
# quiet stream as a dead connection and retry the read.
SOCKET_TIMEOUT_S = 10.0
BLOCK_MS = 2_000

# Heartbeat roles.
ROLE_DOWNLOADER = "downloader"
ROLE_TRAINER = "trainer"
ROLE_EVALUATOR = "evaluator"

# Part states as `streamcap status` and the audit name them.
PART_STATES = ("pending", "in_flight", "done", "dead")

# Counters of the `stats` hash. Failures are counted per reason as STAT_FAIL_PREFIX + reason
# (reasons: streamcap.records.FAILURE_REASONS). All are added by the part commit, so they
# count committed work only and never twice.
STAT_ROWS = "rows"                        # samples + failures of committed parts
STAT_SAMPLES = "samples"
STAT_FAILURES = "failures"
STAT_FAIL_PREFIX = "fail:"
STAT_BYTES_DOWNLOADED = "bytes_downloaded"
STAT_SHARDS = "shards"
STAT_SHARD_BYTES = "shard_bytes"
STAT_PARTS_COMMITTED = "parts_committed"
STAT_COMMITS_WASTED = "commits_wasted"    # commits of parts another worker had already committed
STAT_PARTS_DEAD = "parts_dead"
STAT_REDIS_RECONNECTS = "redis_reconnects"  # outages waited out, summed over processes

# Fields of the `control` hash. Downloaders set CONTROL_DISK_PAUSED (a one-line reason) while
# the shard disk is over its budget and delete it when they resume; `streamcap status` shows it.
CONTROL_DISK_PAUSED = "disk_paused"
CONTROL_DISK_PAUSED_SINCE = "disk_paused_since"
# JSON {ended, seconds, who} of the last Redis outage a service waited out.
CONTROL_LAST_OUTAGE = "last_redis_outage"


class RedisUnavailable(RuntimeError):
    """Redis could not be reached; the message is one line saying where and why."""


class MessageError(ValueError):
    """A stream entry is not a message this version understands."""


@dataclass(frozen=True)
class Keys:
    """Every Redis key of the schema (ARCHITECTURE.md), under one namespace prefix."""

    namespace: str = "streamcap"

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # --- the schema of ARCHITECTURE.md ---
    @property
    def sources(self) -> str:
        """hash: source id -> JSON definition (uri, format, columns, rows, part size)."""
        return self.key("sources")

    @property
    def parts(self) -> str:
        """stream, group `downloaders`: one entry per part (source, index, row range)."""
        return self.key("parts")

    @property
    def parts_dead(self) -> str:
        """stream: parts that exceeded the delivery limit, with their last error."""
        return self.key("parts", "dead")

    @property
    def parts_done(self) -> str:
        """set: committed part ids; makes a redelivered part's commit a no-op."""
        return self.key("parts", "done")

    @property
    def shards(self) -> str:
        """stream, one group per training run: one entry per finalized shard."""
        return self.key("shards")

    @property
    def stats(self) -> str:
        """hash: pipeline counters (urls ok, failures by reason, bytes, shards, samples)."""
        return self.key("stats")

    @property
    def checkpoints(self) -> str:
        """stream, group `evaluators`: published checkpoints."""
        return self.key("checkpoints")

    @property
    def evals(self) -> str:
        """stream: evaluation results per checkpoint."""
        return self.key("evals")

    def heartbeat(self, role: str, instance: str) -> str:
        """hash with TTL: liveness and live rates of one process."""
        return self.key("hb", role, instance)

    def heartbeat_pattern(self, role: str = "*") -> str:
        return self.key("hb", role, "*")

    # --- keys the services add to the schema ---
    @property
    def parts_commits(self) -> str:
        """hash: part id -> token of the attempt whose commit was applied (a retried commit stays a no-op)."""
        return self.key("parts", "commits")

    @property
    def parts_deliveries(self) -> str:
        """hash: part id -> times its committed attempt's entry was delivered (1 = never redelivered)."""
        return self.key("parts", "deliveries")

    @property
    def parts_errors(self) -> str:
        """hash: part id -> JSON {error, consumer, ts} of its last failed attempt (for parts:dead)."""
        return self.key("parts", "errors")

    @property
    def shards_deleted(self) -> str:
        """set: shard names removed by `streamcap shards gc`, so trainers stop replaying them."""
        return self.key("shards", "deleted")

    def shard_reads(self, run: str) -> str:
        """hash: shard name -> times read (fresh or replayed) by training run `run`."""
        return self.key("shards", "reads", run)

    @property
    def runs(self) -> str:
        """hash: training run id -> JSON (started, last seen); gc keeps shards they still need."""
        return self.key("runs")

    @staticmethod
    def train_group(run: str) -> str:
        """Consumer group on `shards` for one training run."""
        return f"train:{run}"

    @property
    def control(self) -> str:
        """hash: operator-visible switches and states (e.g. downloads paused for disk)."""
        return self.key("control")

    @property
    def evals_best(self) -> str:
        """hash: the best evaluated checkpoint so far and its scores."""
        return self.key("evals", "best")

    def schema(self) -> dict[str, tuple[str, str]]:
        """name -> (key, Redis type) for every fixed key; what `streamcap status` sizes."""
        return {
            "sources": (self.sources, "hash"),
            "parts": (self.parts, "stream"),
            "parts:dead": (self.parts_dead, "stream"),
            "parts:done": (self.parts_done, "set"),
            "parts:commits": (self.parts_commits, "hash"),
            "parts:deliveries": (self.parts_deliveries, "hash"),
            "parts:errors": (self.parts_errors, "hash"),
            "shards": (self.shards, "stream"),
            "shards:deleted": (self.shards_deleted, "set"),
            "stats": (self.stats, "hash"),
            "runs": (self.runs, "hash"),
            "control": (self.control, "hash"),
            "checkpoints": (self.checkpoints, "stream"),
            "evals": (self.evals, "stream"),
            "evals:best": (self.evals_best, "hash"),
        }


# --- connection ----------------------------------------------------------------------------


# An interruption the client's own retries ride out is recorded as an outage once it lasted
# this long; a shorter one is a dropped connection, re-opened at once.
OUTAGE_MIN_S = 1.0


class _OutageWatch(Retry):
    """The client's retry policy, also noting how long Redis was unreachable.

    An outage runs from the first failed attempt of any command to the next attempt that
    succeeds; one that lasted OUTAGE_MIN_S or more is reported to `on_outage(seconds)` once,
    however many threads waited it out. Every pooled connection shares this one object.
    """

    def __init__(self, backoff: ExponentialWithJitterBackoff, retries: int, on_outage: Callable[[float], None]) -> None:
        super().__init__(backoff, retries)
        self.on_outage = on_outage
        self._since: float | None = None
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "_OutageWatch":
        return self  # redis-py copies the policy per connection; the outage clock must be shared

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):  # noqa: ANN001, ANN201
        sent = [0.0]

        def timed() -> Any:
            sent[0] = time.monotonic()
            return do()

        def noted(error: Exception, *count: int) -> Any:
            # A command that timed out went unanswered since it was sent (a blackholed network).
            began = sent[0] if isinstance(error, (redis.TimeoutError, TimeoutError)) else time.monotonic()
            with self._lock:
                self._since = min(self._since or began, began)
            return fail(error, *count)

        result = super().call_with_retry(timed, noted, is_retryable, with_failure_count)
        if self._since is not None:
            with self._lock:
                since, self._since = self._since, None
            if since is not None and time.monotonic() - since >= OUTAGE_MIN_S:
                self.on_outage(time.monotonic() - since)
        return result


def connect(
    url: str,
    *,
    socket_timeout: float = SOCKET_TIMEOUT_S,
    connect_timeout: float = 5.0,
    retries: int = 10,
    health_check_interval: int = 10,
    keys: "Keys | None" = None,
    who: str = "",
) -> redis.Redis:
    """A client that rides out short outages (a restart, a failover) on its own.

    Every command is retried on connection errors and timeouts with exponential backoff and
    jitter (about 10 s in all with the defaults), also while a restarted server is still
    loading its AOF. Callers that must survive longer outages wrap their loop in
    `wait_for_redis`. Responses are decoded to str. With `keys`, every outage of a second or
    more that this client waited out is recorded as seen by `who` (`record_outage`), so
    `streamcap status` shows even a restart the retries hid.
    """
    backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
    client: redis.Redis | None = None
    if keys is None:
        retry = Retry(backoff, retries)
    else:
        retry = _OutageWatch(backoff, retries, lambda seconds: record_outage(client, keys, seconds, who or "a service"))
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        socket_keepalive=True,
        health_check_interval=health_check_interval,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, BusyLoadingError],
    )
    return client


def describe_url(r: redis.Redis) -> str:
    """host:port (or socket path) of a client, without its password."""
    kw = r.connection_pool.connection_kwargs
    return kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}"


def ping(r: redis.Redis) -> None:
    """Raise RedisUnavailable (one readable line) unless the server answers."""
    try:
        r.ping()
    except (redis.ConnectionError, redis.TimeoutError, BusyLoadingError) as e:
        raise RedisUnavailable(f"cannot reach Redis at {describe_url(r)}: {_reason(e)}") from None
    except redis.AuthenticationError as e:
        raise RedisUnavailable(f"Redis at {describe_url(r)} refused the password: {e}") from None


def wait_for_redis(
    r: redis.Redis, timeout_s: float | None = None, *, what: str = "Redis", keys: "Keys | None" = None,
    who: str = "",
) -> None:
    """Block until the server answers, logging one line per ~10 s of waiting.

    Services call this at start and after a command fails past the client's own retries, so a
    server that comes up late or restarts for longer is waited for rather than fatal.
    `timeout_s=None` waits forever; otherwise RedisUnavailable is raised when it runs out.
    With `keys`, an outage that was waited out is recorded as seen by `who` (`control` field
    CONTROL_LAST_OUTAGE, counter STAT_REDIS_RECONNECTS) so `streamcap status` can show it.
    """
    start = time.monotonic()
    delay, last_log = 0.1, 0.0
    # Probe without the client's own retries: they would keep a down server silent for ~10 s
    # before the first line saying what the service waits for.
    probe = _single_try_client(r)
    try:
        while True:
            try:
                ping(probe)
                break
            except RedisUnavailable as e:
                waited = time.monotonic() - start
                if timeout_s is not None and waited >= timeout_s:
                    raise
                if not last_log or waited - last_log >= 10:
                    log.warning("%s; retrying (waited %.0f s)", e, waited)
                    last_log = max(waited, 1e-9)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
    finally:
        probe.close()
    if last_log:
        waited = time.monotonic() - start
        log.info("%s at %s is back after %.0f s", what, describe_url(r), waited)
        if keys is not None and not isinstance(r.get_retry(), _OutageWatch):  # else the client records it
            record_outage(r, keys, waited, who or what)


def _single_try_client(r: redis.Redis) -> redis.Redis:
    """A client for the same server as `r` whose commands are tried once."""
    kwargs = dict(r.connection_pool.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs.pop("retry_on_error", None)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=r.connection_pool.connection_class, **kwargs))


def record_outage(r: redis.Redis, keys: "Keys", seconds: float, who: str) -> None:
    """Note an outage a process waited out: shown by `streamcap status`, never fatal."""
    try:
        pipe = r.pipeline(transaction=True)
        pipe.hset(keys.control, CONTROL_LAST_OUTAGE,
                  json.dumps({"ended": time.time(), "seconds": round(seconds, 1), "who": who}))
        pipe.hincrby(keys.stats, STAT_REDIS_RECONNECTS, 1)
        pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError):  # gone again: the next wait records it
        pass


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# --- messages --------------------------------------------------------------------------------


def encode(payload: dict[str, Any]) -> dict[str, str]:
    """A stream entry's fields for `payload` (JSON, versioned)."""
    return {"json": json.dumps({"v": MESSAGE_VERSION, **payload}, separators=(",", ":"))}


def decode(fields: dict[str, str] | None) -> dict[str, Any]:
    """The payload of a stream entry written by `encode`; MessageError if it is not one."""
    if not fields or "json" not in fields:
        raise MessageError(f"not a streamcap message: {fields!r}")
    try:
        payload = json.loads(fields["json"])
    except json.JSONDecodeError as e:
        raise MessageError(f"message is not valid JSON: {e}") from None
    if payload.get("v") != MESSAGE_VERSION:
        raise MessageError(f"message version {payload.get('v')!r}, this streamcap reads {MESSAGE_VERSION}")
    return payload


# --- streams and consumer groups ---------------------------------------------------------------


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


# --- heartbeats --------------------------------------------------------------------------------


def write_heartbeat(
    r: redis.Redis, keys: Keys, role: str, instance: str, fields: dict[str, Any], ttl_s: int = HEARTBEAT_TTL_S
) -> None:
    """Replace the heartbeat hash of (role, instance) and (re)arm its TTL, atomically.

    Values that are not str/int/float are stored as JSON (e.g. failures by reason).
    """
    key = keys.heartbeat(role, instance)
    mapping = {k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in fields.items()}
    mapping["ts"] = time.time()
    pipe = r.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, ttl_s)
    pipe.execute()


def read_heartbeats(r: redis.Redis, keys: Keys, role: str = "*") -> list[dict[str, Any]]:
    """Every live heartbeat of `role` ('*' for all), oldest instance name first.

    Each dict has the written fields (JSON values decoded), plus `role`, `id`, `age_s` and
    `stale` (not refreshed for HEARTBEAT_STALE_S, e.g. a process that hangs).
    """
    names = sorted(r.scan_iter(match=keys.heartbeat_pattern(role), count=500))
    if not names:
        return []
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    now, beats = time.time(), []
    for name, raw in zip(names, pipe.execute()):
        if not raw:  # expired between SCAN and HGETALL
            continue
        beat = {k: _maybe_json(v) for k, v in raw.items()}
        _, hb_role, instance = name[len(keys.namespace) + 1 :].split(":", 2)
        age = now - float(beat.get("ts", 0))
        beat.update(role=hb_role, id=instance, age_s=round(age, 1), stale=age > HEARTBEAT_STALE_S)
        beats.append(beat)
    return beats


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def incr_counters(pipe: Any, key: str, counters: Iterable[tuple[str, int]]) -> None:
    """HINCRBY each non-zero counter on a pipeline (used inside transactions)."""
    for name, n in counters:
        if n:
            pipe.hincrby(key, name, int(n))
