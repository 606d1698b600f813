"""Reliability suite (docs/testing.md, fault 11): a trainer rank SIGKILLed while reading shards, then
restarted with `--resume`.

Fresh shards are acknowledged only when a checkpoint covering them is saved, so a rank killed
between checkpoints gets back every shard it held: none is skipped for the first pass, nothing
a checkpoint covered is read fresh again, and replays are counted as replays.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from streamcap import bus
from streamcap.trainer.metrics_sink import read_metrics
from tests.support.fleet import Fleet, children, trainer_args
from tests.support.parts import enqueue_source, process_part
from tests.support.pipeline import final_audit, vocab_file, wait_until

PARTS = 30  # 30 shards of 5 samples (every 7th row of 6 is a failure): ~38 steps of batch 4


def _held(r, keys: bus.Keys, group: str) -> dict[str, str]:
    """Delivered, unacknowledged shards of the run: entry id -> shard name."""
    names = {entry_id: bus.decode(fields)["name"] for entry_id, fields in r.xrange(keys.shards)}
    return {p["message_id"]: names[p["message_id"]] for p in r.xpending_range(keys.shards, group, "-", "+", 1000)}


def _delivered(r, keys: bus.Keys, group: str) -> dict[str, str]:
    info = bus.group_info(r, keys.shards, group)
    if info is None:
        return {}
    last = tuple(map(int, info["last-delivered-id"].split("-")))
    return {i: bus.decode(f)["name"] for i, f in r.xrange(keys.shards) if tuple(map(int, i.split("-"))) <= last}


def _reads(run_dir: Path) -> list[dict]:
    path = run_dir / "reads-rank0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_trainer_killed_mid_read_resumes_without_skipping_or_rereading(r, keys, redis_url, fleets, tmp_path):
    shard_dir, run, group = tmp_path / "shards", "killed", keys.train_group("killed")
    enqueue_source(r, keys, shard_dir, "src", rows=PARTS * 6, part_size=6)
    for _ in range(PARTS):
        assert process_part(r, keys, shard_dir, "writer", max_samples=8).applied
    everything = {s["name"] for s in map(lambda e: bus.decode(e[1]), r.xrange(keys.shards))}
    vocab = vocab_file(tmp_path / "vocab.txt", [f"caption {row}" for row in range(PARTS * 6)])
    run_dir = tmp_path / "ck" / run
    fleet: Fleet = fleets(redis_url, keys, shard_dir)

    def train(*extra: str, **flags: object):
        return fleet.start(
            *trainer_args(run, tmp_path / "ck", vocab, shuffle_buffer=4, **flags), *extra, command="train"
        )

    first = train(max_steps=100_000, checkpoint_every=3)
    # Kill once a checkpoint has acknowledged some shards while the rank holds others.
    wait_until(
        lambda: (
            first.poll() is None
            and (run_dir / "latest.json").exists()
            and len(_delivered(r, keys, group)) > len(_held(r, keys, group)) > 0
        ),
        120,
        "a checkpoint with shards acknowledged and others held",
    )
    for pid in children(first.pid):  # the whole rank, loader workers included, as the OOM killer would
        os.kill(pid, signal.SIGKILL)
    fleet.kill(first)
    held = set(_held(r, keys, group).values())
    stopped_at = json.loads((run_dir / "latest.json").read_text())["step"]
    killed_run = _reads(run_dir)
    # A batch consumed while step k+1 was computed is logged with step k: the checkpoint of
    # step S covers the shards finished at logged steps < S, and none after.
    covered = {e["shard"] for e in killed_run if e["fresh"] and e["step"] < stopped_at}
    lost = {e["shard"] for e in killed_run if e["fresh"] and e["step"] >= stopped_at}
    assert held and covered and stopped_at >= 3
    print(
        f"killed after checkpoint {stopped_at}: {len(covered)} shards covered by it, {len(lost)} finished "
        f"after it, {len(held)} held unacknowledged"
    )

    # One checkpoint, at the end: it acknowledges everything the resumed run finished.
    resumed = train("--resume", max_steps=stopped_at + 50, checkpoint_every=1000)
    fleet.wait_all(150)
    assert f"resuming at step {stopped_at}" in fleet.tail(resumed, 100_000)
    kept, logged = [e for e in killed_run if e["step"] < stopped_at], _reads(run_dir)
    assert logged[: len(kept)] == kept  # the resumed rank cut its reads log back to the checkpoint
    after = logged[len(kept) :]
    fresh = [e["shard"] for e in after if e["fresh"]]
    replays = [e["shard"] for e in after if not e["fresh"]]
    assert (held | lost) - covered <= set(fresh)  # what it held or read uncheckpointed came back to it
    assert not covered & set(fresh)  # nothing a checkpoint covered was read fresh again
    assert covered | set(fresh) == everything and len(fresh) == len(set(fresh))  # none skipped, none twice
    assert replays and set(replays) <= everything and not _held(r, keys, group)
    steps = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["step"] > stopped_at]
    assert sum(m["replay_samples"] for m in steps) >= sum(e["samples"] for e in after if not e["fresh"]) > 0
    assert sum(m["fresh_samples"] + m["replay_samples"] for m in steps) == 4 * 50
    reads = {name: int(n) for name, n in r.hgetall(keys.shard_reads(run)).items()}
    assert all(reads[name] >= 2 for name in replays)  # a replay is counted as another read
    # Reads are counted by the checkpoint covering them: those the kill lost are read again
    # after the resume and counted once, not twice.
    assert sum(reads.values()) == sum(1 for e in logged if not e["missing"])
    final_audit(r, keys, shard_dir)
