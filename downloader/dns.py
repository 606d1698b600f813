"""Name lookups for the fetcher: asynchronous (c-ares), cached both ways, shared, bounded in time.

    resolver = CachingResolver(AresResolver(servers=parse_servers("127.0.0.1:5353"), timeout=3.0), negative_s=60)
    answers = await resolver.resolve("example.com", 443)      # aiohttp's ResolveResult dicts
    ...                                                        # or DnsFailure(why) for every row of a dead name

Web datasets name millions of hosts, a good share of them dead. glibc's getaddrinfo in threads
(aiohttp's ThreadedResolver) holds a thread for the whole timeout of a name that never answers,
and looks a dead name up again for each of its rows. Here:

- `AresResolver` asks c-ares (through aiodns) on the event loop: thousands of lookups in flight
  cost no threads. Its servers are `--dns-servers` or, by default, the system's (resolv.conf);
  a lookup gets `--dns-timeout` seconds in all, retransmissions included.
- `CachingResolver` wraps any resolver. It keeps answers for their TTL (at least MIN_TTL_S, at
  most `--dns-cache-seconds`) and failures for `--dns-negative-seconds`: once a name is
  NXDOMAIN, SERVFAIL or silent, its other rows fail at once with the same `DnsFailure` and no
  lookup. Concurrent lookups of one name share one query, and a row that is cancelled while it
  waits does not cancel the query for the others.

The address guard (downloader.security.GuardedResolver) wraps this resolver, so every cached
answer is still checked, and the connector's socket factory checks what is actually dialled.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections import OrderedDict
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from streamcap.common.logs import first_line

# Answers with a TTL of 0 or 1 s would send a lookup per connection: keep them this long at least.
MIN_TTL_S = 5.0
# Names remembered, answers and failures each; the least recently used go first.
CACHE_ENTRIES = 100_000
# Lookups on the wire at once per process: a burst of new names cannot flood the DNS server.
LOOKUPS_IN_FLIGHT = 256
# c-ares retransmits within the lookup's time (its timeouts adapt to the server's latency, so
# one try alone would give up on an answer slower than the usual ones); the --dns-timeout
# deadline, not the tries, ends a lookup.
ARES_TRIES = 4
NXDOMAIN = "NXDOMAIN"
SERVFAIL = "SERVFAIL"


class DnsFailure(OSError):
    """A name did not resolve; `why` is the one line a row records after `dns_error`."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class AresResolver(AbstractResolver):
    """aiohttp resolver on c-ares; `lookup` also says how long the answer may be kept."""

    def __init__(self, servers: tuple[str, ...] = (), timeout: float = 3.0) -> None:
        self.servers, self.timeout = servers, timeout
        self._channel: Any = None  # aiodns.DNSResolver, made on the running loop

    def _resolver(self) -> Any:
        if self._channel is None:
            import aiodns

            self._channel = aiodns.DNSResolver(
                nameservers=list(self.servers) or None, timeout=self.timeout, tries=ARES_TRIES
            )
        return self._channel

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        answers, _ = await self.lookup(host, port, family)
        return answers

    async def lookup(self, host: str, port: int = 0, family: int = socket.AF_INET) -> tuple[list[ResolveResult], float]:
        """(answers, TTL in seconds); DnsFailure when the name has no address."""
        import aiodns

        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            reply = await asyncio.wait_for(
                self._resolver().getaddrinfo(host, family=family, port=port, type=socket.SOCK_STREAM),
                self.timeout,
            )
        except asyncio.TimeoutError:
            raise DnsFailure(no_answer(self.timeout)) from None
        except aiodns.error.DNSError as e:
            raise DnsFailure(_ares_why(e, self.timeout, loop.time() - started)) from None
        answers = [_answer(host, node) for node in reply.nodes if node.family in (socket.AF_INET, socket.AF_INET6)]
        if not answers:
            raise DnsFailure("no address records")
        return answers, float(min(node.ttl for node in reply.nodes))

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


