"""`streamcap shards gc --watch` (compose's gc service): frees read shards whenever the disk is over
budget, round after round, so paused downloaders resume by themselves; status shows it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from streamcap.ops import status
from streamcap.shardwriter.registry import registered_shards
from streamcap.shardwriter.retention import disk_pressure, shard_bytes_on_disk
from tests.integration.test_shardwriter_retention import fill, read, start_run
from tests.support import timing
from tests.support.parts import enqueue_source, process_part
from tests.support.pipeline import wait_until


def start_watch(redis_url, keys, shard_dir, max_disk_bytes: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamcap", "shards", "gc", "--watch", "--every", "1",
           "--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", str(shard_dir),
           "--max-disk-bytes", str(max_disk_bytes), "--min-reads", "1"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)


def land_part(r, keys, shard_dir, source: str) -> list[str]:
    """One more part written and committed, as a downloader does; its shard names."""
    before = {s.name for _, s in registered_shards(r, keys)}
    enqueue_source(r, keys, shard_dir, source, rows=8, part_size=8)
    assert process_part(r, keys, shard_dir, "w1").applied
    return [s.name for _, s in registered_shards(r, keys) if s.name not in before]


def test_the_watch_frees_read_shards_round_after_round_and_downloads_resume(r, redis_url, keys, tmp_path):
    names = [s.name for s in fill(r, keys, tmp_path, parts=2)]
    budget = shard_bytes_on_disk(tmp_path) - 1  # over budget by one byte: one read shard must go
    assert disk_pressure(r, keys, tmp_path, max_disk_bytes=budget, min_free_bytes=0)  # downloads pause
    start_run(r, keys, "a")
    watch = start_watch(redis_url, keys, tmp_path, budget)
    try:
        # Nothing is read yet: the watch deletes nothing and says why.
        report = wait_until(lambda: status.collect(r, keys)["shards"]["gc"], 30, "the gc heartbeat")
        assert report["deleted"] == 0 and "readers waiting" in report["last_result"]
        assert any("gc: " in hint for hint in status.hints(status.collect(r, keys)))  # why downloads wait

        read(r, keys, "a", names[:1])  # the run reads the oldest shard: the next round frees it
        wait_until(lambda: not (tmp_path / names[0]).exists(), 30, "the read shard to be deleted")
        assert disk_pressure(r, keys, tmp_path, max_disk_bytes=budget, min_free_bytes=0) is None  # resumed

        # Downloads resumed, a new part lands over budget again; once read, a later round frees more.
        landed = land_part(r, keys, tmp_path, "src2")
        assert shard_bytes_on_disk(tmp_path) > budget
        read(r, keys, "a", names[1:] + landed)
        wait_until(lambda: shard_bytes_on_disk(tmp_path) <= budget, 30, "the watch to free the new excess")
        gc = wait_until(lambda: (status.collect(r, keys)["shards"]["gc"] or {}).get("deleted", 0) >= 2, 30, "count")
        assert gc and names[0] in r.smembers(keys.shards_deleted)
    finally:
        watch.send_signal(signal.SIGTERM)
        out, _ = watch.communicate(timeout=timing.scaled(30))
    assert watch.returncode == 0, out
    assert "gc watch stopped" in out and "Traceback" not in out
    assert status.collect(r, keys)["shards"]["gc"] is None  # a stopped watch leaves no heartbeat
