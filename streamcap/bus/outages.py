"""Redis being down: what counts as an outage, waiting one out, riding through one, recording it.

    try:
        claimed = queue.claim(block_ms)
    except bus.REDIS_DOWN as e:                       # the one tuple of "Redis is not there"
        bus.wait_out_outage(r, e, what="claiming a part", stop=lambda: stopping)
    entries = bus.call_through_outages(r, lambda: r.xreadgroup(...), what="reading shards")

The client of `connection.connect` already retries every command for about 10 s; these are for
the outages that last longer. Waiting logs one line when it starts (and every ~10 s), one when
Redis is back, and ends early, when asked to, as soon as `stop()` is true (SIGTERM).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from streamcap.bus.schema import CONTROL_LAST_OUTAGE, STAT_REDIS_RECONNECTS, Keys
from streamcap.common.logs import first_line

log = logging.getLogger("streamcap.bus")
T = TypeVar("T")

# Redis is not there: refused, reset, timed out, or still loading its data after a restart
# (redis-py's BusyLoadingError is a ConnectionError).
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


class RedisUnavailable(RuntimeError):
    """Redis could not be reached; the message is one line saying where and why."""


class RedisMisconfigured(RedisUnavailable):
    """The REDIS_URL cannot work with the server it leads to (TLS to a plain server): waiting
    would never help."""


# An interruption the client's own retries ride out is recorded as an outage once it lasted
# this long; a shorter one is a dropped connection, re-opened at once.
OUTAGE_MIN_S = 1.0


class OutageWatch(Retry):
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

    def __deepcopy__(self, memo: dict) -> OutageWatch:
        return self  # redis-py copies the policy per connection; the outage clock must be shared

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
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


def describe_url(r: redis.Redis) -> str:
    """host:port (or socket path) of a client, without its password."""
    kw = r.connection_pool.connection_kwargs
    return kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}"


def ping(r: redis.Redis) -> None:
    """Raise RedisUnavailable (one readable line) unless the server answers."""
    if _speaks_plain_text(r):
        raise RedisMisconfigured(
            f"Redis at {describe_url(r)} answers without TLS, but the REDIS_URL starts rediss:// (TLS): "
            "use redis:// for this server"
        )
    try:
        r.ping()
    except REDIS_DOWN as e:
        tls = _tls_refusal(str(e))
        if tls:
            raise RedisMisconfigured(f"Redis at {describe_url(r)}: {tls}") from None
        hint = ""
        if "EOF occurred in violation of protocol" in str(e) and not r.connection_pool.connection_kwargs.get(
            "ssl_certfile"
        ):
            # TLS 1.3 servers refuse a missing client certificate after the handshake, often
            # by hanging up without the alert: the likeliest cause, said as one.
            hint = " (a server with tls-auth-clients wants a client certificate: ssl_certfile= and ssl_keyfile= in REDIS_URL)"
        raise RedisUnavailable(f"cannot reach Redis at {describe_url(r)}: {first_line(e)}{hint}") from None
    except redis.AuthenticationError as e:
        raise RedisUnavailable(f"Redis at {describe_url(r)} refused the password: {e}") from None


# What OpenSSL says when certificates do not match, and what to change: waiting never helps.
_TLS_REFUSALS = {
    "CERTIFICATE_VERIFY_FAILED": "its TLS certificate is not signed by the CA the client trusts "
    "(ssl_ca_certs= in REDIS_URL names the CA file; ssl_check_hostname=false if it names another host)",
    "CERTIFICATE_REQUIRED": "the server wants a client certificate: ssl_certfile= and ssl_keyfile= in REDIS_URL",
    "UNKNOWN_CA": "the server refused the client certificate: it is not signed by a CA the server trusts "
    "(its tls-ca-cert-file)",
    "BAD_CERTIFICATE": "the server refused the client certificate (ssl_certfile= in REDIS_URL)",
}


def _tls_refusal(text: str) -> str | None:
    upper = text.upper()
    return next((f"{why} [{key}]" for key, why in _TLS_REFUSALS.items() if key in upper), None)


def _speaks_plain_text(r: redis.Redis) -> bool:
    """Whether a rediss:// client's server answers a plain-text PING (then it cannot speak TLS).

    A TLS handshake with a plain server is not refused: the server waits for a command that
    never comes, and the client reports a timeout after every retry, with no word about TLS.
    A TLS server answers plain text with a TLS alert or by hanging up, never with a RESP reply.
    """
    if not issubclass(r.connection_pool.connection_class, redis.SSLConnection):
        return False
    kw = r.connection_pool.connection_kwargs
    try:
        with socket.create_connection((kw.get("host", "localhost"), kw.get("port", 6379)), timeout=2.0) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False  # down or slow: the ping below says so in its own words
    return reply[:1] in (b"+", b"-") and reply.endswith(b"\r\n")


def wait_for_redis(
    r: redis.Redis,
    timeout_s: float | None = None,
    *,
    what: str = "Redis",
    keys: Keys | None = None,
    who: str = "",
    stop: Callable[[], bool] | None = None,
) -> None:
    """Block until the server answers, logging one line per ~10 s of waiting.

    Services call this at start and after a command fails past the client's own retries, so a
    server that comes up late or restarts for longer is waited for rather than fatal.
    `timeout_s=None` waits forever; otherwise RedisUnavailable is raised when it runs out, and
    as soon as `stop()` is true (checked after every failed try, at most ~2 s apart).
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
            except RedisMisconfigured:
                raise
            except RedisUnavailable as e:
                waited = time.monotonic() - start
                if (timeout_s is not None and waited >= timeout_s) or (stop is not None and stop()):
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
        if keys is not None and not isinstance(r.get_retry(), OutageWatch):  # else the client records it
            record_outage(r, keys, waited, who or what)


