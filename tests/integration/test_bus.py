"""The Redis bus against a real redis-server: reconnects, groups, claims, heartbeats."""

from __future__ import annotations

import threading
import time

import pytest

from streamcap import bus
from streamcap.formats.heartbeats import HEARTBEAT_VERSION, DownloaderHeartbeat, EvaluatorHeartbeat, TrainerHeartbeat
from tests.support.heartbeats import record
from tests.support.pipeline import wait_until


def test_client_recovers_when_the_server_is_killed_and_restarted(r, keys, redis_server):
    r.set(keys.key("before"), "1")
    redis_server.kill()
    redis_server.start()
    # Nothing special: the stale connection fails, the client's retry reconnects.
    assert r.get(keys.key("before")) == "1"  # the AOF kept the write
    r.set(keys.key("after"), "2")
    assert r.get(keys.key("after")) == "2"


def test_client_rides_out_an_outage_shorter_than_its_retries(r, keys, redis_server):
    redis_server.kill()
    restarter = threading.Timer(1.5, redis_server.start)
    restarter.start()
    try:
        r.incr(keys.key("counter"))  # issued while the server is down
    finally:
        restarter.join()
    assert r.get(keys.key("counter")) == "1"


def test_wait_for_redis_gives_one_readable_line_when_nothing_listens(redis_url):
    from streamcap.bus.embedded import free_port

    dead = bus.connect(f"redis://127.0.0.1:{free_port()}/0", retries=0, connect_timeout=0.5)
    with pytest.raises(bus.RedisUnavailable) as e:
        bus.wait_for_redis(dead, timeout_s=0.5)
    assert "cannot reach Redis at 127.0.0.1:" in str(e.value) and "\n" not in str(e.value)


def test_wait_for_redis_returns_once_the_server_comes_up(r, redis_server):
    redis_server.kill()
    threading.Timer(1.0, redis_server.start).start()
    bus.wait_for_redis(bus.connect(redis_server.url, retries=0), timeout_s=20)
    assert r.ping()


def test_ensure_group_is_idempotent(r, keys):
    assert bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS) is True
    assert bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS) is False
    assert bus.group_info(r, keys.parts, bus.GROUP_DOWNLOADERS)["pending"] == 0


def test_claim_stale_takes_over_idle_entries_and_drops_trimmed_ones(r, keys):
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    ids = [r.xadd(keys.parts, bus.encode({"part": i})) for i in range(3)]
    r.xreadgroup(bus.GROUP_DOWNLOADERS, "dead-worker", {keys.parts: ">"}, count=3)
    r.xdel(keys.parts, ids[1])  # trimmed away while pending
    wait_until(
        lambda: all(
            p["time_since_delivered"] >= 10 for p in r.xpending_range(keys.parts, bus.GROUP_DOWNLOADERS, "-", "+", 10)
        ),
        5,
        "the claims to be idle for 10 ms",
        poll_s=0.005,
    )
    claimed = bus.claim_stale(r, keys.parts, bus.GROUP_DOWNLOADERS, "alive", min_idle_ms=10, count=5)
    assert [entry_id for entry_id, _ in claimed] == [ids[0], ids[2]]
    assert [bus.decode(fields)["part"] for _, fields in claimed] == [0, 2]
    pending = r.xpending_range(keys.parts, bus.GROUP_DOWNLOADERS, "-", "+", 10)
    assert {p["message_id"] for p in pending} == {ids[0], ids[2]}
    assert all(p["consumer"] == "alive" for p in pending)
    assert bus.delivery_count(r, keys.parts, bus.GROUP_DOWNLOADERS, ids[0]) == 2


def test_claim_stale_leaves_fresh_claims_alone(r, keys):
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    r.xadd(keys.parts, bus.encode({"part": 0}))
    r.xreadgroup(bus.GROUP_DOWNLOADERS, "busy-worker", {keys.parts: ">"}, count=1)
    assert bus.claim_stale(r, keys.parts, bus.GROUP_DOWNLOADERS, "thief", min_idle_ms=60_000) == []


def test_heartbeats_are_read_back_and_expire(r, keys):
    sent = record(DownloaderHeartbeat, urls_per_s=12.5, failures={"timeout": 3}, parts=["src:1"])
    bus.write_heartbeat(r, keys, "host-1", sent, ttl_s=1)
    bus.write_heartbeat(r, keys, "rank-0", record(TrainerHeartbeat, step=10), ttl_s=30)
    [beat] = bus.read_heartbeats(r, keys, bus.ROLE_DOWNLOADER)
    assert (beat.role, beat.id, beat.record, beat.problem, beat.stale) == ("downloader", "host-1", sent, "", False)
    assert {b.role for b in bus.read_heartbeats(r, keys)} == {"downloader", "trainer"}
    wait_until(lambda: bus.read_heartbeats(r, keys, bus.ROLE_DOWNLOADER) == [], 10, "the 1 s heartbeat to expire")
    assert [b.role for b in bus.read_heartbeats(r, keys)] == ["trainer"]


def test_a_heartbeat_not_refreshed_is_flagged_stale(r, keys):
    bus.write_heartbeat(r, keys, "e1", record(EvaluatorHeartbeat, state="idle"))
    r.hset(keys.heartbeat(bus.ROLE_EVALUATOR, "e1"), "ts", time.time() - bus.HEARTBEAT_STALE_S - 5)
    assert bus.read_heartbeats(r, keys, bus.ROLE_EVALUATOR)[0].stale is True


def test_a_heartbeat_of_another_version_is_listed_with_the_reason_it_does_not_read(r, keys):
    fields = record(DownloaderHeartbeat, state="working").to_fields()
    r.hset(
        keys.heartbeat(bus.ROLE_DOWNLOADER, "newer"),
        mapping=fields | {"v": str(HEARTBEAT_VERSION + 1), "ts": time.time()},
    )
    renamed = {("url_rate" if k == "urls_per_s" else k): v for k, v in fields.items()}
    r.hset(keys.heartbeat(bus.ROLE_DOWNLOADER, "renamed"), mapping=renamed | {"ts": time.time()})
    newer, renamed_beat = bus.read_heartbeats(r, keys, bus.ROLE_DOWNLOADER)
    assert (newer.id, newer.record, newer.state, newer.stale) == ("newer", None, bus.UNREADABLE, False)
    assert f"version {HEARTBEAT_VERSION + 1}, this streamcap reads {HEARTBEAT_VERSION}" in newer.problem
    assert renamed_beat.record is None and "lacks urls_per_s" in renamed_beat.problem
    assert "does not know: url_rate" in renamed_beat.problem


def test_an_outage_waited_out_is_recorded_for_status(r, keys, redis_server):
    import json as _json

    redis_server.kill()
    threading.Timer(1.0, redis_server.start).start()
    bus.wait_for_redis(bus.connect(redis_server.url, retries=0), timeout_s=20, keys=keys, who="test worker")
    outage = _json.loads(r.hget(keys.control, bus.CONTROL_LAST_OUTAGE))
    assert outage["who"] == "test worker" and outage["seconds"] > 0
    assert r.hget(keys.stats, bus.STAT_REDIS_RECONNECTS) == "1"
