"""Names and hosts on the real internet, played on loopback: a DNS server of our own on 127.0.0.1
(tests.support.dns) and image servers on 127.0.0.x; every test opts in to private addresses.

- names go to the servers of --dns-servers; a bad value is one line and exit code 1;
- all rows of a dead name (NXDOMAIN, SERVFAIL, silent) fail as dns_error from one lookup;
- a 429 seen by one process pauses the host for another; its rows wait, are deferred to a
  retry part, and end `throttled`; `streamcap hosts` shows the host and its failures;
- --per-host-rate spaces one host's requests over processes: the host sees no more than the
  rate from all of them together.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from streamcap.cli import app
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.dns import ARES_TRIES
from streamcap.downloader.fetch import Fetcher, FetchResult
from streamcap.downloader.hosts import LEARN_FORGET_RATE, LEARN_MIN_RATE, LEARN_START_RATE, HostBoard
from streamcap.entrypoint import run_app
from tests.integration.test_user_errors import assert_one_error_line, streamcap
from tests.support import timing
from tests.support.dns import NXDOMAIN, SERVFAIL, SILENT, DnsServer
from tests.support.fleet import download
from tests.support.http import ImageServer
from tests.support.images import jpeg_bytes
from tests.support.pipeline import enqueue_rows, final_audit, outcomes

CAT = jpeg_bytes(128, 96)
NAMES = {"cat.test": ["127.0.0.1"], "gone.test": NXDOMAIN, "broken.test": SERVFAIL, "dead.test": SILENT}
WHY = {"gone.test": "NXDOMAIN", "broken.test": "SERVFAIL", "dead.test": "no answer within --dns-timeout 1 s"}


def settings(**overrides) -> DownloaderSettings:
    values = dict(allow_private=True, total_timeout=10.0, retries=1, concurrency=32, per_host=8, dns_timeout=1.0)
    return DownloaderSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        s.images["cat.jpg"] = CAT
        yield s


def hosts_json(capsys, redis_url: str, keys) -> dict:
    capsys.readouterr()
    assert run_app(app, ["hosts", "--json", "--redis-url", redis_url, "--namespace", keys.namespace]) == 0
    return json.loads(capsys.readouterr().out)


async def test_names_are_asked_of_the_dns_servers_given(server):
    with DnsServer(NAMES) as dns:
        async with Fetcher(settings(dns_servers=dns.address)) as fetcher:
            result = await fetcher.fetch(f"http://cat.test:{server.port}/img/cat.jpg")
        assert result.data == CAT, result.detail
        assert dns.queries["cat.test"] >= 1


@pytest.mark.parametrize("name", ["gone.test", "broken.test", "dead.test"])
async def test_every_row_of_a_dead_name_fails_from_one_lookup(server, name):
    before = len(server.requests)
    with DnsServer(NAMES) as dns:
        async with Fetcher(settings(dns_servers=dns.address)) as fetcher:
            urls = [f"http://{name}:{server.port}/img/cat.jpg?i={i}" for i in range(40)]
            results = await asyncio.gather(*[fetcher.fetch(url) for url in urls])
            results += [await fetcher.fetch(url) for url in urls[:10]]  # later rows: the negative cache
            assert fetcher.dns is not None and fetcher.dns.lookups == 1
        assert {(r.reason, r.detail) for r in results} == {("dns_error", WHY[name])}
        assert dns.queries[name] <= 2 * ARES_TRIES  # A and AAAA of one lookup, retransmissions included
    assert len(server.requests) == before  # no row got as far as a connection


def test_the_service_resolves_through_dns_servers_and_names_dead_hosts(r, keys, redis_url, server, tmp_path, capsys):
    rows = [f"http://{name}:{server.port}/img/cat.jpg?i={i}" for i in range(24) for name in NAMES if i % 4 == 0]
    rows += [f"http://{name}:{server.port}/img/cat.jpg?i={i}" for i in range(1, 24) for name in NAMES if i % 4]
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, rows, part_size=16)
    with DnsServer(NAMES) as dns:
        args = ("--allow-private", "--dns-servers", dns.address, "--dns-timeout", "1", "--image-size", "64")
        ran = download(redis_url, keys, shard_dir, tmp_path / "download.log", *args)
        assert ran.returncode == 0, ran.log
        queries = dict(dns.queries)
    by_name: dict[str, set] = {}
    for row, outcome in outcomes(shard_dir).items():
        by_name.setdefault(rows[row].split("/")[2].split(":")[0], set()).add(outcome)
    assert by_name == {
        "cat.test": {("sample", "")},
        **{name: {("dns_error", why)} for name, why in WHY.items()},
    }
    # one lookup per name and process; c-ares retransmits to a silent server within the lookup
    assert queries["gone.test"] <= 2 and queries["broken.test"] <= 2 * ARES_TRIES
    assert queries["dead.test"] <= 2 * ARES_TRIES
    report = final_audit(r, keys, shard_dir)
    assert report.samples == 24 and report.failures_by_reason == {"dns_error": 72}
    failing = {h["host"]: h for h in hosts_json(capsys, redis_url, keys)["failing"]}
    assert {name: failing[name]["reasons"] for name in WHY} == {name: {"dns_error": 24} for name in WHY}
    assert failing["gone.test"]["last"] == "dns_error: NXDOMAIN"


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1:99999", "dns.google"])
def test_a_bad_dns_server_is_one_line_and_exit_1(value):
    out = streamcap("download", "--dns-servers", value, "--redis-url", "redis://127.0.0.1:1/0", timeout=60)
    assert_one_error_line(out, "--dns-servers")


async def test_a_429_seen_by_one_process_pauses_the_host_in_another(r, keys, redis_url, tmp_path, capsys):
    with ImageServer() as server:
        server.images["cat.jpg"] = CAT
        # This process: the host answers 429 with Retry-After 30 s (over --retry-after-cap: the row ends).
        cfg = settings(redis_url=redis_url, namespace=keys.namespace, retry_after_cap=2)
        async with Fetcher(cfg, hosts=HostBoard(cfg, r, keys)) as fetcher:
            busy = await fetcher.fetch(server.url("/busy/cat.jpg?after=30"))
        assert busy.reason == "throttled" and "Retry-After 30 s" in busy.detail
        # Another process: its rows of that host wait, are deferred, then end `throttled`.
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, [server.url(f"/img/cat.jpg?i={i}") for i in range(6)], part_size=3)
        args = ("--allow-private", "--total-timeout", "3", "--straggler-seconds", "1", "--image-size", "64")
        ran = await asyncio.to_thread(download, redis_url, keys, shard_dir, tmp_path / "download.log", *args)
        assert ran.returncode == 0, ran.log
        assert server.requests_to("/img/cat.jpg") == []  # not one request while the host is paused
    rows = outcomes(shard_dir)
    assert [rows[i][0] for i in range(6)] == ["throttled"] * 6, rows
    assert all("host paused" in detail and "Retry-After 30 s" in detail for _, detail in rows.values())
    report = final_audit(r, keys, shard_dir)
    assert report.failures_by_reason == {"throttled": 6} and report.retried_rows == 6  # via retry parts
    view = hosts_json(capsys, redis_url, keys)
    assert [(h["host"], h["why"]) for h in view["backoff"]] == [("127.0.0.1", "HTTP 429, Retry-After 30 s")]
    assert 0 < view["backoff"][0]["seconds_left"] <= 30
    assert view["failing"][0]["host"] == "127.0.0.1" and view["failing"][0]["reasons"]["throttled"] >= 7
    # `streamcap status` shows the same hosts, in its JSON and in its Hosts table.
    status = ["status", "--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", str(shard_dir)]
    capsys.readouterr()
    assert run_app(app, [*status, "--json"]) == 0
    hosts = json.loads(capsys.readouterr().out)["hosts"]
    assert [h["host"] for h in hosts["backoff"]] == ["127.0.0.1"] and hosts["failing"][0]["host"] == "127.0.0.1"
    assert run_app(app, status) == 0
    text = capsys.readouterr().out
    assert "Hosts" in text and "in backoff" in text and "127.0.0.1" in text


async def test_a_host_paused_briefly_is_waited_for_without_a_slot(r, keys, redis_url, server):
    cfg = settings(redis_url=redis_url, namespace=keys.namespace)
    board = HostBoard(cfg, r, keys)
    async with Fetcher(cfg, hosts=board) as fetcher:
        await board.throttled("127.0.0.1", 429, 1.0)  # as if another worker had seen it
        paused_at = time.monotonic()
        async with fetcher.fetch_held(server.url("/img/cat.jpg?paused=1"), FetchResult(defer_s=5)) as result:
            assert result.data == CAT and not result.deferred
        assert time.monotonic() - paused_at >= 0.9  # sent once the pause was over
        assert server.requests_to("/img/cat.jpg?paused=1")[0].t >= paused_at + 0.9


async def test_per_host_rate_spaces_requests_over_processes(r, keys, redis_url):
    cfg = settings(redis_url=redis_url, namespace=keys.namespace, per_host_rate=5)
    boards = [HostBoard(cfg, r, keys), HostBoard(cfg, r, keys)]  # two workers' views
    started = time.monotonic()
    await asyncio.gather(*[boards[i % 2].pace("rate.example") for i in range(10)])
    assert time.monotonic() - started >= 9 * 0.2 * 0.95  # ten requests at 5/s: nine gaps of 0.2 s at least
    assert r.pttl(keys.host_rate("rate.example")) > 0  # forgotten when idle


async def test_a_host_that_throttled_is_paced_by_every_worker_at_a_rate_learned_from_its_429s(r, keys, redis_url):
    cfg = settings(redis_url=redis_url, namespace=keys.namespace)
    seen, other = HostBoard(cfg, r, keys), HostBoard(cfg, r, keys)  # two workers' views
    host = "busy.example"
    assert other.learned_rate(host) is None
    await seen.throttled(host, 429, None)  # the first throttled answer: paced at the start rate
    assert seen.learned_rate(host) == LEARN_START_RATE
    await seen.throttled(host, 503, None)  # a second one, not an answer to a request sent before a pause
    assert seen.learned_rate(host) == LEARN_START_RATE / 2
    await other._sync_once()  # what every worker reads each second
    assert other.learned_rate(host) == LEARN_START_RATE / 2
    started = time.monotonic()
    await asyncio.gather(*[other.pace(host) for _ in range(3)])  # at 0.5/s: two gaps of 2 s
    assert time.monotonic() - started >= 2 * 2 * 0.9
    grown = other.learned_rate(host)
    assert LEARN_START_RATE / 2 < grown < LEARN_START_RATE  # +10 % per second of pacing
    # A host that keeps answering gets its rate back (each request let through adds 0.1/s at any
    # rate: 10 % per second); past LEARN_FORGET_RATE it is no longer paced.
    r.hset(keys.hosts_learned_rates, host, json.dumps({"rate": LEARN_FORGET_RATE - 0.05, "at": time.time()}))
    await other.pace(host)
    assert other.learned_rate(host) is None and not r.hexists(keys.hosts_learned_rates, host)


async def test_a_row_of_a_paced_host_is_deferred_rather_than_holding_its_part(r, keys, redis_url, server):
    cfg = settings(redis_url=redis_url, namespace=keys.namespace)
    board = HostBoard(cfg, r, keys)
    async with Fetcher(cfg, hosts=board) as fetcher:
        r.hset(keys.hosts_learned_rates, "127.0.0.1", json.dumps({"rate": LEARN_MIN_RATE, "at": time.time()}))
        await board._sync_once()
        first = await fetcher.fetch(server.url("/img/cat.jpg?paced=1"))  # its turn now
        assert first.data == CAT
        async with fetcher.fetch_held(server.url("/img/cat.jpg?paced=2"), FetchResult(defer_s=1)) as second:
            assert second.deferred and second.reason == "throttled"  # its turn is seconds away
            # 0.15/s now: the first request let through grew the rate by 10 % per second of its 20 s slot.
            assert second.detail.startswith("deferred: host paced at 0.15 requests/s since it throttled")
    assert len(server.requests_to("/img/cat.jpg?paced=2")) == 0


def test_a_host_sees_no_more_requests_per_second_than_per_host_rate_from_all_processes(r, keys, redis_url, tmp_path):
    rate, n = 5.0, 40
    with ImageServer() as server:
        server.images["cat.jpg"] = CAT
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, [server.url(f"/img/cat.jpg?i={i}") for i in range(n)], part_size=4)
        args = ("--allow-private", "--per-host-rate", str(rate), "--processes", "2", "--image-size", "64")
        ran = download(redis_url, keys, shard_dir, tmp_path / "download.log", *args, "--total-timeout", "60")
        assert ran.returncode == 0, ran.log
        arrivals = sorted(request.t for request in server.requests_to("/img/cat.jpg"))
    assert len(arrivals) == n  # every row fetched once
    # Paced at the senders, n requests span at least (n - 1) / rate seconds; at the host only the
    # first one's delay (a busy event loop) can shorten that, by less than `late`.
    late = timing.scaled(1.0)
    assert n - 1 <= rate * (arrivals[-1] - arrivals[0] + late), (arrivals[-1] - arrivals[0], late)
    report = final_audit(r, keys, shard_dir)
    assert report.samples == n  # final_audit: lost 0, duplicates 0