def _single_try_client(r: redis.Redis) -> redis.Redis:
    """A client for the same server as `r` whose commands are tried once."""
    kwargs = dict(r.connection_pool.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs.pop("retry_on_error", None)
    return redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=r.connection_pool.connection_class, **kwargs)
    )


def record_outage(r: redis.Redis, keys: Keys, seconds: float, who: str) -> None:
    """Note an outage a process waited out: shown by `streamcap status`, never fatal."""
    try:
        pipe = r.pipeline(transaction=True)
        pipe.hset(
            keys.control,
            CONTROL_LAST_OUTAGE,
            json.dumps({"ended": time.time(), "seconds": round(seconds, 1), "who": who}),
        )
        pipe.hincrby(keys.stats, STAT_REDIS_RECONNECTS, 1)
        pipe.execute()
    except REDIS_DOWN:  # gone again: the next wait records it
        pass


def wait_out_outage(
    r: redis.Redis,
    error: BaseException,
    *,
    what: str,
    stop: Callable[[], bool] | None = None,
    keys: Keys | None = None,
    who: str = "",
) -> bool:
    """After `error` (one of REDIS_DOWN) during `what`: log it, then wait until Redis answers.

    True once it does (the outage recorded as seen by `who` with `keys`, see `wait_for_redis`);
    False as soon as `stop()` is true first.
    """
    log.warning("Redis unreachable during %s (%s); waiting for it", what, first_line(error))
    try:
        wait_for_redis(r, keys=keys, who=who, stop=stop)
    except RedisUnavailable:
        return False
    return True


def call_through_outages(
    r: redis.Redis,
    fn: Callable[[], T],
    *,
    what: str,
    stop: Callable[[], bool] | None = None,
    on_back: Callable[[], None] | None = None,
    keys: Keys | None = None,
    who: str = "",
) -> T:
    """`fn()`, called again after each outage it runs into is waited out (`wait_out_outage`).

    `on_back()` runs when Redis is back, before the next try (e.g. to recreate a consumer group
    a restarted server lost). Raises RedisUnavailable when `stop()` ends a wait.
    """
    while True:
        try:
            return fn()
        except REDIS_DOWN as e:
            if not wait_out_outage(r, e, what=what, stop=stop, keys=keys, who=who):
                raise RedisUnavailable(f"stopped waiting for Redis during {what}") from None
        if on_back is not None:
            on_back()
