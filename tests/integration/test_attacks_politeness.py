"""Politeness under pressure (docs/testing.md, attacks 18 and 19): opt-outs honoured without reading a
byte of the body, one host never hammered, its Retry-After obeyed.

Both run `streamcap download` as shipped against a loopback server that counts, at the socket
level, what the downloader does: body bytes written before the client hung up, connections
and requests open at once, the time between a 429 and its retry, the User-Agent of every
request. `--allow-private` is on only because the server is on loopback. Each test ends with
the accounting check.
"""

from __future__ import annotations

from urllib.parse import urlencode

from tests.support import timing
from tests.support.fleet import download
from tests.support.http import ImageServer
from tests.support.images import jpeg_bytes
from tests.support.pipeline import enqueue_rows, final_audit, outcomes

# --- attack 18: X-Robots-Tag -----------------------------------------------------------------------

# (header values, one header each; header name as sent) -> skipped?
ROBOTS = [
    (["noai"], "X-Robots-Tag", True),
    (["noimageai"], "X-Robots-Tag", True),
    (["NoAI"], "X-Robots-Tag", True),
    (["  NOIMAGEAI  "], "X-Robots-Tag", True),
    ([" nofollow ,noai , noarchive"], "X-Robots-Tag", True),
    (["streamcap: noimageai"], "X-Robots-Tag", True),
    (["StreamCap:NOAI"], "X-Robots-Tag", True),
    (["STREAMCAP :   noai"], "X-Robots-Tag", True),
    (["otherbot: noai", "noimageindex"], "X-Robots-Tag", True),  # the second header is for everyone
    (["noindex"], "X-Robots-Tag", True),
    (["noai"], "x-robots-tag", True),  # header names are case-insensitive
    (["noimageai"], "X-ROBOTS-TAG", True),
    (["otherbot: noai"], "X-Robots-Tag", False),
    (["googlebot: noimageai, noindex"], "X-Robots-Tag", False),
    (["nofollow"], "X-Robots-Tag", False),
    (["noarchive, nosnippet"], "X-Robots-Tag", False),
    (["noaix"], "X-Robots-Tag", False),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], "X-Robots-Tag", False),
    ([], "X-Robots-Tag", False),
]


def test_x_robots_tag_opt_outs_are_skipped_without_reading_the_body(r, keys, redis_url, tmp_path):
    image = jpeg_bytes(320, 240)
    with ImageServer() as server:
        server.images["a.jpg"] = image
        urls = [
            server.url("/robots/a.jpg?" + urlencode({"i": i, "header": name, "tag": tags}, doseq=True))
            for i, (tags, name, _) in enumerate(ROBOTS)
        ]
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, urls, part_size=10)
        ran = download(redis_url, keys, shard_dir, tmp_path / "download.log", "--allow-private", "--read-timeout", "5")
        assert ran.returncode == 0, ran.log
        requests = {int(req.arg("i")): req for req in server.requests_to("/robots")}
    assert sorted(requests) == list(range(len(ROBOTS)))  # one request per row: an opt-out is not retried
    rows = outcomes(shard_dir)
    for i, (tags, _name, skipped) in enumerate(ROBOTS):
        req = requests[i]
        if skipped:
            assert rows[i][0] == "opted_out", (tags, rows[i])
            assert req.body_sent == 0 and req.hung_up is not None, tags  # hung up at the headers
        else:
            assert rows[i][0] == "sample", (tags, rows[i])
            assert req.body_sent == len(image), tags
    skipped = sum(1 for _, _, s in ROBOTS if s)
    assert final_audit(r, keys, shard_dir).failures_by_reason == {"opted_out": skipped}


# --- attack 19: one busy host ----------------------------------------------------------------------

ROWS = 500
PER_HOST = 4
# Row i asks for (query of /busy): 429 + Retry-After 1 s, 503 + Retry-After 1 s, 429 + an HTTP
# date ~2 s ahead, 429 + Retry-After 1.5 s (not an integer, as some servers send it), 429 without
# Retry-After (exponential backoff), or nothing special.
VARIANTS = [{"after": "1"}, {"status": "503", "after": "1"}, {"after": "date+2"}, {"after": "1.5"}, {}, {"times": "0"}]
# The least wait each variant must show between its first request and the retry (the date has
# one-second resolution; the backoff without Retry-After is 0.25-0.5 s for a first retry).
LEAST_WAIT = [1.0, 1.0, 0.95, 1.5, 0.25, None]
TOO_LONG = 5  # rows whose Retry-After exceeds --retry-after-cap: one request, then throttled


def test_a_busy_host_gets_at_most_per_host_connections_and_its_retry_after_is_honoured(r, keys, redis_url, tmp_path):
    with ImageServer() as server:
        server.images["a.jpg"] = jpeg_bytes(96, 96)
        urls = [
            server.url("/busy/a.jpg?" + urlencode({"i": i, "delay": 0.01, **VARIANTS[i % len(VARIANTS)]}))
            for i in range(ROWS)
        ]
        urls += [server.url(f"/busy/a.jpg?i={ROWS + i}&after=3600") for i in range(TOO_LONG)]
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, urls, part_size=100)
        ran = download(
            redis_url,
            keys,
            shard_dir,
            tmp_path / "download.log",
            "--allow-private",
            "--per-host",
            str(PER_HOST),
            "--concurrency",
            "64",
            "--image-size",
            "64",
            "--retry-after-cap",
            "5",
            "--total-timeout",
            "20",
            # Every URL's first request is answered 429 here, a per-URL busy signal: the rows'
            # own waits are under test, not pausing the host for everyone (test_hosts.py).
            "--host-backoff-cap",
            "0",
            timeout=timing.scaled(120),
        )
        assert ran.returncode == 0, ran.log
        requests = server.requests_to("/busy")
        max_open, max_active, connections = server.max_open, server.max_active, len(server.connections)
    assert 2 <= max_active <= PER_HOST, max_active  # requests being answered at once, counted by the server
    assert max_open <= PER_HOST, (max_open, connections)  # TCP connections open at once
    assert all(req.headers["user-agent"].startswith("streamcap/") for req in requests)
    by_row: dict[int, list] = {}
    for req in requests:
        by_row.setdefault(int(req.arg("i")), []).append(req)
    for i in range(ROWS):
        variant, least = i % len(VARIANTS), LEAST_WAIT[i % len(VARIANTS)]
        times = [req.t for req in by_row[i]]
        assert len(times) == (1 if least is None else 2), (i, VARIANTS[variant])
        if least is not None:
            assert times[1] - times[0] >= least, (i, VARIANTS[variant], times[1] - times[0])
    assert all(len(by_row[ROWS + i]) == 1 for i in range(TOO_LONG))
    rows = outcomes(shard_dir)
    assert all(rows[ROWS + i][0] == "throttled" and "Retry-After" in rows[ROWS + i][1] for i in range(TOO_LONG))
    report = final_audit(r, keys, shard_dir)
    assert (report.samples, report.failures_by_reason) == (ROWS, {"throttled": TOO_LONG})
