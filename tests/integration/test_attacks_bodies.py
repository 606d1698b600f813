"""Hostile responses (docs/testing.md, attacks 15 and 16): bodies that never end, servers that never answer.

`streamcap download` runs as shipped against a loopback server that lies about sizes, sends
forever, inflates to a gigabyte, dribbles, hangs or never accepts. Every row must end as a
failure with the right reason, having read at most the cap plus one 64 KiB chunk, within the
total timeout, with the process's memory bounded; then the part commits and the accounting
check passes. `--allow-private` is on only because the hostile server is on loopback.
"""

from __future__ import annotations

import re

from tests.support.fleet import download
from tests.support.http import DRIP_EVERY_S, ImageServer, never_accepting_port
from tests.support.images import jpeg_bytes
from tests.support.pipeline import enqueue_rows, final_audit, outcomes, part_stats

CAP = 1_000_000
CHUNK = 64 * 1024
TOTAL_TIMEOUT = 2.0
# A bound, not a speed claim: a row may overrun its total timeout only by scheduling noise on a
# loaded 2-core CI machine, never by another read or retry.
SLACK_S = 3.0
MIB = 2**20
# A worker process holding one image in flight; a body read past the cap (10 GB announced,
# 1 GiB inflated, an endless stream) would take it far beyond this.
MEMORY_BOUND = 300 * MIB

ROWS = ["/huge-length", "/endless", "/gzip-bomb", "/drip", "/drip-head", "/hang", "never-accept", "/img/good.jpg"]
EXPECTED = ["too_large", "too_large", "too_large", "timeout", "timeout", "timeout", "timeout", "sample"]


def part_seconds(log: str) -> dict[int, float]:
    """How long each part took, from the service's 'committed part src:N: ... in X s' lines."""
    return {int(m[1]): float(m[2]) for m in re.finditer(r"committed part src:(\d+): .* in ([\d.]+) s", log)}


def test_hostile_bodies_and_silent_servers_end_each_row_within_its_limits(r, keys, redis_url, tmp_path):
    with ImageServer() as server, never_accepting_port() as silent_port:
        server.images["good.jpg"] = jpeg_bytes(320, 240)
        silent = f"http://127.0.0.1:{silent_port}/a.jpg"
        urls = [silent if path == "never-accept" else server.url(path) for path in ROWS]
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, urls, part_size=1)  # one row per part: per-row bytes and durations
        ran = download(
            redis_url,
            keys,
            shard_dir,
            tmp_path / "download.log",
            "--allow-private",
            "--max-bytes",
            str(CAP),
            "--total-timeout",
            str(TOTAL_TIMEOUT),
            "--read-timeout",
            "1",
            "--connect-timeout",
            "1",
            "--retries",
            "1",
            "--concurrency",
            "8",
            "--per-host",
            "8",
        )
        assert ran.returncode == 0, ran.log
        requests = {path: server.requests_to(path) for path in ROWS}
    rows = outcomes(shard_dir)
    assert [rows[i][0] for i in range(len(ROWS))] == EXPECTED, rows
    read = {i: s.bytes_downloaded for i, s in part_stats(shard_dir).items()}  # body bytes the client read

    # 15: each aborted at the cap, having read at most cap + one chunk; memory bounded.
    assert "Content-Length 10000000000 > --max-bytes" in rows[0][1] and read[0] == 0
    assert CAP < read[1] <= CAP + CHUNK
    assert read[2] <= CAP + CHUNK  # gzip: the wire bytes are a few KB; the inflated bytes stop at CAP + 1
    assert len(requests["/gzip-bomb"]) == 1 and requests["/gzip-bomb"][0].body_sent < 2 * CAP  # not 1 GiB
    assert all(len(requests[p]) == 1 for p in ("/huge-length", "/endless"))  # a size refusal is not retried
    assert requests["/huge-length"][0].hung_up is not None  # the client hung up instead of reading 10 GB
    assert ran.peak_rss < MEMORY_BOUND, f"peak RSS {ran.peak_rss / MIB:.0f} MiB"

    # 16: each row ends by the total timeout, so each part completes in bounded time.
    durations = part_seconds(ran.log)
    assert sorted(durations) == list(range(len(ROWS)))
    assert all(durations[i] <= TOTAL_TIMEOUT + SLACK_S for i in range(3, 7)), durations
    for path in ("/drip", "/drip-head", "/hang"):
        for request in requests[path]:
            assert request.hung_up is not None and request.hung_up - request.t <= TOTAL_TIMEOUT + SLACK_S
    drip = requests["/drip"][0]
    assert drip.body_sent <= (TOTAL_TIMEOUT + SLACK_S) / DRIP_EVERY_S  # no read timeout saved it: the total did
    assert 1 <= len(requests["/hang"]) <= 2  # a read timeout, at most the one retry, then the total timeout

    report = final_audit(r, keys, shard_dir)
    assert (report.samples, report.failures_by_reason) == (1, {"too_large": 3, "timeout": 4})