class CachingResolver(AbstractResolver):
    """Answers kept for their TTL, failures for `negative_s`, one query per name at a time."""

    def __init__(self, inner: AbstractResolver, *, max_ttl: float = 300.0, negative_s: float = 60.0) -> None:
        self.inner, self.max_ttl, self.negative_s = inner, max_ttl, negative_s
        # Answers are keyed like aiohttp's own cache, (host, port, family): the port is in them.
        self._answers: OrderedDict[tuple, tuple[float, list[ResolveResult]]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._pending: dict[tuple, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)
        self.lookups = 0  # queries made (not answered from the cache)
        self.hits = 0  # answers and failures served from the cache

    def failure(self, host: str) -> str | None:
        """Why `host` is known not to resolve now (the negative cache), or None."""
        entry = self._failures.get(host.lower())
        if entry is None:
            return None
        if entry[0] <= asyncio.get_running_loop().time():
            del self._failures[host.lower()]
            return None
        return entry[1]

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        name = host.lower()
        if (why := self.failure(name)) is not None:
            self.hits += 1
            raise DnsFailure(why)
        key = (name, port, family)
        now = asyncio.get_running_loop().time()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            self._answers.move_to_end(key)
            self.hits += 1
            return cached[1]
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = asyncio.ensure_future(self._lookup(key, host))
            task.add_done_callback(lambda t: self._finished(key, t))
        # shield: one waiter cancelled (its row deferred or its part lost) leaves the query to the rest
        return await asyncio.shield(task)

    async def _lookup(self, key: tuple, host: str) -> list[ResolveResult]:
        name, port, family = key
        async with self._slots:
            self.lookups += 1
            try:
                lookup = getattr(self.inner, "lookup", None)
                if lookup is not None:
                    answers, ttl = await lookup(host, port, family)
                else:  # a resolver that does not tell TTLs (aiohttp's, a test's): the cap
                    answers, ttl = await self.inner.resolve(host, port, family), self.max_ttl
            except DnsFailure as e:
                self._remember_failure(name, e.why)
                raise
            except asyncio.CancelledError:
                raise
            except OSError as e:
                why = _os_why(e)
                self._remember_failure(name, why)
                raise DnsFailure(why) from None
        keep = min(self.max_ttl, max(MIN_TTL_S, ttl))
        _put(self._answers, key, (asyncio.get_running_loop().time() + keep, answers))
        return answers

    def _finished(self, key: tuple, task: asyncio.Task) -> None:
        self._pending.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have left (cancelled rows)

    def _remember_failure(self, name: str, why: str) -> None:
        if self.negative_s > 0:
            _put(self._failures, name, (asyncio.get_running_loop().time() + self.negative_s, why))

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        await self.inner.close()


def no_answer(timeout: float) -> str:
    return f"no answer within --dns-timeout {timeout:g} s"


def _answer(host: str, node: Any) -> ResolveResult:
    address = node.addr
    ip = address[0].decode("ascii") if isinstance(address[0], bytes) else str(address[0])
    if node.family == socket.AF_INET6 and len(address) > 3 and address[3]:
        ip = f"{ip}%{address[3]}"  # a link-local scope; the guard refuses link-local anyway
    return ResolveResult(
        hostname=host,
        host=ip,
        port=address[1],
        family=node.family,
        proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )


def _ares_why(e: Any, timeout: float, waited: float) -> str:
    import pycares

    code = e.args[0] if e.args else None
    if code == pycares.errno.ARES_ENOTFOUND:
        return NXDOMAIN
    if code == pycares.errno.ARES_ESERVFAIL:
        return SERVFAIL
    if code == pycares.errno.ARES_ENODATA:
        return "no address records"
    if code == pycares.errno.ARES_ETIMEOUT:
        # c-ares may give up before the deadline once its tries are spent
        return no_answer(timeout) if waited >= timeout * 0.9 else f"no answer after {math.ceil(waited * 10) / 10:g} s"
    if code == pycares.errno.ARES_ECONNREFUSED:
        return "the DNS server refused the query"
    if code == pycares.errno.ARES_EREFUSED:
        return "REFUSED"
    return first_line(e.args[1] if len(e.args) > 1 else e, 200)


def _os_why(e: OSError) -> str:
    """A failure of getaddrinfo (aiohttp's ThreadedResolver, a test's resolver) in DNS terms."""
    if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
        return NXDOMAIN
    if e.errno == socket.EAI_AGAIN:
        return "temporary failure (SERVFAIL or no answer)"
    return first_line(e.strerror or e, 200)


def _put(table: OrderedDict, key: Any, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > CACHE_ENTRIES:
        table.popitem(last=False)
