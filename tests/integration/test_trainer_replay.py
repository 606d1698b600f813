"""Replay knowledge is shared at once, not at the first checkpoint; a resumed rank's reads log is
cut back to its checkpoint, so it counts each read once, as `shards:reads:<run>` does."""

from __future__ import annotations

import json
import os
import signal

from tests.integration.test_trainer_runs import finish, make_shards, reads, start, train_args, vocab
from tests.support.fleet import children
from tests.support.pipeline import wait_until


def test_a_worker_with_no_fresh_shard_replays_what_another_read_before_any_checkpoint(redis_url, keys, r, tmp_path):
    # One shard for two loader workers: the one that does not get it has nothing fresh, and no
    # checkpoint (every 1000 steps) has counted a read yet. The DataLoader takes batches from the
    # workers in turn, so before the reads were shared the run waited on that worker for good.
    (name,) = make_shards(r, keys, tmp_path / "shards", [6])
    vocab(tmp_path / "vocab.txt")
    log, run_dir = tmp_path / "train.log", tmp_path / "ck" / "share"
    proc = start(
        train_args(redis_url, keys, tmp_path, run_id="share", loader_workers=2, shuffle_buffer=4, max_steps=12), log
    )
    finish(proc, log, timeout=120)
    events = reads(run_dir)
    assert [e["shard"] for e in events if e["fresh"]] == [name]  # read fresh once
    fresh_worker = next(e["worker"] for e in events if e["fresh"])
    other = [e for e in events if e["worker"] != fresh_worker]
    assert other and all(not e["fresh"] and e["shard"] == name and e["step"] < 12 for e in other)
    assert r.hget(keys.shard_seen("share"), name) is not None


def test_a_resumed_rank_cuts_its_reads_log_back_to_the_checkpoint(redis_url, keys, r, tmp_path):
    make_shards(r, keys, tmp_path / "shards", [5] * 12)
    vocab(tmp_path / "vocab.txt")
    log, run_dir = tmp_path / "first.log", tmp_path / "ck" / "cut"
    args = dict(run_id="cut", loader_workers=1, shuffle_buffer=4, checkpoint_every=3)
    proc = start(train_args(redis_url, keys, tmp_path, max_steps=100_000, **args), log)

    def checkpoint() -> int:
        latest = run_dir / "latest.json"
        return json.loads(latest.read_text())["step"] if latest.exists() else 0

    # Killed once the log holds a read the last checkpoint does not cover.
    wait_until(lambda: 0 < checkpoint() <= max(e["step"] for e in reads(run_dir)), 120, "a read past it", proc, log)
    worker = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for pid in worker:  # the loader worker dies with its rank (parent-death signal); make sure
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    at, killed = checkpoint(), reads(run_dir)
    covered = [e for e in killed if e["step"] < at]
    assert len(covered) < len(killed)

    log = tmp_path / "resumed.log"
    proc = start(train_args(redis_url, keys, tmp_path, max_steps=at + 6, resume=True, **args), log)
    finish(proc, log, timeout=120)
    events = reads(run_dir)
    assert events[: len(covered)] == covered and all(e["step"] >= at for e in events[len(covered) :])
    counted = {name: int(n) for name, n in r.hgetall(keys.shard_reads("cut")).items()}
    assert sum(counted.values()) == sum(1 for e in events if not e["missing"])  # each read once in both
