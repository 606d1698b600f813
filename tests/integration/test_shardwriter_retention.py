"""Disk budget backpressure and gc against a real redis-server."""

from __future__ import annotations

import json
import time

import pytest

from streamcap import bus
from streamcap.ops import status
from streamcap.shardwriter.registry import load_sources, registered_shards, save_source
from streamcap.shardwriter.retention import disk_pressure, gc, shard_bytes_on_disk
from tests.support.parts import enqueue_source, process_part


def fill(r, keys, shard_dir, parts=3):
    """`parts` committed parts of 8 rows, 4 samples per shard."""
    enqueue_source(r, keys, shard_dir, "src", rows=8 * parts, part_size=8)
    for _ in range(parts):
        assert process_part(r, keys, shard_dir, "w1").applied
    return [s for _, s in registered_shards(r, keys)]


def start_run(r, keys, run, state="running"):
    r.hset(
        keys.runs,
        run,
        json.dumps({"started": time.time(), "last_seen": time.time(), "state": state, "group": keys.train_group(run)}),
    )


def read(r, keys, run, names, times=1):
    for name in names:
        r.hincrby(keys.shard_reads(run), name, times)


def test_budget_pauses_and_resumes_visibly(r, keys, tmp_path):
    shards = fill(r, keys, tmp_path, parts=1)
    used = shard_bytes_on_disk(tmp_path)
    assert used == sum(s.bytes for s in shards)
    reason = disk_pressure(r, keys, tmp_path, max_disk_bytes=used - 1, min_free_bytes=0)
    assert reason and "over --max-disk-bytes" in reason
    assert r.hget(keys.control, bus.CONTROL_DISK_PAUSED) == reason
    since = r.hget(keys.control, bus.CONTROL_DISK_PAUSED_SINCE)
    assert status.collect(r, keys)["shards"]["paused_for_disk"] == reason  # `streamcap status` shows it
    assert disk_pressure(r, keys, tmp_path, max_disk_bytes=used - 1, min_free_bytes=0) == reason
    assert r.hget(keys.control, bus.CONTROL_DISK_PAUSED_SINCE) == since  # paused since the first time
    (tmp_path / shards[0].name).unlink()  # space freed (gc, or an operator)
    assert disk_pressure(r, keys, tmp_path, max_disk_bytes=used - 1, min_free_bytes=0) is None
    assert r.hgetall(keys.control) == {}


def test_free_space_floor(r, keys, tmp_path):
    reason = disk_pressure(r, keys, tmp_path, max_disk_bytes=0, min_free_bytes=1 << 60)
    assert reason and "under --min-free-bytes" in reason
    assert disk_pressure(r, keys, tmp_path, max_disk_bytes=0, min_free_bytes=1) is None


def test_gc_never_deletes_a_shard_a_running_run_has_not_read(r, keys, tmp_path):
    shards = fill(r, keys, tmp_path)
    names = [s.name for s in shards]
    start_run(r, keys, "a")
    start_run(r, keys, "b")
    start_run(r, keys, "old", state="finished")  # finished runs need nothing
    read(r, keys, "a", names, times=2)
    read(r, keys, "b", names[:2], times=2)
    read(r, keys, "b", names[2:3], times=1)
    report = gc(r, keys, tmp_path, max_disk_bytes=1, min_free_bytes=0, min_reads=2)
    assert report.deleted == names[:2] and report.kept_unread == len(names) - 2
    assert r.smembers(keys.shards_deleted) == set(names[:2])
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == names[2:]


def test_gc_goes_oldest_first_and_stops_within_budget(r, keys, tmp_path):
    shards = fill(r, keys, tmp_path)
    start_run(r, keys, "a")
    read(r, keys, "a", [s.name for s in shards])
    budget = shard_bytes_on_disk(tmp_path) - shards[0].bytes - 1  # deleting two shards suffices
    report = gc(r, keys, tmp_path, max_disk_bytes=budget, min_free_bytes=0, min_reads=1)
    assert report.deleted == [shards[0].name, shards[1].name] and report.stopped_because == "within budget"
    again = gc(r, keys, tmp_path, max_disk_bytes=budget, min_free_bytes=0, min_reads=1)
    assert again.deleted == [] and again.stopped_because == "within budget"


def test_gc_without_a_running_run_or_budget_deletes_nothing(r, keys, tmp_path):
    shards = fill(r, keys, tmp_path, parts=1)
    start_run(r, keys, "done", state="finished")
    read(r, keys, "done", [s.name for s in shards], times=5)
    assert (
        "no training run is running"
        in gc(r, keys, tmp_path, max_disk_bytes=1, min_free_bytes=0, min_reads=1).stopped_because
    )
    assert "no disk budget" in gc(r, keys, tmp_path, max_disk_bytes=0, min_free_bytes=0, min_reads=1).stopped_because
    with pytest.raises(ValueError):
        gc(r, keys, tmp_path, max_disk_bytes=1, min_free_bytes=0, min_reads=0)
    assert len(list(tmp_path.glob("*.tar"))) == len(shards)


def test_sources_are_recorded_in_the_shard_dir(r, keys, tmp_path):
    source = enqueue_source(r, keys, tmp_path, "My Source", rows=10, part_size=4)
    save_source(tmp_path, source)  # idempotent
    assert load_sources(tmp_path) == [source]
    assert (tmp_path / "sources" / "my-source.json").exists()
