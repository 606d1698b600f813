"""Fetching image bytes with asyncio + aiohttp: bounded, polite, retried, guarded.

    async with Fetcher(cfg) as fetcher:
        result = await fetcher.fetch("https://example.com/cat.jpg")
        result.data            # the body (decoded, at most --max-bytes), or None
        result.reason          # a streamcap.formats.records.FAILURE_REASONS entry when data is None

        async with fetcher.fetch_held(url) as result:     # the slot stays taken until the body
            await process(result.data)                    # is processed: memory stays bounded

One row gets `--total-timeout` seconds in all. Within it: at most `--retries` retries with
exponential backoff and jitter after a timeout, a connection error, a 429 (waiting for its
Retry-After when that is at most `--retry-after-cap`) or a 5xx; other 4xx end the row at once.
Redirects are followed here, hop by hop (at most 3), so every hop goes through the security
guard (downloader.security) like the first request. Concurrency is bounded per process
(`--concurrency`) and per host (`--per-host`); a row waiting for a busy host holds no global
slot, so one slow host never stalls the others. With `fetch_held` a successful row keeps its
global slot until its image is processed, so when decoding is the bottleneck fetching slows
down instead of piling up downloaded bodies: memory stays at most --concurrency bodies.

Names are looked up before a row takes any slot (downloader.dns: c-ares, cached both ways), so
the rows of a part waiting for connections have their answers by the time they get one, and
all rows of a dead name fail as `dns_error` from one lookup. Hosts are shared state
(downloader.hosts): a 429/503 pauses the host for every worker, and a row whose host is paused
waits without a connection slot, or, when its FetchResult allows (`defer_s`), fails at once as
`throttled` with `deferred` set so its part can hand it to a retry part; the same answers after
the allowed retries end the row as `throttled`.

Bodies are never decompressed by aiohttp: a gzip/deflate body is inflated here in bounded steps,
so a small compressed body that expands to gigabytes stops at the cap having produced at most
`--max-bytes` + 1 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import socket
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from streamcap.common.logs import first_line
from streamcap.downloader.config import USER_AGENT_TOKEN, DownloaderSettings, parse_servers
from streamcap.downloader.dns import AresResolver, CachingResolver, DnsFailure
from streamcap.downloader.hosts import HostBoard
from streamcap.downloader.security import (
    AddressPolicy,
    BlockedAddressError,
    GuardedResolver,
    InvalidURLError,
    blocked_reason,
    check_url,
    guarded_socket_factory,
    parse_ip_host,
)

MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
CHUNK_BYTES = 64 * 1024
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 10.0
THROTTLE_STATUSES = frozenset({429, 503})


@dataclass
class FetchResult:
    data: bytes | None = None
    reason: str | None = None  # failure reason when data is None
    detail: str = ""
    url: str = ""  # the final URL after redirects
    wire_bytes: int = 0  # bytes received, for MB/s
    attempts: int = 0
    holds_slot: bool = False  # a global slot stays taken for this result (fetch_held)
    on_wire_since: float | None = None  # loop time its first request got a connection slot
    # A wait for the host's backoff longer than this ends the row at once as `throttled`, with
    # `deferred` set (its part hands it to a retry part); None: wait while the row has time.
    defer_s: float | None = None
    deferred: bool = False


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


class _Final(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def robots_opt_out(values: Iterable[str], directives: frozenset[str], token: str = USER_AGENT_TOKEN) -> str | None:
    """The opt-out directive an X-Robots-Tag header carries for us, or None.

    Each header value is `[bot:] directive, directive, ...`; a value naming another bot
    (`otherbot: noai`) does not apply, one naming us (`streamcap: noai`) or none does.
    Matching ignores case and spacing.
    """
    for value in values:
        scope, sep, rest = value.partition(":")
        if sep and scope.strip().lower() != token:
            continue
        for item in (rest if sep else value).split(","):
            d = item.strip().lower()
            if d in directives:
                return d
    return None


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), or None.

    RFC 9110 says delta-seconds are an integer, but servers also send `1.5`: a polite client
    waits that long rather than falling back to its own, shorter backoff.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


class Fetcher:
    """One aiohttp session per process, with the limits and the guard of the settings."""

    def __init__(
        self,
        cfg: DownloaderSettings,
        resolver: AbstractResolver | None = None,
        *,
        address_policy: AddressPolicy | None = None,
        hosts: HostBoard | None = None,
    ) -> None:
        self.cfg = cfg
        self._resolver = resolver
        self.hosts = hosts or HostBoard(cfg)  # the service passes one shared through Redis
        self.dns: CachingResolver | None = None
        self._policy = address_policy  # None: security.address_allowed (tests pass their own)
        self._session: aiohttp.ClientSession | None = None
        self._global = asyncio.Semaphore(cfg.concurrency)
        self._hosts: dict[str, list] = {}  # host -> [semaphore, users]
        self.in_flight = 0  # requests on the network now
        self.waiting = 0  # requests whose host is free, waiting for a global slot
        self.wire_bytes = 0  # bytes received since start

    @property
    def saturated(self) -> bool:
        """Every global slot is busy or spoken for: more rows would only queue. A slot is held
        by a request, or by a fetched body until its row is processed (`fetch_held`)."""
        return self.waiting > 0 or self._global.locked()

    async def __aenter__(self) -> Fetcher:
        cfg = self.cfg
        servers = parse_servers(cfg.dns_servers) if cfg.dns_servers.strip() else ()
        inner = self._resolver or AresResolver(servers, cfg.dns_timeout)
        self.dns = CachingResolver(inner, max_ttl=cfg.dns_cache_seconds, negative_s=cfg.dns_negative_seconds)
        connector = aiohttp.TCPConnector(
            limit=cfg.concurrency,
            limit_per_host=cfg.per_host,
            use_dns_cache=False,  # self.dns caches, with TTLs and failures
            resolver=self.dns if cfg.allow_private else GuardedResolver(self.dns, self._policy),
            socket_factory=None if cfg.allow_private else guarded_socket_factory(self._policy),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"},
            auto_decompress=False,  # inflated here, under the size cap
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=2**18,
        )
        await self.hosts.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hosts.close()
        if self._session is not None:
            await self._session.close()
        if self.dns is not None:
            await self.dns.close()  # a resolver passed in is not the connector's to close

    async def fetch(self, url: str | None) -> FetchResult:
        """The body of `url`, or a failure reason; never raises for anything the web does."""
        async with self.fetch_held(url) as result:
            return result

    @contextlib.asynccontextmanager
    async def fetch_held(self, url: str | None, result: FetchResult | None = None) -> AsyncIterator[FetchResult]:
        """`fetch`, keeping a successful row's global slot until the block ends. Pass `result`
        to watch the fetch while it runs (its `on_wire_since`: see downloader.stragglers)."""
        result = await self._fetch(url, result or FetchResult())
        if result.reason is not None:
            self.hosts.failed(_host(result.url), result.reason, result.detail)
        try:
            yield result
        finally:
            if result.holds_slot:
                result.holds_slot = False
                self._global.release()

    async def _fetch(self, url: str | None, result: FetchResult) -> FetchResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.total_timeout
        result.url = url or ""
        try:
            current = check_url(url or "", allow_private=self.cfg.allow_private, policy=self._policy)
        except InvalidURLError as e:
            return _failed(result, "invalid_url", str(e))
        except BlockedAddressError as e:
            return _failed(result, "blocked_address", e.why)
        hops, retries = 0, 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return _failed(result, "timeout", f"no answer within --total-timeout {self.cfg.total_timeout:g} s")
            result.attempts += 1
            try:
                nxt = await self._request(current, remaining, deadline, result)
            except _Final as e:
                return _failed(result, e.reason, e.detail)
            except _Retryable as e:
                # A paused host: the next try waits for (or is deferred past) the pause itself.
                paused = e.reason == "throttled" and self.hosts.backoff(current.raw_host or "")[0] > 0
                delay = 0.0 if paused else self._backoff(retries, e.retry_after)
                retries += 1
                if retries > self.cfg.retries or delay is None or loop.time() + delay >= deadline:
                    return _failed(result, e.reason, e.detail)
                await asyncio.sleep(delay)
                continue
            if nxt is None:
                return result
            hops += 1
            if hops > MAX_REDIRECTS:
                return _failed(result, "too_many_redirects", f"more than {MAX_REDIRECTS} redirects")
            try:
                current = check_url(nxt, allow_private=self.cfg.allow_private, policy=self._policy)
            except InvalidURLError as e:
                return _failed(result, "invalid_url", f"redirect to {str(nxt)[:200]}: {e}")
            except BlockedAddressError as e:
                return _failed(result, "blocked_address", f"redirect to {e.why}")
            result.url = str(current)

    def _backoff(self, retries: int, retry_after: float | None) -> float | None:
        """Seconds before the next try, or None when the server asks for longer than the cap."""
        if retry_after is not None:
            return retry_after if retry_after <= self.cfg.retry_after_cap else None
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retries)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _request(self, url: URL, remaining: float, deadline: float, result: FetchResult) -> URL | None:
        """One request: fills result.data, or returns the redirect target, or raises."""
        host = url.raw_host or ""
        await self._resolve_ahead(url)
        async with self._host_slot(host):
            await self._wait_for_host(host, deadline, result)
            await self._pace(host, deadline, result)
            self.waiting += 1
            try:
                await self._global.acquire()
            finally:
                self.waiting -= 1
            self.in_flight += 1
            started = asyncio.get_running_loop().time()
            if result.on_wire_since is None:
                result.on_wire_since = started
            try:
                return await self._exchange(url, remaining, result)
            except (_Final, _Retryable):
                raise
            except BlockedAddressError as e:
                raise _Final("blocked_address", e.why) from None
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:
                waited = asyncio.get_running_loop().time() - started
                raise _Retryable("timeout", f"timed out after {waited:.1f} s: {_which_timeout(e)}") from None
            except aiohttp.InvalidURL as e:
                raise _Final("invalid_url", f"malformed URL: {e}") from None
            except aiohttp.ClientConnectorDNSError as e:
                if (why := blocked_reason(e)) is not None:
                    raise _Final("blocked_address", why) from None
                if isinstance(e.os_error, DnsFailure):
                    raise _Final("dns_error", e.os_error.why) from None
                raise _Final("dns_error", f"cannot resolve {host}: {first_line(e.os_error, 200)}") from None
            except aiohttp.ClientSSLError as e:  # certificate or handshake: trying again changes nothing
                raise _Final("connect_error", f"TLS: {first_line(e, 200)}") from None
            except (aiohttp.ClientError, OSError) as e:
                if (why := blocked_reason(e)) is not None:
                    raise _Final("blocked_address", why) from None
                raise _Retryable("connect_error", _connect_why(e)) from None
            finally:
                self.in_flight -= 1
                if result.data is not None and not result.holds_slot:
                    result.holds_slot = True  # released by fetch_held once the body is processed
                else:
                    self._global.release()

    async def _exchange(self, url: URL, remaining: float, result: FetchResult) -> URL | None:
        assert self._session is not None, "use `async with Fetcher(cfg)`"
        timeout = aiohttp.ClientTimeout(
            total=remaining,
            sock_connect=self.cfg.connect_timeout,
            sock_read=self.cfg.read_timeout,
        )
        async with self._session.get(url, allow_redirects=False, timeout=timeout) as resp:
            status = resp.status
            if status in REDIRECT_STATUSES:
                location = resp.headers.get("Location")
                if not location:
                    raise _Final("http_status", f"HTTP {status} without a Location")
                try:
                    return url.join(URL(location))
                except (ValueError, TypeError) as e:
                    raise _Final("invalid_url", f"bad redirect Location: {e}") from None
            if status in THROTTLE_STATUSES:
                await self._throttled(url, status, retry_after_seconds(resp.headers.get("Retry-After")))
            if status in RETRY_STATUSES:
                raise _Retryable("http_status", f"HTTP {status}")
            if not 200 <= status < 300:
                raise _Final("http_status", f"HTTP {status}")
            directive = robots_opt_out(resp.headers.getall("X-Robots-Tag", ()), self.cfg.opt_out)
            if directive:
                resp.close()  # drop the connection: the body is never read
                raise _Final("opted_out", f"X-Robots-Tag: {directive}")
            self.hosts.ok(url.raw_host or "")
            result.data = await self._read_body(resp, result)
            return None

    async def _throttled(self, url: URL, status: int, wait: float | None) -> None:
        """A 429/503: tell the host board (it may pause the host for every worker), then retry
        (after the pause, or the Retry-After) or end the row when the wait is over the cap."""
        pause = await self.hosts.throttled(url.raw_host or "", status, wait)
        said = f"HTTP {status}" + (f", Retry-After {wait:g} s" if wait is not None else "")
        if wait is not None and wait > self.cfg.retry_after_cap:
            raise _Final("throttled", f"{said} exceeds --retry-after-cap {self.cfg.retry_after_cap:g}")
        if pause > 0:
            said += f"; host paused {pause:.0f} s"
        raise _Retryable("throttled", said, retry_after=wait)

    async def _resolve_ahead(self, url: URL) -> None:
        """Look the host up before taking any slot: a dead name fails here, costing no
        connection, and a queued row has its answer by the time it gets a slot. Raw IPs skip it."""
        host = url.raw_host or ""
        if self.dns is None or not host or parse_ip_host(host) is not None:
            return
        port = url.port or (443 if url.scheme == "https" else 80)
        try:  # the guard judges the answer once, when the connector asks for it (from the cache)
            await self.dns.resolve(host, port, socket.AF_UNSPEC)
        except DnsFailure as e:
            raise _Final("dns_error", e.why) from None

    async def _wait_for_host(self, host: str, deadline: float, result: FetchResult) -> None:
        """Wait out the host's backoff (holding only a slot of this host), or end the row as
        `throttled`: deferred when the wait is over `result.defer_s`, failed when past the deadline."""
        loop = asyncio.get_running_loop()
        while True:
            left, why = self.hosts.backoff(host)
            if left <= 0:
                return
            if result.defer_s is not None and left > result.defer_s:
                result.deferred = True
                raise _Final(
                    "throttled", f"deferred: host paused another {left:.0f} s ({why}); a retry part fetches it again"
                )
            if loop.time() + left >= deadline:
                raise _Final("throttled", f"host paused another {left:.0f} s ({why}), past --total-timeout")
            await asyncio.sleep(left)

    async def _pace(self, host: str, deadline: float, result: FetchResult) -> None:
        """Wait for the host's turn under --per-host-rate, or under the rate it was learned to
        take since it throttled. The learned rate's wait is bounded like a pause: past
        `result.defer_s` the row is deferred, past the deadline it ends as `throttled`."""
        learned = self.hosts.learned_rate(host)
        if learned is None:
            await self.hosts.pace(host)
            return
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        defer = result.defer_s is not None and result.defer_s < left
        try:
            await asyncio.wait_for(self.hosts.pace(host), max(0.0, result.defer_s if defer else left))
        except asyncio.TimeoutError:
            paced = f"host paced at {learned:.2g} requests/s since it throttled"
            if defer:
                result.deferred = True
                raise _Final("throttled", f"deferred: {paced}; a retry part fetches it again") from None
            raise _Final("throttled", f"{paced}, its turn past --total-timeout") from None

    async def _read_body(self, resp: aiohttp.ClientResponse, result: FetchResult) -> bytes:
        cap = self.cfg.max_bytes
        if resp.content_length is not None and resp.content_length > cap:
            resp.close()
            raise _Final("too_large", f"Content-Length {resp.content_length} > --max-bytes {cap}")
        inflater = _inflater(resp.headers.get("Content-Encoding", ""))
        body = bytearray()
        async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
            result.wire_bytes += len(chunk)
            self.wire_bytes += len(chunk)
            if inflater is None:
                body += chunk
            else:
                inflater.feed(body, chunk, cap)
            if len(body) > cap:
                resp.close()
                raise _Final("too_large", f"body exceeds --max-bytes {cap}")
        if inflater is not None:
            inflater.finish(body, cap)
            if len(body) > cap:
                raise _Final("too_large", f"body exceeds --max-bytes {cap}")
        return bytes(body)

    def _host_slot(self, host: str) -> _HostSlot:
        return _HostSlot(self._hosts, host, self.cfg.per_host)


class _HostSlot:
    """`async with`: one of --per-host slots for a host; forgets idle hosts so the table stays small."""

    def __init__(self, table: dict[str, list], host: str, size: int) -> None:
        self.table, self.host, self.size = table, host, size

    async def __aenter__(self) -> None:
        entry = self.table.setdefault(self.host, [asyncio.Semaphore(self.size), 0])
        entry[1] += 1
        try:
            await entry[0].acquire()
        except BaseException:
            self._leave(entry)
            raise

    async def __aexit__(self, *exc: object) -> None:
        entry = self.table[self.host]
        entry[0].release()
        self._leave(entry)

    def _leave(self, entry: list) -> None:
        entry[1] -= 1
        if entry[1] == 0:
            del self.table[self.host]


class _Inflater:
    """gzip/deflate decoding that never produces more than the cap (+1 byte) in all.

    zlib's max_length bounds each step's output, so a tiny body that inflates to gigabytes
    costs at most cap bytes of memory; a multi-member gzip body is decoded member by member.
    """

    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=47)  # 32 + 15: a zlib or gzip header, detected

    def feed(self, body: bytearray, chunk: bytes, cap: int) -> None:
        data = chunk
        try:
            while data and len(body) <= cap:
                body += self._z.decompress(data, cap + 1 - len(body))
                data = self._z.unconsumed_tail
                if self._z.eof:
                    data, self._z = self._z.unused_data + data, zlib.decompressobj(wbits=47)
        except zlib.error as e:
            raise _Final("not_an_image", f"corrupt compressed body: {e}") from None

    def finish(self, body: bytearray, cap: int) -> None:
        body += self._z.flush()[: cap + 1 - len(body)]


def _inflater(encoding: str) -> _Inflater | None:
    if encoding.strip().lower() in ("gzip", "x-gzip", "deflate"):
        return _Inflater()
    return None  # identity, or an encoding we did not ask for: the image check judges the bytes


def _which_timeout(e: BaseException) -> str:
    """Which limit ran out: aiohttp names the connect and read timeouts; a bare TimeoutError
    is the row's --total-timeout budget."""
    text = first_line(e, default="").lower()
    if "connect" in text:
        return "no connection within --connect-timeout"
    if "read" in text:
        return "no data within --read-timeout"
    return "--total-timeout reached"


def _connect_why(e: BaseException) -> str:
    """A connection error's detail, naming refused and unreachable first."""
    os_error = getattr(e, "os_error", None) or e
    errno_ = getattr(os_error, "errno", None)
    kind = {111: "refused", 113: "host unreachable", 101: "network unreachable", 104: "reset"}.get(errno_ or 0)
    text = f"{type(e).__name__}: {first_line(e, 200)}"
    return f"{kind}: {text}" if kind else text


def _host(url: str) -> str:
    try:
        return URL(url).raw_host or ""
    except (ValueError, TypeError):
        return ""


def _failed(result: FetchResult, reason: str, detail: str) -> FetchResult:
    result.data, result.reason, result.detail = None, reason, detail[:300]
    return result
