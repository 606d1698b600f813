"""Attacks on the network around the downloader (docs/testing.md, attacks 12-14): nobody let in.

A URL list is written by strangers. Each test below runs the real download service against
real loopback servers whose every accepted TCP connection is logged, and proves from those
logs that a refused address is never dialled: not as a raw IP in any notation, not as the
target of a redirect hop, not through a DNS answer that changes under the guard's feet. Every
test ends with the accounting check.

Case 12 runs `streamcap download` exactly as shipped (no --allow-private). Cases 13 and 14 need
one reachable "public" host, so they run the service's Worker in this process with the test
hooks the downloader offers (`address_policy`: 127.0.0.1 plays a public host while every other
loopback and private address is judged as in production; `resolver`: DNS as the test says).
"""

from __future__ import annotations

import socket
from urllib.parse import quote

from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.service import Worker
from tests.support.addresses import MapResolver, loopback_one_is_public
from tests.support.fleet import download
from tests.support.http import ImageServer
from tests.support.images import jpeg_bytes
from tests.support.pipeline import enqueue_rows, final_audit, outcomes, worker_settings

TRAPS = ("127.0.0.2", "::1")  # addresses the server also listens on, which nothing may reach


def trap_connections(server: ImageServer) -> list:
    """Connections accepted on any address but the one that plays the public host."""
    return [c for c in server.connections if c.local[0] != "127.0.0.1"]


# --- attack 12: raw addresses in every spelling ----------------------------------------------------

REFUSED_HOSTS = [
    "127.0.0.2",
    "[::1]",
    "169.254.169.254",
    "10.0.0.1",
    "[fd00::1]",
    "[::ffff:127.0.0.2]",
    "2130706433",
    "0x7f000001",  # loopback as one integer, in hex
    "0177.0.0.1",
    "127.1",
    "0x7f.1",
    "017700000001",
    "127.000.000.001",
    "0x7F.0.0.1",  # octal, short forms
    "[0:0:0:0:0:ffff:7f00:1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:0:0:1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    "[::1%25lo]",
    "127.0.0.1.",
    "0",
    "0.0.0.0",
    "[::]",  # zone id, trailing dot, "this host"
    "100.64.0.1",
    "192.168.1.1",
    "172.16.0.1",
    "[fe80::1%25eth0]",
    "224.0.0.1",
    "255.255.255.255",
    "localhost",
    "LOCALHOST",  # names: refused after the lookup
    "１２７.０.０.１",
    "127。0。0。1",
    "①②⑦.0.0.1",  # IDNA maps these digits and dots to ASCII
    "user@127.0.0.2",
    "public.example@127.0.0.2",  # what precedes @ is a user name, not the host
]


def test_private_and_loopback_hosts_in_any_notation_are_never_dialled(r, keys, redis_url, tmp_path):
    with ImageServer(hosts=("127.0.0.1", *TRAPS)) as server:
        server.images["a.jpg"] = jpeg_bytes()
        urls = [f"http://{host}:{server.port}/img/a.jpg" for host in REFUSED_HOSTS]
        urls.append("http://169.254.169.254/latest/meta-data/iam/security-credentials/")  # the cloud metadata URL
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, urls, part_size=8)
        ran = download(redis_url, keys, shard_dir, tmp_path / "download.log", "--total-timeout", "5", "--retries", "0")
        assert ran.returncode == 0, ran.log
        assert server.connections == []  # not one TCP connection, on any of the addresses
    # Addresses this machine does not have (10.0.0.1, fd00::1, ...) have no server to log them:
    # there, `blocked_address` itself is the proof, as the guard refuses before connect() and
    # a dialled row would end as connect_error or timeout instead.
    rows = outcomes(shard_dir)
    assert len(rows) == len(urls)
    wrong = {urls[row]: outcome for row, outcome in rows.items() if outcome[0] != "blocked_address"}
    assert wrong == {}
    assert "loopback address 127.0.0.1" in rows[REFUSED_HOSTS.index("2130706433")][1]
    assert "link-local address 169.254.169.254" in rows[len(urls) - 1][1]
    assert final_audit(r, keys, shard_dir).failures_by_reason == {"blocked_address": len(urls)}


# --- attack 13: redirects checked at every hop -----------------------------------------------------


def settings(redis_url: str, keys, shard_dir, **overrides) -> DownloaderSettings:
    defaults = dict(total_timeout=5.0, connect_timeout=2.0, read_timeout=2.0, allow_private=False)
    return worker_settings(redis_url, keys, shard_dir, **{**defaults, **overrides})


