"""The connection to Redis: a client that rides out short outages on its own and, given the
namespace's keys, records them for `streamcap status`. Longer outages: `streamcap.bus.outages`.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from streamcap.bus.outages import REDIS_DOWN, OutageWatch, record_outage
from streamcap.bus.schema import SOCKET_TIMEOUT_S, Keys
from streamcap.common.logs import first_line
from streamcap.common.secrets import redact
from streamcap.common.settings import ConfigError


def connect(
    url: str,
    *,
    socket_timeout: float = SOCKET_TIMEOUT_S,
    connect_timeout: float = 5.0,
    retries: int = 10,
    health_check_interval: int = 10,
    keys: Keys | None = None,
    who: str = "",
) -> redis.Redis:
    """A client that rides out short outages (a restart, a failover) on its own.

    Every command is retried on connection errors and timeouts with exponential backoff and
    jitter (about 10 s in all with the defaults), also while a restarted server is still
    loading its AOF. Callers that must survive longer outages use `call_through_outages`
    or `wait_out_outage`. Responses are decoded to str. With `keys`, every outage of a second or
    more that this client waited out is recorded as seen by `who` (`record_outage`), so
    `streamcap status` shows even a restart the retries hid.
    """
    backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
    client: redis.Redis | None = None
    if keys is None:
        retry = Retry(backoff, retries)
    else:
        retry = OutageWatch(backoff, retries, lambda seconds: record_outage(client, keys, seconds, who or "a service"))
    # TCP keepalive notices a peer that vanished without a FIN; a unix socket has no such option
    # (redis-py refuses it there).
    tcp = {} if url.startswith("unix://") else {"socket_keepalive": True}
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            **tcp,
            health_check_interval=health_check_interval,
            retry=retry,
            retry_on_error=list(REDIS_DOWN),  # a server still loading its AOF (BusyLoadingError) included
        )
    except ValueError as e:  # redis-py's own URL checks: a query option it cannot read, ...
        raise ConfigError(f"--redis-url / REDIS_URL: {first_line(e)} (got {redact(url)!r})") from None
    return client
