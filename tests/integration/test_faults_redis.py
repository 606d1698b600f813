"""Reliability suite (docs/testing.md, faults 4-7): Redis misbehaving under running services.

4. the reply to a commit is lost (a proxy swallows it and resets the connection; the client retries);
5. redis-server SIGKILLed mid-run and restarted on its AOF, downloaders and a trainer running;
6. Redis loses everything (FLUSHALL) mid-run; `streamcap shards reconcile` rebuilds the registry;
7. a proxy that resets every connection every 2 s, blackholes for 10 s once and adds latency.

Each ends with the accounting check once every process is gone: lost = 0, duplicates = 0.
"""

from __future__ import annotations

import signal
import time

from benchmarks.redis_proxy import RedisProxy
from streamcap import bus
from streamcap.shardwriter.audit import audit
from tests.support import timing
from tests.support.fleet import COMMIT_SHA, cli_json, trainer_args, trainer_step
from tests.support.pipeline import CAPTION, enqueue_rows, final_audit, paced_rows, pending_parts, vocab_file, wait_until


def test_a_lost_commit_reply_is_retried_and_applied_once(
    r, keys, redis_url, redis_server, image_host, fleets, tmp_path
):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 8, failures=False), part_size=4)
    with RedisProxy(redis_server.port) as proxy:
        proxy.drop_replies(COMMIT_SHA, times=2)  # both parts: applied in Redis, the reply never arrives
        fleet = fleets(proxy.url, keys, shard_dir)
        fleet.start("--exit-when-empty", "--lease-seconds", "5")
        fleet.wait_all(60)
    assert proxy.dropped_replies == 2
    log = fleet.logs()
    assert log.count("committed part src:") == 2 and "commit not applied" not in log
    assert r.hget(keys.stats, bus.STAT_PARTS_COMMITTED) == "2" and r.hget(keys.stats, bus.STAT_SAMPLES) == "8"
    assert r.hget(keys.stats, bus.STAT_COMMITS_WASTED) is None  # a retried commit is not a wasted one
    report = final_audit(r, keys, shard_dir)  # also: every counter equals the stats files' sums
    assert report.shards == 2 and report.deliveries == {1: 2}


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_redis_sigkilled_mid_run_every_service_reconnects_and_status_shows_it(
    r, keys, redis_url, redis_server, image_host, fleets, tmp_path
):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 160, delay_s=0.2), part_size=16)
    fleet = fleets(redis_url, keys, shard_dir)
    for _ in range(2):
        fleet.start(
            "--exit-when-empty",
            "--lease-seconds",
            "3",
            "--concurrency",
            "4",
            "--per-host",
            "4",
            "--parts-in-flight",
            "1",
        )
    vocab = vocab_file(tmp_path / "vocab.txt", [CAPTION])
    trainer = fleet.start(*trainer_args("outage", tmp_path / "ck", vocab, max_steps=100_000), command="train")
    wait_until(
        lambda: r.scard(keys.parts_done) >= 2 and trainer_step(r, keys) >= 1,
        90,
        "two parts committed and the trainer stepping",
    )
    redis_server.kill()
    time.sleep(2.0)  # the stimulus: Redis stays down for 2 s
    redis_server.start()  # same port, same AOF
    # The trainer's progress from its own metrics file (a line per step): its heartbeat backs off
    # for 30 s after a write that failed during the outage.
    metrics = tmp_path / "ck" / "outage" / "metrics.jsonl"
    at_restart = _lines(metrics)
    downloaders = [p for p in fleet.procs if p is not trainer]
    for proc in downloaders:
        assert timing.wait(proc, 120) == 0, fleet.tail(proc)
    wait_until(lambda: _lines(metrics) > at_restart + 2, 60, "the trainer to step on after the restart")
    trainer.send_signal(signal.SIGTERM)
    fleet.wait_all(60)
    logs = fleet.logs()
    assert "Traceback" not in logs
    status = cli_json(redis_url, keys, shard_dir, "status")
    outage = status["redis"]["last_outage"]
    assert outage and outage["seconds"] >= 1 and outage["who"].startswith(("downloader ", "trainer "))
    assert status["redis"]["reconnects"] >= 1
    assert any("Redis was unreachable" in hint for hint in status["hints"])
    report = final_audit(r, keys, shard_dir)
    assert report.parts["done"] == 10 and report.samples + report.failures == 160


def test_redis_losing_everything_mid_run_is_rebuilt_by_reconcile(r, keys, redis_url, image_host, fleets, tmp_path):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 200, delay_s=0.2), part_size=20)
    fleet = fleets(redis_url, keys, shard_dir)
    for _ in range(2):  # services, not batch runs: after a FLUSHALL the queue looks empty
        fleet.start("--lease-seconds", "2", "--concurrency", "4", "--per-host", "4", "--parts-in-flight", "2")
    wait_until(lambda: r.scard(keys.parts_done) >= 3, 90, "three parts committed")
    r.flushall()
    wait_until(
        lambda: bus.group_info(r, keys.parts, bus.GROUP_DOWNLOADERS),
        30,
        "the downloaders to recreate their consumer group",
    )
    rebuilt = cli_json(redis_url, keys, shard_dir, "shards", "reconcile")
    assert rebuilt["sources_restored"] == ["src"] and len(rebuilt["parts_restored"]) >= 3
    wait_until(
        lambda: audit(r, keys, shard_dir, decode_images=False).complete and pending_parts(r, keys) == 0,
        120,
        "every part done again",
    )
    for proc in fleet.procs:
        fleet.kill(proc, signal.SIGTERM)
    fleet.wait_all(60)
    assert "Traceback" not in fleet.logs()
    report = final_audit(r, keys, shard_dir)
    assert report.parts == {"pending": 0, "in_flight": 0, "done": 10, "dead": 0}
    assert report.samples + report.failures == 200


def test_resets_a_blackhole_and_latency_crash_nothing_and_lose_nothing(
    r, keys, redis_url, redis_server, image_host, fleets, tmp_path
):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 800, delay_s=0.1), part_size=20)
    with RedisProxy(redis_server.port, latency_s=0.005) as proxy:
        fleet = fleets(proxy.url, keys, shard_dir)
        for _ in range(2):
            fleet.start(
                "--exit-when-empty",
                "--lease-seconds",
                "4",
                "--concurrency",
                "4",
                "--per-host",
                "4",
                "--parts-in-flight",
                "2",
            )
        wait_until(lambda: r.scard(keys.parts_done) >= 1, 60, "the first commit")
        started = time.monotonic()
        proxy.chaos(reset_every_s=1.5, blackhole_after_s=2.0, blackhole_s=10.0)
        fleet.wait_all(150)
        proxy.calm()
    print(
        f"through the proxy: {proxy.resets} resets of all connections, {proxy.blackholes} blackhole of 10 s, "
        f"{proxy.connections} connections; the rest of the run took {time.monotonic() - started:.1f} s"
    )
    assert proxy.resets >= 3 and proxy.blackholes == 1
    assert "Traceback" not in fleet.logs()
    report = final_audit(r, keys, shard_dir)
    assert report.parts["done"] == 40 and report.samples + report.failures == 800
