"""The part commit against a real redis-server: all or nothing, once, and never over a winner."""

from __future__ import annotations

import pytest

from streamcap import bus
from streamcap.shardwriter.commit import ALREADY_DONE, COMMITTED, LOST_CLAIM, PartClaim, commit_part
from streamcap.shardwriter.registry import registered_shards
from streamcap.shardwriter.writer import PartSuperseded, PartWriter
from tests.support.images import jpeg_bytes
from tests.support.parts import claim_part, enqueue_source, write_rows


@pytest.fixture
def part_entry(r, keys, tmp_path):
    enqueue_source(r, keys, tmp_path, "src", rows=20, part_size=20)
    return claim_part(r, keys, "w1")


def finish(tmp_path, part, claim=None, max_samples=4, image=None):
    with PartWriter(tmp_path, part, max_samples=max_samples, max_bytes=1 << 20, owner="t", claim=claim) as w:
        write_rows(w, part, image=image)
        return w.finish(bytes_downloaded=500)


def test_commit_registers_counts_acks_and_marks_done(r, keys, tmp_path, part_entry):
    entry_id, part = part_entry
    stats = finish(tmp_path, part)
    result = commit_part(r, keys, stats, entry_id, consumer="w1")
    assert result.status == COMMITTED and result.shards == 5
    assert [s for _, s in registered_shards(r, keys)] == stats.shards
    counters = r.hgetall(keys.stats)
    assert counters[bus.STAT_SAMPLES] == "17" and counters[bus.STAT_ROWS] == "20"
    assert counters[bus.STAT_FAIL_PREFIX + "timeout"] == "3" and counters[bus.STAT_BYTES_DOWNLOADED] == "500"
    assert r.sismember(keys.parts_done, part.part_id)
    assert bus.group_info(r, keys.parts, bus.GROUP_DOWNLOADERS)["pending"] == 0


def test_retried_commit_is_applied_once(r, keys, tmp_path, part_entry):
    entry_id, part = part_entry
    stats = finish(tmp_path, part)
    first = commit_part(r, keys, stats, entry_id, consumer="w1")
    again = commit_part(r, keys, stats, entry_id, consumer="w1")  # as if the first reply was lost
    assert (first.status, again.status, again.retried) == (COMMITTED, COMMITTED, True)
    assert len(registered_shards(r, keys)) == 5
    assert r.hget(keys.stats, bus.STAT_SAMPLES) == "17"
    assert r.hget(keys.stats, bus.STAT_COMMITS_WASTED) is None


def test_commit_of_a_done_part_is_a_counted_no_op(r, keys, tmp_path, part_entry):
    entry_id, part = part_entry
    stats = finish(tmp_path, part)
    assert commit_part(r, keys, stats, entry_id, consumer="w1").applied
    other = commit_part(r, keys, stats, entry_id, consumer="w2")
    assert other.status == ALREADY_DONE and not other.applied
    assert len(registered_shards(r, keys)) == 5 and r.hget(keys.stats, bus.STAT_ROWS) == "20"
    assert r.hget(keys.stats, bus.STAT_COMMITS_WASTED) == "1"


def test_slow_consumer_never_clobbers_the_winner(r, keys, tmp_path, part_entry):
    entry_id, part = part_entry
    slow = PartWriter(
        tmp_path, part, max_samples=3, max_bytes=1 << 20, owner="w1", claim=PartClaim(r, keys, entry_id, "w1")
    )
    write_rows(slow, part, image=jpeg_bytes(24, 24, seed=99))  # slow worker still has its temp files open
    [(_, _)] = bus.claim_stale(r, keys.parts, bus.GROUP_DOWNLOADERS, "w2", min_idle_ms=0)
    winner = finish(tmp_path, part, claim=PartClaim(r, keys, entry_id, "w2"), max_samples=10)
    assert commit_part(r, keys, winner, entry_id, consumer="w2").applied
    before = {p.name: p.read_bytes() for p in tmp_path.glob("src-*")}
    with pytest.raises(PartSuperseded, match="already_done"):
        slow.finish()
    assert {p.name: p.read_bytes() for p in tmp_path.glob("src-*")} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert r.hget(keys.stats, bus.STAT_COMMITS_WASTED) == "1"


def test_reclaimed_but_uncommitted_part_refuses_the_old_owner(r, keys, tmp_path, part_entry):
    entry_id, part = part_entry
    stats = finish(tmp_path, part, claim=PartClaim(r, keys, entry_id, "w1"))
    bus.claim_stale(r, keys.parts, bus.GROUP_DOWNLOADERS, "w2", min_idle_ms=0)  # w1 stalled past its lease
    result = commit_part(r, keys, stats, entry_id, consumer="w1")
    assert result.status == LOST_CLAIM
    assert registered_shards(r, keys) == [] and not r.sismember(keys.parts_done, part.part_id)
    assert bus.delivery_count(r, keys.parts, bus.GROUP_DOWNLOADERS, entry_id) == 2  # still w2's to do
