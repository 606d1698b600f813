"""The fetcher's resolver without a network: --dns-servers parsing, the caches, shared lookups."""

from __future__ import annotations

import asyncio
import socket

import pytest

from streamcap.common.settings import ConfigError
from streamcap.downloader.config import DownloaderSettings, parse_servers
from streamcap.downloader.dns import MIN_TTL_S, CachingResolver, DnsFailure
from streamcap.downloader.hosts import HostBoard
from streamcap.formats.records import FailedRow
from streamcap.shardwriter.retry import is_transient


class Scripted:
    """A resolver that answers after `delay` s, counting lookups; names in `fail` raise DnsFailure."""

    def __init__(self, fail: dict[str, str] | None = None, delay: float = 0.05, ttl: float = 60.0) -> None:
        self.fail, self.delay, self.ttl = fail or {}, delay, ttl
        self.lookups: list[str] = []

    async def lookup(self, host: str, port: int = 0, family: int = socket.AF_INET):
        self.lookups.append(host)
        await asyncio.sleep(self.delay)
        if host in self.fail:
            raise DnsFailure(self.fail[host])
        answer = {"hostname": host, "host": "192.0.2.7", "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}
        return [answer], self.ttl

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "text, servers",
    [
        ("127.0.0.1", ("127.0.0.1:53",)),
        ("127.0.0.1:5353, 10.0.0.2", ("127.0.0.1:5353", "10.0.0.2:53")),
        ("[::1]:5353,::1", ("[::1]:5353", "[::1]:53")),
    ],
)
def test_dns_servers_are_ip_and_port(text, servers):
    assert parse_servers(text) == servers


@pytest.mark.parametrize("value", ["nonsense", "1.2.3.4:0", "1.2.3.4:70000", "dns.google:53", "[::1", ","])
def test_a_bad_dns_server_is_one_line_naming_the_setting(value):
    with pytest.raises(ConfigError) as e:
        DownloaderSettings(dns_servers=value)
    assert str(e.value).startswith("--dns-servers / STREAMCAP_DNS_SERVERS: expected IP[:PORT]")
    assert "\n" not in str(e.value)


async def test_rows_of_one_name_share_one_lookup():
    inner = Scripted()
    dns = CachingResolver(inner)
    answers = await asyncio.gather(*[dns.resolve("cats.example", 443, socket.AF_UNSPEC) for _ in range(200)])
    assert inner.lookups == ["cats.example"] and all(a[0]["host"] == "192.0.2.7" for a in answers)
    await dns.resolve("cats.example", 443, socket.AF_UNSPEC)
    assert inner.lookups == ["cats.example"] and dns.hits >= 1  # the TTL holds


async def test_a_dead_name_is_looked_up_once_per_negative_ttl_whatever_its_rows():
    inner = Scripted(fail={"gone.example": "NXDOMAIN", "silent.example": "no answer within --dns-timeout 3 s"})
    dns = CachingResolver(inner, negative_s=0.5)
    for name, why in (("gone.example", "NXDOMAIN"), ("silent.example", "no answer within --dns-timeout 3 s")):
        results = await asyncio.gather(*[dns.resolve(name, 80) for _ in range(100)], return_exceptions=True)
        results += [await asyncio.gather(dns.resolve(name, 443), return_exceptions=True) for _ in range(20)]
        flat = [x[0] if isinstance(x, list) else x for x in results]
        assert all(isinstance(e, DnsFailure) and e.why == why for e in flat)
        assert inner.lookups.count(name) == 1
    await asyncio.sleep(0.6)  # the negative TTL has passed: one new lookup
    await asyncio.gather(*[dns.resolve("gone.example", 80) for _ in range(10)], return_exceptions=True)
    assert inner.lookups.count("gone.example") == 2


async def test_a_row_cancelled_while_waiting_leaves_the_lookup_to_the_others():
    inner = Scripted(delay=0.2)
    dns = CachingResolver(inner)
    first = asyncio.ensure_future(dns.resolve("slow.example", 80))
    second = asyncio.ensure_future(dns.resolve("slow.example", 80))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await second)[0]["host"] == "192.0.2.7" and inner.lookups == ["slow.example"]


async def test_ttls_are_kept_within_the_floor_and_the_cap():
    inner = Scripted(ttl=0)
    dns = CachingResolver(inner, max_ttl=MIN_TTL_S * 4)
    await dns.resolve("zero.example", 80)
    key = ("zero.example", 80, socket.AF_INET)
    loop = asyncio.get_running_loop()
    assert dns._answers[key][0] - loop.time() == pytest.approx(MIN_TTL_S, abs=0.5)
    inner.ttl = 86400
    await dns.resolve("long.example", 80)
    assert dns._answers[("long.example", 80, socket.AF_INET)][0] - loop.time() <= MIN_TTL_S * 4


async def test_a_process_alone_pauses_a_host_after_a_retry_after_or_a_second_429():
    board = HostBoard(DownloaderSettings(host_backoff_cap=10))
    assert await board.throttled("a.example", 429, None) == 0  # one 429 without Retry-After: the row's own backoff
    assert await board.throttled("a.example", 429, None) == 2  # the second in a row: the host, 1 s doubled
    assert board.backoff("a.example")[0] > 1.5 and "HTTP 429" in board.backoff("a.example")[1]
    assert await board.throttled("b.example", 503, 60) == 10  # a Retry-After, within --host-backoff-cap
    assert board.backoff("c.example") == (0.0, "")


@pytest.mark.parametrize(
    "reason, detail, transient",
    [
        ("throttled", "HTTP 429, Retry-After 30 s exceeds --retry-after-cap 20", True),
        ("dns_error", "no answer within --dns-timeout 3 s", True),
        ("dns_error", "SERVFAIL", True),
        ("dns_error", "NXDOMAIN", False),
        ("http_status", "HTTP 429", True),
        ("http_status", "HTTP 404", False),
    ],
)
def test_parts_retry_brings_back_what_a_later_try_may_not_repeat(reason, detail, transient):
    assert is_transient(FailedRow(row=1, url="http://x.example/a.jpg", reason=reason, detail=detail)) is transient
