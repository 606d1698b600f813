"""Riding through Redis outages (`streamcap.bus.outages`) against a real redis-server that is killed
and started again."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from redis.exceptions import BusyLoadingError

from streamcap import bus
from tests.support import timing


def test_a_server_still_loading_its_data_counts_as_down():
    assert issubclass(BusyLoadingError, bus.REDIS_DOWN)


@pytest.fixture
def restarted(redis_server):
    """Kill the server now; it comes back after a second, and in any case after the test."""
    redis_server.kill()
    timer = threading.Timer(1.0, redis_server.start)
    timer.start()
    yield redis_server
    timer.join()
    if not redis_server.running:
        redis_server.start()


def test_call_through_outages_returns_the_result_once_redis_is_back(restarted, keys, caplog):
    r = bus.connect(restarted.url, retries=0)  # no client retries: the helper alone rides it out
    calls, recreated = [], []

    def count() -> int:
        calls.append(1)
        return r.incr(keys.key("counter"))

    with caplog.at_level(logging.INFO, logger="streamcap.bus"):
        value = bus.call_through_outages(r, count, what="counting", on_back=lambda: recreated.append(1))
    assert value == 1 and len(calls) == 2 and recreated == [1]
    lines = [rec.getMessage() for rec in caplog.records]
    assert sum("Redis unreachable during counting (" in line for line in lines) == 1
    assert any("is back after" in line for line in lines)


def test_a_stop_ends_the_wait_while_redis_is_still_down(redis_server, keys, r):
    plain = bus.connect(redis_server.url, retries=0)
    stop, outcome = threading.Event(), []

    def call() -> None:
        try:
            bus.call_through_outages(
                plain, lambda: plain.incr(keys.key("never")), what="a doomed call", stop=stop.is_set
            )
        except bus.RedisUnavailable as e:
            outcome.append(str(e))

    redis_server.kill()
    try:
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        stop.set()  # what a SIGTERM handler does
        caller.join(timeout=timing.scaled(30))
        assert not caller.is_alive(), "the wait did not end on stop"
        assert outcome == ["stopped waiting for Redis during a doomed call"]
    finally:
        redis_server.start()
    assert r.get(keys.key("never")) is None


def test_wait_out_outage_records_the_outage_for_status(r, keys, restarted):
    plain = bus.connect(restarted.url, retries=0)  # records nothing itself
    with pytest.raises(bus.REDIS_DOWN) as e:
        plain.ping()
    assert bus.wait_out_outage(plain, e.value, what="a test", keys=keys, who="tester") is True
    outage = json.loads(r.hget(keys.control, bus.CONTROL_LAST_OUTAGE))
    assert outage["who"] == "tester" and outage["seconds"] >= 0
    assert r.hget(keys.stats, bus.STAT_REDIS_RECONNECTS) == "1"
