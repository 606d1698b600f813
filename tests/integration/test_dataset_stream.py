"""The streaming dataset against a real redis-server: exactly-once fresh reads, replay, bad data
skipped and counted, and a stream state that continues exactly."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import threading
import time
from pathlib import Path

import pytest

from streamcap import bus
from streamcap.demo.synthetic import add_part, demo_samples, demo_tokenizer, register_shard
from streamcap.formats.records import ShardRecord
from streamcap.trainer.augment import LevelSchedule
from streamcap.trainer.dataset import make_loader
from streamcap.trainer.shardqueue import ReadLedger
from tests.support.loader import loader_settings, stream_dataset


def add_shards(r, keys, shard_dir: Path, sizes: list[int], seed: int = 1) -> list:
    samples, row = [], 0
    for part, n in enumerate(sizes):
        batch = demo_samples(seed, row, n, image_size=48)
        add_part(r, keys, shard_dir, "demo", part, batch)
        samples += batch
        row += n
    return samples


def test_fresh_shards_are_read_once_then_replayed(redis_url, keys, r, tmp_path):
    samples = add_shards(r, keys, tmp_path, [6, 6, 6])
    tok = demo_tokenizer(samples)
    ledger = ReadLedger(r, keys, "t")
    batches = iter(make_loader(stream_dataset(redis_url, keys, tmp_path, tok)))
    fresh = replay = 0
    finished = []
    for _ in range(12):  # 48 samples from 18 that exist
        batch = next(batches)
        assert batch.images.shape == (4, 3, 32, 32) and batch.tokens[:, 0].eq(tok.bos_id).all()
        fresh, replay = fresh + batch.stats["fresh"], replay + batch.stats["replay"]
        finished += batch.finished_shards()
        ledger.finished(batch.finished_shards())
    ledger.commit(step=1)  # what a checkpoint does
    assert fresh == 18 and replay == 30  # every fresh sample exactly once, the rest replayed
    fresh_names = [f.claim.name for f in finished if f.claim.fresh]
    assert sorted(fresh_names) == ["demo-000000-0000.tar", "demo-000001-0000.tar", "demo-000002-0000.tar"]
    group = r.xinfo_groups(keys.shards)[0]
    assert group["pending"] == 0 and group["name"] == "train:t"  # all acknowledged
    reads = {k: int(v) for k, v in r.hgetall(keys.shard_reads("t")).items()}
    assert set(reads) == set(fresh_names) and sum(reads.values()) == len(finished)


def test_two_workers_split_fresh_shards_and_a_restart_rereads_no_acked_shard(redis_url, keys, r, tmp_path):
    samples = add_shards(r, keys, tmp_path, [4] * 6)
    tok = demo_tokenizer(samples)
    ledger = ReadLedger(r, keys, "t")
    loader = make_loader(stream_dataset(redis_url, keys, tmp_path, tok, loader_workers=2, shuffle_buffer=4))
    batches, seen = iter(loader), []
    while sum(f.claim.fresh for f in seen) < 3:
        batch = next(batches)
        seen += batch.finished_shards()
        ledger.finished(batch.finished_shards())
    ledger.commit(step=1)  # a checkpoint
    del batches  # "crash": whatever the workers held stays pending under their consumer names
    acked = {f.claim.name for f in seen if f.claim.fresh}
    batches, again = iter(loader), []
    while len({f.claim.name for f in again if f.claim.fresh} | acked) < 6:
        batch = next(batches)
        again += batch.finished_shards()
        ledger.finished(batch.finished_shards())
    del batches
    fresh_again = [f.claim.name for f in again if f.claim.fresh]
    assert not acked & set(fresh_again)  # nothing acknowledged is read fresh again
    assert sorted(acked | set(fresh_again)) == sorted(f"demo-{p:06d}-0000.tar" for p in range(6))


def test_stream_state_continues_exactly(redis_url, keys, r, tmp_path):
    samples = add_shards(r, keys, tmp_path, [5, 7, 6, 4])
    tok = demo_tokenizer(samples)
    level = LevelSchedule(max_level=0.5)

    def consume(batches, ledger, n):  # as the training loop does: record finished shards per batch
        out = []
        for _ in range(n):
            out.append(next(batches))
            ledger.finished(out[-1].finished_shards())
        return out

    base = stream_dataset(redis_url, keys, tmp_path, tok, level, shuffle_buffer=6)
    expected = consume(iter(base), ReadLedger(r, keys, "t"), 6)

    first = iter(stream_dataset(redis_url, keys, tmp_path, tok, level, shuffle_buffer=6, run="u"))
    ledger = ReadLedger(r, keys, "u")
    got = consume(first, ledger, 2)
    ledger.commit(step=1)  # the checkpoint the state belongs to
    first.close()
    resumed = iter(stream_dataset(redis_url, keys, tmp_path, tok, level, {0: got[-1].state}, shuffle_buffer=6, run="u"))
    got += consume(resumed, ReadLedger(r, keys, "u"), 4)
    assert sum(b.stats["replay"] for b in got) > 0  # the comparison runs into replays too
    for a, b in zip(expected, got):
        assert a.captions == b.captions
        assert a.images.equal(b.images) and a.tokens.equal(b.tokens)


def _member(tar: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def bad_shards(shard_dir: Path, good) -> None:
    """Shards with every kind of damage, each with one good sample mixed in where it can be."""

    def write(name: str, build) -> None:
        with tarfile.open(shard_dir / name, "w") as tar:
            build(tar)

    def sample_members(tar, s, caption=None, json_bytes=None, image=None):
        _member(tar, f"{s.key}.jpg", image if image is not None else s.jpeg)
        _member(tar, f"{s.key}.txt", (caption if caption is not None else s.caption).encode())
        _member(tar, f"{s.key}.json", json_bytes if json_bytes is not None else json.dumps(s.meta).encode())

    write("evil-dotdot.tar", lambda t: (_member(t, "../evil.txt", b"x"), sample_members(t, good[0])))
    write("evil-abs.tar", lambda t: (_member(t, "/etc/evil.jpg", b"x"), sample_members(t, good[1])))
    write(
        "evil-link.tar",
        lambda t: (
            _member(t, "a_000000000009.jpg", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
            sample_members(t, good[2]),
        ),
    )
    write("huge-member.tar", lambda t: sample_members(t, good[3]))
    data = bytearray((shard_dir / "huge-member.tar").read_bytes())
    data[124:136] = b"%011o\0" % (2 * 2**30)  # first member declares 2 GiB
    (shard_dir / "huge-member.tar").write_bytes(bytes(data))
    write(
        "bad-samples.tar",
        lambda t: (
            sample_members(t, good[4], image=b"\xff\xd8garbage"),  # undecodable image
            sample_members(t, good[5], json_bytes=b"{not json"),  # garbage json
            sample_members(t, good[6], caption=" "),  # empty caption
            sample_members(t, good[7]),
        ),
    )
    write("truncated.tar", lambda t: [sample_members(t, s) for s in good[8:12]])
    whole = (shard_dir / "truncated.tar").read_bytes()
    (shard_dir / "truncated.tar").write_bytes(whole[: len(whole) // 2])
    write("flipped.tar", lambda t: [sample_members(t, s) for s in good[12:14]])
    flipped = bytearray((shard_dir / "flipped.tar").read_bytes())
    for i in range(0, 512, 7):
        flipped[i] ^= 0xFF
    (shard_dir / "flipped.tar").write_bytes(bytes(flipped))


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_shards_and_samples_are_skipped_counted_and_named(redis_url, keys, r, tmp_path, caplog, workers):
    good = demo_samples(2, 0, 16, image_size=48)
    bad_shards(tmp_path, good)
    for part, name in enumerate(sorted(p.name for p in tmp_path.glob("*.tar"))):
        register_shard(r, keys, tmp_path, name, "demo", part, 1)
    add_part(r, keys, tmp_path, "demo", 99, good[14:16])
    escape = ShardRecord(name="../outside.tar", source="demo", part=100, seq=0, samples=1, bytes=1)
    r.xadd(keys.shards, bus.encode(escape.to_message()))  # a registry entry pointing out of the shard dir
    tok = demo_tokenizer(good)
    caplog.set_level(logging.WARNING, logger="streamcap.trainer")
    batches = iter(make_loader(stream_dataset(redis_url, keys, tmp_path, tok, loader_workers=workers)))
    problems = 0
    for _ in range(6):  # never raises; replays fill the batches once fresh data runs out
        batch = next(batches)
        problems += batch.stats["problems"]
    del batches
    assert problems >= 9  # dotdot, abs, symlink, 2 GiB, image, json, caption, truncated, flipped
    if workers == 0:  # same process: the log lines are here to read
        text = caplog.text
        for shard in (
            "evil-dotdot.tar",
            "evil-abs.tar",
            "evil-link.tar",
            "huge-member.tar",
            "truncated.tar",
            "flipped.tar",
            "bad-samples.tar/",
        ):
            assert shard in text, shard
        assert "does not decode" in text and "empty caption" in text
        assert "'../outside.tar' is not a file name inside the shard dir" in text


def test_a_redis_outage_longer_than_the_clients_retries_is_waited_out(redis_server, redis_url, keys, r, tmp_path):
    from streamcap.trainer.shardqueue import ShardQueue

    add_shards(r, keys, tmp_path, [3])
    impatient = bus.connect(redis_url, retries=0, connect_timeout=0.5)  # gives up at once, unlike a worker
    queue = ShardQueue(impatient, keys, "t", "t-r0-w0")
    queue.ensure_group()
    redis_server.kill()
    restarter = threading.Timer(2.0, redis_server.start)
    restarter.start()
    try:
        started = time.monotonic()
        claim = queue.next_fresh(0)  # fails, waits for the server, retries
        assert claim is not None and claim.name == "demo-000000-0000.tar"
        assert time.monotonic() - started >= 1.5
    finally:
        restarter.join()
        impatient.close()


def lone_worker_stream(r, keys, shard_dir: Path, consumer: str):
    """The sample stream of the one loader worker of a one-rank job, batches of one sample."""
    from streamcap.trainer.shardqueue import ShardQueue, job_consumers
    from streamcap.trainer.stream import SampleStream

    cfg = loader_settings(keys, shard_dir, batch_size=1, shuffle_buffer=2, fresh_wait_ms=0)
    queue = ShardQueue(r, keys, "t", consumer)
    return SampleStream(queue, cfg, on_problem=lambda *_: None, worker_seed=1, job_consumers=job_consumers("t", 1, 1))


def test_shards_a_dying_incarnation_claimed_under_the_same_name_are_adopted(redis_url, keys, r, tmp_path, monkeypatch):
    """A loader worker can outlive its rank for a few seconds; after a fast restart, what it
    claims under the shared consumer name must still be read (once), not left pending."""
    import streamcap.trainer.stream
    from streamcap.trainer.shardqueue import consumer_name

    monkeypatch.setattr(streamcap.trainer.stream, "ORPHAN_CHECK_EVERY_S", 0.0)  # check at every claim
    add_shards(r, keys, tmp_path, [3, 3])
    name = consumer_name("t", 0, 0)
    stream = lone_worker_stream(r, keys, tmp_path, name)
    stream.start()
    stream.next_sample()
    # The previous incarnation's worker, still alive, takes the next two shards as they land.
    for part, first_row in ((2, 6), (3, 9)):
        add_part(r, keys, tmp_path, "demo", part, demo_samples(1, first_row, 3, image_size=48))
    r.xreadgroup("train:t", name, {keys.shards: ">"}, count=2)
    finished = []
    for _ in range(60):  # 12 fresh samples exist; the rest are replays
        stream.next_sample()
        finished += stream.take_finished()
    fresh = sorted(f.claim.name for f in finished if f.claim.fresh)
    assert fresh == [f"demo-{p:06d}-0000.tar" for p in range(4)]  # each exactly once, strays included


def test_shards_held_by_consumers_outside_the_job_are_taken_over_and_read_once(
    redis_url, keys, r, tmp_path, monkeypatch
):
    import streamcap.trainer.stream
    from streamcap.trainer.shardqueue import consumer_name

    monkeypatch.setattr(streamcap.trainer.stream, "ORPHAN_CHECK_EVERY_S", 0.0)  # check at every claim
    add_shards(r, keys, tmp_path, [3, 3, 3])
    r.xgroup_create(keys.shards, "train:t", id="0", mkstream=True)
    r.xreadgroup("train:t", consumer_name("t", 5, 0), {keys.shards: ">"}, count=2)  # a rank this job no longer has
    stream = lone_worker_stream(r, keys, tmp_path, consumer_name("t", 0, 0))
    finished = []
    for _ in range(40):  # 9 fresh samples exist; the rest are replays
        stream.next_sample()
        finished += stream.take_finished()
    fresh = sorted(f.claim.name for f in finished if f.claim.fresh)
    assert fresh == [f"demo-{p:06d}-0000.tar" for p in range(3)]  # each exactly once


def test_reads_are_recorded_once_by_the_checkpoint_that_covers_them(r, keys):
    from streamcap.trainer.shardqueue import FinishedShard, ShardClaim

    def counts(run):
        return {k: int(v) for k, v in r.hgetall(keys.shard_reads(run)).items()}

    fresh = FinishedShard(ShardClaim("a.tar", 5, fresh=True, entry_id="0-1"), samples=5)
    replay = FinishedShard(ShardClaim("b.tar", -1, fresh=False), samples=4)
    gone = FinishedShard(ShardClaim("c.tar", -1, fresh=False), samples=0, missing=True)
    ledger = ReadLedger(r, keys, "run", rank=1)
    ledger.finished([fresh, replay, gone])
    assert counts("run") == {}  # a crash now must leave nothing counted: the resumed run reads them again
    saved = ledger.unacknowledged  # what the checkpoint of step 3 saves, before it commits
    assert ledger.commit(3) and counts("run") == {"a.tar": 1, "b.tar": 1}
    assert ledger.unacknowledged == []
    # A run resumed from that checkpoint finds its commit applied: no second count.
    ReadLedger(r, keys, "run", rank=1).commit_saved(3, saved)
    assert counts("run") == {"a.tar": 1, "b.tar": 1}
    # Another rank's commit, or an older one, does not stand for this rank's.
    ReadLedger(r, keys, "run", rank=0).commit_saved(3, [replay])
    ReadLedger(r, keys, "run", rank=1).commit_saved(5, [replay])
    assert counts("run") == {"a.tar": 1, "b.tar": 3}


@pytest.mark.parametrize("workers", [0, 2])
def test_balanced_replay_keeps_every_shards_reads_close_to_the_mean(redis_url, keys, r, tmp_path, workers):
    # Fresh shards stop coming after the first 8: from then on every shard is a replay. Picked
    # uniformly, the first shards pulled ahead by chance (and, as shards land, by their head start).
    samples = add_shards(r, keys, tmp_path, [4] * 8)
    tok = demo_tokenizer(samples)
    ledger = ReadLedger(r, keys, "t")
    loader = make_loader(stream_dataset(redis_url, keys, tmp_path, tok, loader_workers=workers, shuffle_buffer=4))
    reads: dict[str, int] = {}
    fresh: list[str] = []
    for step, batch in zip(range(100), loader):
        for shard in batch.finished_shards():
            reads[shard.claim.name] = reads.get(shard.claim.name, 0) + 1
            fresh += [shard.claim.name] if shard.claim.fresh else []
        ledger.finished(batch.finished_shards())
        if step % 10 == 9:
            ledger.commit(step)
    assert sorted(fresh) == sorted(reads) and len(fresh) == 8  # fresh first, each exactly once
    # Each worker keeps its own reads within one of each other: the job's, within one per worker.
    assert max(reads.values()) - min(reads.values()) <= max(workers, 1) + 1, reads


def test_a_worker_replays_the_shards_it_knows_while_redis_is_down(redis_server, keys, r, tmp_path):
    from benchmarks.redis_proxy import RedisProxy

    samples = add_shards(r, keys, tmp_path, [4, 4, 4])
    tok = demo_tokenizer(samples)
    with RedisProxy(redis_server.port) as proxy:
        loader = make_loader(stream_dataset(proxy.url, keys, tmp_path, tok, shuffle_buffer=4))
        batches = iter(loader)
        before = [next(batches) for _ in range(4)]  # the 12 fresh samples, then replays
        assert sum(b.stats["fresh"] for b in before) == 12
        proxy.blackhole(120)
        during = [next(batches) for _ in range(6)]
        assert proxy.holding  # made while Redis was unreachable, not after it came back
        assert all(b.stats["replay"] == 4 for b in during)
        del batches
