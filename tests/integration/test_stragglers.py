"""Slow rows never hold a part hostage (downloader.stragglers): a part commits soon after its
last fast row, its stragglers are fetched again by the retry part its commit enqueued, and the
audit stays exact: every row once, with its latest outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamcap import bus
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.fetch import FetchResult
from streamcap.downloader.service import Worker
from streamcap.downloader.stragglers import PartProgress, _OnWire
from streamcap.formats.records import part_id
from tests.support import timing
from tests.support.http import ImageServer
from tests.support.images import jpeg_bytes
from tests.support.pipeline import enqueue_rows, final_audit, outcomes, part_stats, worker_settings

TOTAL_TIMEOUT_S = 8.0


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        s.images["good.jpg"] = jpeg_bytes(96, 96)
        yield s


def settings(redis_url: str, keys, shard_dir: Path, **overrides) -> DownloaderSettings:
    timeouts = dict(total_timeout=TOTAL_TIMEOUT_S, connect_timeout=TOTAL_TIMEOUT_S, read_timeout=TOTAL_TIMEOUT_S)
    defaults = dict(allow_private=True, straggler_seconds=1.0, **timeouts)
    return worker_settings(redis_url, keys, shard_dir, **{**defaults, **overrides})


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = timing.Deadline(timeout)
    while not condition():
        assert not deadline.passed(), f"timed out after {deadline.describe()} waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_part_commits_without_its_stragglers_and_a_retry_part_fetches_them(
    r, keys, redis_url, server, tmp_path
):
    shard_dir = tmp_path / "shards"
    rows = [server.url(f"/img/good.jpg?i={i}") for i in range(8)]
    rows += [server.url("/hang?i=8"), server.url("/img/good.jpg?delay=5&i=9")]  # never answers; slow but fine
    # Parts 1-5 keep work waiting in the queue (stragglers are deferred only then); their rows
    # all take 2 s, so none of them is ever the slow tail of a part that is otherwise done.
    rows += [server.url(f"/img/good.jpg?delay=2&i={i}") for i in range(10, 60)]
    enqueue_rows(r, keys, shard_dir, rows, part_size=10)
    worker = asyncio.create_task(Worker(settings(redis_url, keys, shard_dir, parts_in_flight=1), r).serve())
    # Committed while both slow rows were still on the network (both are recorded as deferred,
    # not as timed out); the bound is generous so that a loaded machine cannot fail the test.
    await wait_for(lambda: r.sismember(keys.parts_done, part_id("src", 0)), 3 * TOTAL_TIMEOUT_S, "the part's commit")
    first = part_stats(shard_dir)[0]
    assert first.samples == 8 and sorted(f.row for f in first.failures) == [8, 9]
    for failure in first.failures:
        assert failure.reason == "timeout" and failure.detail.startswith("deferred after ")
        assert "--straggler-seconds 1" in failure.detail
    assert r.hget(keys.parts_retries, part_id("src", 0))  # its retry part is queued by the same commit

    assert await worker == 0
    report = final_audit(r, keys, shard_dir)
    assert report.lost == 0 and report.duplicates == 0 and report.retries_open == 0
    assert (report.samples, report.failures, report.retried_rows, report.retried_samples) == (59, 1, 2, 1)
    # The retry gave each row its whole --total-timeout: the slow row arrived, the hang timed out.
    assert outcomes(shard_dir)[9] == ("sample", "")
    reason, detail = outcomes(shard_dir)[8]
    assert reason == "timeout" and detail.startswith("timed out after ")
    assert r.hget(keys.stats, bus.STAT_FAIL_PREFIX + "timeout") == "1"


async def test_without_a_straggler_deadline_a_part_waits_for_its_slowest_row(r, keys, redis_url, server, tmp_path):
    shard_dir = tmp_path / "shards"
    rows = [server.url(f"/img/good.jpg?i={i}") for i in range(4)] + [server.url("/img/good.jpg?delay=2&i=4")]
    enqueue_rows(r, keys, shard_dir, rows, part_size=5)
    assert await Worker(settings(redis_url, keys, shard_dir, straggler_seconds=0), r).serve() == 0
    report = final_audit(r, keys, shard_dir)
    assert (report.samples, report.retried_rows) == (5, 0) and r.hlen(keys.parts_retries) == 0


async def test_a_part_waiting_on_servers_takes_no_part_slot(r, keys, redis_url, server, tmp_path):
    """--parts-in-flight 1: while part 0 waits on its hanging row, part 1 is claimed and done."""
    shard_dir = tmp_path / "shards"
    rows = [server.url("/hang?i=0")] + [server.url(f"/img/good.jpg?i={i}") for i in range(1, 6)]
    enqueue_rows(r, keys, shard_dir, rows, part_size=3)
    slow = dict(total_timeout=15.0, read_timeout=15.0, connect_timeout=15.0)
    cfg = settings(redis_url, keys, shard_dir, parts_in_flight=1, straggler_seconds=0, **slow)
    worker = asyncio.create_task(Worker(cfg, r).serve())
    await wait_for(lambda: r.sismember(keys.parts_done, part_id("src", 1)), 12, "part 1's commit")
    assert not r.sismember(keys.parts_done, part_id("src", 0))  # still waiting for its hang
    assert await worker == 0
    assert final_audit(r, keys, shard_dir).samples == 5


# --- the rule itself --------------------------------------------------------------------------------


async def test_open_rows_are_stragglers_only_when_every_condition_holds():
    now = 100.0

    async def hang() -> None:
        await asyncio.sleep(3600)

    progress = PartProgress(rows=10, straggler_s=5.0, finished=8, last_finished=now - 6)
    tasks = [asyncio.create_task(hang()) for _ in range(2)]
    for row, task in zip((3, 7), tasks):
        progress.fetching[row] = _OnWire(task, FetchResult(on_wire_since=now - 6))
    assert progress.stragglers(now) == [3, 7]

    progress.last_finished = now - 1  # a fast row finished a second ago: the part still moves
    assert progress.stragglers(now) == []
    progress.last_finished = now - 6

    progress.fetching[7].fetch.on_wire_since = None  # waiting for a connection slot: our load, not theirs
    assert progress.stragglers(now) == []
    progress.fetching[7].fetch.on_wire_since = now - 2  # on the network for 2 s only
    assert progress.stragglers(now) == []
    progress.fetching[7].fetch.on_wire_since = now - 6

    progress.finished = 4  # fewer than half done: no "rest of the part" yet
    assert progress.stragglers(now) == []
    progress.finished = 8

    del progress.fetching[7]  # an open row not fetching (its image is being processed)
    assert progress.stragglers(now) == []
    progress.fetching[7] = _OnWire(tasks[1], FetchResult(on_wire_since=now - 6))

    assert PartProgress(rows=10, straggler_s=0.0, finished=8, last_finished=0).stragglers(now) == []
    progress.last_finished = None  # every row so far was slow: one slow host, nothing to wait less for
    assert progress.stragglers(now) == []
    progress.last_finished = now - 6
    # A slow row that does finish leaves the clock alone; a fast one restarts it.
    loop = asyncio.get_running_loop()
    clock = PartProgress(rows=4, straggler_s=5.0, last_finished=loop.time() - 9)
    clock.fetching[0] = _OnWire(tasks[0], FetchResult(on_wire_since=loop.time() - 6))
    clock.off_wire(0)
    clock.row_finished(0)
    assert loop.time() - clock.last_finished >= 9
    clock.fetching[1] = _OnWire(tasks[0], FetchResult(on_wire_since=loop.time() - 0.5))
    clock.off_wire(1)
    clock.row_finished(1)
    assert loop.time() - clock.last_finished < 1 and clock.finished == 2
    assert progress.defer(now) == 2 and progress.fetching == {}
    assert "deferred after 6.0 s" in progress.deferral(3)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.cancelled() for t in tasks)
