"""The fetcher against real HTTP servers on loopback addresses: retries, caps, timeouts, guard.

The address guard refuses every loopback address, so tests that need a reachable "public"
host let 127.0.0.1 play one (their own address policy); the refused targets listen on
127.0.0.2 and their access logs prove that nothing reached them.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.fetch import Fetcher
from tests.support.addresses import MapResolver, loopback_one_is_public
from tests.support.http import ImageServer
from tests.support.images import jpeg_bytes
from tests.support.pipeline import wait_until

CAT = jpeg_bytes(320, 240)


def settings(**overrides) -> DownloaderSettings:
    values = dict(
        allow_private=True,
        total_timeout=5.0,
        connect_timeout=2.0,
        read_timeout=2.0,
        retries=2,
        concurrency=32,
        per_host=32,
    )
    return DownloaderSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        s.images["cat.jpg"] = CAT
        yield s


@pytest.fixture(scope="module")
def private_server():
    """The target every refused request would reach: nothing may ever arrive here."""
    with ImageServer(hosts=("127.0.0.2",)) as s:
        s.images["cat.jpg"] = CAT
        yield s


async def fetch(url: str, cfg: DownloaderSettings | None = None, **kwargs):
    async with Fetcher(cfg or settings(), **kwargs) as fetcher:
        return await fetcher.fetch(url)


async def test_an_image_arrives_with_a_user_agent_naming_the_tool(server):
    result = await fetch(server.url("/img/cat.jpg"))
    assert result.data == CAT and result.reason is None
    assert "streamcap" in server.requests_to("/img/cat.jpg")[-1].headers["user-agent"]


async def test_a_404_fails_at_once(server):
    result = await fetch(server.url("/status/404"))
    assert (result.reason, result.attempts) == ("http_status", 1)
    assert len(server.requests_to("/status/404")) == 1


async def test_503_then_200_is_retried(server):
    result = await fetch(server.url("/busy/cat.jpg?status=503"))
    assert result.data == CAT and result.attempts == 2


async def test_a_500_is_retried_then_recorded(server):
    result = await fetch(server.url("/status/500"), settings(retries=2))
    assert result.reason == "http_status" and result.attempts == 3
    assert len(server.requests_to("/status/500")) == 3


async def test_retry_after_is_honoured(server):
    result = await fetch(server.url("/busy/cat.jpg?after=1"))
    assert result.data == CAT
    first, second = server.requests_to("/busy/cat.jpg?after=1")
    assert second.t - first.t >= 0.95  # waited as asked, not the ~0.5 s backoff


async def test_retry_after_beyond_the_cap_ends_the_row(server):
    result = await fetch(server.url("/busy/cat.jpg?after=30"), settings(retry_after_cap=2))
    assert result.reason == "throttled" and "Retry-After" in result.detail
    assert len(server.requests_to("/busy/cat.jpg?after=30")) == 1


@pytest.mark.parametrize("path", ["/hang", "/drip"])
async def test_a_server_that_never_finishes_hits_the_total_timeout(server, path):
    result = await fetch(server.url(path), settings(total_timeout=1.5, read_timeout=1.0, connect_timeout=1.0))
    assert result.reason == "timeout"


async def test_a_refused_connection_is_a_connect_error(server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await fetch(f"http://127.0.0.1:{port}/x.jpg", settings(retries=1))
    assert result.reason == "connect_error" and result.attempts == 2


async def test_a_body_cut_short_is_a_connect_error(server):
    result = await fetch(server.url("/truncated"), settings(retries=0))
    assert result.reason == "connect_error"


async def test_content_length_over_the_cap_is_refused_unread(server):
    result = await fetch(server.url("/huge-length"), settings(max_bytes=1_000_000))
    assert result.reason == "too_large" and "Content-Length" in result.detail
    assert result.wire_bytes == 0


async def test_an_endless_chunked_body_stops_at_the_cap(server):
    cap = 1_000_000
    result = await fetch(server.url("/endless"), settings(max_bytes=cap))
    assert result.reason == "too_large"
    assert cap < result.wire_bytes <= cap + 64 * 1024


async def test_a_gzip_bomb_stops_at_the_cap_of_decoded_bytes(server):
    result = await fetch(server.url("/gzip-bomb"), settings(max_bytes=2_000_000))
    assert result.reason == "too_large"
    assert result.wire_bytes < 200_000  # a few KB of gzip inflated past the cap; the rest never read


async def test_three_redirects_are_followed_and_the_fourth_is_refused(server):
    ok = await fetch(server.url("/redirect/3/cat.jpg"))
    assert ok.data == CAT and ok.url.endswith("/img/cat.jpg")
    too_many = await fetch(server.url("/redirect/4/cat.jpg"))
    assert too_many.reason == "too_many_redirects"


@pytest.mark.parametrize(
    "target, reason",
    [
        ("http://127.0.0.2:{port}/img/cat.jpg", "blocked_address"),
        ("http://2130706434:{port}/img/cat.jpg", "blocked_address"),  # 127.0.0.2 as an integer
        ("http://redis:6379/", "blocked_address"),  # compose's Redis, resolved
        ("file:///etc/passwd", "invalid_url"),
    ],
)
async def test_redirects_are_checked_at_every_hop(server, private_server, target, reason):
    target = target.format(port=private_server.port)
    resolver = MapResolver({"redis": [["10.0.0.5"]]})
    url = server.url("/to?url=" + target)
    result = await fetch(url, settings(allow_private=False), resolver=resolver, address_policy=loopback_one_is_public)
    assert result.reason == reason
    assert server.requests_to("/to")  # the first hop was made ...
    assert private_server.requests == []  # ... the refused one never


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.2",
        "[::1]",
        "169.254.169.254",
        "10.0.0.1",
        "[fd00::1]",
        "[::ffff:127.0.0.2]",
        "2130706434",
        "0x7f000002",
        "0177.0.0.2",
        "127.2",
        "0x7f.0.0.2",
        "[::ffff:7f00:2]",
        "224.0.0.1",
        "0.0.0.0",
    ],
)
async def test_raw_ip_hosts_in_any_notation_are_refused_without_a_connection(private_server, host):
    result = await fetch(f"http://{host}:{private_server.port}/img/cat.jpg", settings(allow_private=False))
    assert result.reason == "blocked_address", result.detail
    assert private_server.requests == []


async def test_a_name_resolving_to_a_private_address_is_refused_unless_allowed(server):
    url = f"http://localhost:{server.port}/img/cat.jpg"
    before = len(server.requests_to("/img/cat.jpg"))
    refused = await fetch(url, settings(allow_private=False))
    assert refused.reason == "blocked_address" and "loopback" in refused.detail
    assert len(server.requests_to("/img/cat.jpg")) == before
    allowed = await fetch(url, settings(allow_private=True))
    assert allowed.data == CAT


async def test_dns_rebinding_cannot_reach_a_private_address(server, private_server):
    # The first lookup answers the "public" address, the second a private one.
    resolver = MapResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    cfg = settings(allow_private=False)
    first = await fetch(
        f"http://rebind.test:{server.port}/img/cat.jpg", cfg, resolver=resolver, address_policy=loopback_one_is_public
    )
    second = await fetch(
        f"http://rebind.test:{private_server.port}/img/cat.jpg",
        cfg,
        resolver=resolver,
        address_policy=loopback_one_is_public,
    )
    assert first.data == CAT
    assert second.reason == "blocked_address"
    assert resolver.lookups == ["rebind.test", "rebind.test"]
    assert private_server.requests == []


async def test_an_unresolvable_name_is_a_dns_error(server):
    result = await fetch("http://nowhere.test/x.jpg", settings(allow_private=False), resolver=MapResolver({}))
    assert result.reason == "dns_error" and result.attempts == 1


@pytest.mark.parametrize("url", ["", "   ", "not a url", "ftp://example.com/x.jpg", "http://", "javascript:alert(1)"])
async def test_urls_that_are_not_http_are_invalid(url):
    assert (await fetch(url)).reason == "invalid_url"


@pytest.mark.parametrize(
    "tag, skipped",
    [
        ("noai", True),
        ("NoImageAI", True),
        (" nofollow , noindex ", True),
        ("streamcap: noimageai", True),
        ("otherbot: noai", False),
        ("nofollow", False),
    ],
)
async def test_x_robots_tag_opt_out_skips_without_reading_the_body(server, tag, skipped):
    result = await fetch(server.url(f"/robots/cat.jpg?tag={tag}"))
    request = server.requests_to("/robots/cat.jpg")[-1]
    if skipped:
        assert result.reason == "opted_out"
        # The server holds the body back until the client hangs up (or a grace period ends).
        wait_until(lambda: request.hung_up or request.body_sent, 10, "the client to hang up or the body to go out")
        assert request.body_sent == 0
    else:
        assert result.data == CAT


async def test_one_host_never_gets_more_connections_than_the_per_host_cap(server):
    cfg = settings(concurrency=32, per_host=4)
    async with Fetcher(cfg) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(server.url(f"/img/cat.jpg?delay=0.1&i={i}")) for i in range(24)))
    assert all(r.data == CAT for r in results)
    assert server.max_active_by_route["/img"] == 4
    assert all("streamcap" in entry.headers["user-agent"] for entry in server.requests_to("/img/cat.jpg?delay=0.1"))