async def test_redirects_to_refused_places_are_blocked_at_the_hop(r, keys, redis_url, tmp_path):
    with ImageServer(hosts=("127.0.0.1", *TRAPS)) as server:
        server.images["a.jpg"] = jpeg_bytes()
        port = server.port
        trap = f"127.0.0.2:{port}"
        targets = {  # redirect target -> the reason its row must end with
            f"http://{trap}/img/a.jpg": "blocked_address",
            f"http://[::1]:{port}/img/a.jpg": "blocked_address",
            f"http://[::ffff:127.0.0.2]:{port}/img/a.jpg": "blocked_address",
            f"http://2130706434:{port}/img/a.jpg": "blocked_address",  # 127.0.0.2 as an integer
            f"//{trap}/img/a.jpg": "blocked_address",  # scheme-relative Location
            "http://169.254.169.254/latest/meta-data/": "blocked_address",
            "http://10.0.0.1/admin": "blocked_address",
            "http://redis:6379/": "blocked_address",  # compose's Redis, by name
            f"http://redis:{port}/img/a.jpg": "blocked_address",  # the same name, a listening port
            "file:///etc/passwd": "invalid_url",
            f"gopher://{trap}/_SET%20pwned%201": "invalid_url",
            server.url("/img/a.jpg").replace("127.0.0.1", "public.test"): "sample",  # control: public is fine
        }
        urls = [redirect(server, target) for target in targets]
        urls += [redirect(server, f"http://{trap}/img/a.jpg", status) for status in (301, 303, 307, 308)]
        urls.append(redirect(server, redirect(server, f"http://{trap}/img/a.jpg")))  # public, public, then private
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, urls, part_size=6)
        resolver = MapResolver({"redis": [["127.0.0.2"]], "public.test": [["127.0.0.1"]]})
        cfg = settings(redis_url, keys, shard_dir)
        assert await Worker(cfg, r, resolver=resolver, address_policy=loopback_one_is_public).serve() == 0
        assert trap_connections(server) == []
        first_hops = server.requests_to("/to")
    rows = outcomes(shard_dir)
    expected = list(targets.values()) + ["blocked_address"] * 5
    assert [rows[i][0] for i in range(len(urls))] == expected
    assert rows[0][1] == "redirect to loopback address 127.0.0.2"  # refused before any lookup
    assert rows[7][1] == "redis resolves to loopback address 127.0.0.2"  # refused at the lookup
    assert len(first_hops) == len(urls) + 1  # every first hop was made (and the chain's second one)
    report = final_audit(r, keys, shard_dir)
    assert report.samples == 1 and report.failures_by_reason == {"blocked_address": len(urls) - 3, "invalid_url": 2}


def redirect(server: ImageServer, target: str, status: int = 302) -> str:
    """A URL on the public host that redirects to `target`."""
    return server.url(f"/to?status={status}&url={quote(target, safe='')}")


# --- attack 14: DNS rebinding ----------------------------------------------------------------------


class _Rebinding(dict):
    """One DNS answer that reads as `first` once and as `then` ever after: the address a
    check judges is not the one later dialled (the time-of-check/time-of-use gap DNS
    rebinding exploits). Only a check on the address actually dialled can see it."""

    def __init__(self, answer: dict, first: str, then: str) -> None:
        super().__init__(answer)
        self._first, self._then, self._reads = first, then, 0

    def __getitem__(self, key: str):
        if key != "host":
            return super().__getitem__(key)
        self._reads += 1
        return self._first if self._reads == 1 else self._then


class RebindingResolver(MapResolver):
    """`rebind.test` answers the public address to the first lookup and loopback to every later
    one; `flip.test` answers an address that turns into loopback between check and connect;
    `mixed.test` answers both at once (a client falling back from the first would reach the second)."""

    def __init__(self) -> None:
        super().__init__(
            {
                "rebind.test": [["127.0.0.1"], ["127.0.0.2"]],
                "flip.test": [["127.0.0.1"]],
                "mixed.test": [["127.0.0.1", "127.0.0.2"]],
            }
        )

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        answers = await super().resolve(host, port, family)
        if host == "flip.test":
            return [_Rebinding(a, first="127.0.0.1", then="127.0.0.2") for a in answers]
        return answers


async def test_dns_rebinding_is_blocked_on_the_address_actually_dialled(r, keys, redis_url, tmp_path):
    with ImageServer(hosts=("127.0.0.1", *TRAPS)) as public, ImageServer(hosts=("127.0.0.2",)) as other:
        public.images["a.jpg"] = jpeg_bytes()
        urls = [
            f"http://rebind.test:{public.port}/img/a.jpg",  # part 0, first lookup: the public address
            f"http://rebind.test:{other.port}/img/a.jpg",  # part 1, a new lookup: now loopback
            f"http://flip.test:{public.port}/img/a.jpg",  # part 2: public when checked, loopback when dialled
            f"http://mixed.test:{other.port}/img/a.jpg",  # part 3: the public address refuses; no fallback
        ]
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, urls, part_size=1)
        resolver = RebindingResolver()
        cfg = settings(redis_url, keys, shard_dir, parts_in_flight=1)  # one part after the other, in order
        assert await Worker(cfg, r, resolver=resolver, address_policy=loopback_one_is_public).serve() == 0
        assert trap_connections(public) == [] and other.connections == []
        assert len(public.requests_to("/img/a.jpg")) == 1
    assert resolver.lookups == ["rebind.test", "rebind.test", "flip.test", "mixed.test"]
    rows = outcomes(shard_dir)
    assert rows[0] == ("sample", "")
    assert rows[1] == ("blocked_address", "rebind.test resolves to loopback address 127.0.0.2")
    assert rows[2] == ("blocked_address", "loopback address 127.0.0.2")  # refused by the connection-time check
    assert rows[3][0] == "connect_error" and "127.0.0.1" in rows[3][1]  # tried the public address only
    final_audit(r, keys, shard_dir)
