"""Downloaders writing into a bucket (--shard-dir s3://...): against a real SeaweedFS and a real
redis-server. Parts are written into a local spool, uploaded, and registered only once every
upload returned; the local copies go; a bucket that cannot be used pauses the worker uncounted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streamcap import bus
from streamcap.common.store import open_store
from streamcap.downloader.config import EnqueueSettings
from streamcap.downloader.enqueue import describe_source, enqueue
from streamcap.downloader.service import Worker
from streamcap.shardwriter import registry
from tests.support import timing
from tests.support.pipeline import final_audit, paced_rows, pending_parts, wait_until, worker_settings, write_parquet


def enqueue_into(r, keys: bus.Keys, shard_dir: str, rows, tmp_path: Path, part_size: int = 10, name: str = "src"):
    path = write_parquet(tmp_path / f"{name}.parquet", rows)
    record, _ = describe_source(EnqueueSettings(part_size=part_size, name=name), str(path))
    assert enqueue(r, keys, shard_dir, record).added
    return record


def spooled_files(spool: Path) -> list[Path]:
    return [p for p in spool.rglob("*") if p.is_file()] if spool.exists() else []


def ten_rows_worker(r, keys: bus.Keys, redis_url: str, shard_dir: str, image_host, tmp_path: Path) -> Worker:
    """A batch worker over one enqueued part of 10 rows that all succeed, 3 per shard, spooled in tmp_path/spool."""
    enqueue_into(r, keys, shard_dir, paced_rows(image_host, 10, failures=False), tmp_path)
    cfg = worker_settings(
        redis_url, keys, shard_dir, allow_private=True, spool_dir=tmp_path / "spool", shard_max_samples=3
    )
    return Worker(cfg, r)


async def test_parts_land_in_the_bucket_and_leave_no_local_copy(r, keys, redis_url, bucket, image_host, tmp_path):
    shard_dir = bucket + "/run"
    enqueue_into(r, keys, shard_dir, paced_rows(image_host, 45), tmp_path)
    spool = tmp_path / "spool"
    cfg = worker_settings(redis_url, keys, shard_dir, allow_private=True, spool_dir=spool, shard_max_samples=4)
    assert await Worker(cfg, r).serve() == 0
    store = open_store(shard_dir)
    registered = {s.name for _, s in registry.registered_shards(r, keys)}
    assert registered and registered == {i.name for i in store.list(suffix=".tar")}
    assert len(registry.load_part_stats(store)) == 5
    assert registry.load_source(store, "src") is not None
    assert spooled_files(spool) == []  # uploaded, committed, removed
    final_audit(r, keys, shard_dir)


async def test_wrong_credentials_pause_the_worker_and_claim_nothing(
    r, keys, redis_url, bucket, image_host, tmp_path, monkeypatch
):
    shard_dir = bucket + "/run"
    enqueue_into(r, keys, shard_dir, paced_rows(image_host, 20, failures=False), tmp_path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    cfg = worker_settings(
        redis_url, keys, shard_dir, allow_private=True, spool_dir=tmp_path / "spool", exit_when_empty=False
    )
    worker = Worker(cfg, r)
    task = asyncio.create_task(worker.serve())
    try:
        hb = keys.heartbeat(bus.ROLE_DOWNLOADER, worker.consumer)
        await asyncio.to_thread(wait_until, lambda: r.hget(hb, "state") == "paused", 60, "the heartbeat says paused")
        beat = r.hgetall(hb)
        assert beat["reason"].startswith("shard store unavailable: ") and "credentials were refused" in beat["reason"]
        assert "\n" not in beat["reason"]
        assert pending_parts(r, keys) == 0 and r.xlen(keys.parts_dead) == 0  # nothing claimed, nothing dead
        # The right key again: the worker resumes by itself and does every part.
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", open_secret())
        worker.spool.store._client = None  # a fixed key reaches a running worker as a new client would
        await asyncio.to_thread(
            wait_until, lambda: int(r.hget(keys.stats, bus.STAT_PARTS_COMMITTED) or 0) == 2, 90, "both parts commit"
        )
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(task, 60) == 0
    final_audit(r, keys, shard_dir)


def open_secret() -> str:
    from streamcap.demo.seaweed import SECRET_KEY

    return SECRET_KEY


async def test_a_missing_bucket_pauses_the_worker_with_one_line(r, keys, redis_url, bucket, image_host, tmp_path):
    shard_dir = "s3://no-such-bucket-here/run"
    enqueue_into(r, keys, bucket, paced_rows(image_host, 10, failures=False), tmp_path)  # sources saved elsewhere
    cfg = worker_settings(
        redis_url, keys, shard_dir, allow_private=True, spool_dir=tmp_path / "spool", exit_when_empty=False
    )
    worker = Worker(cfg, r)
    task = asyncio.create_task(worker.serve())
    try:
        await asyncio.to_thread(wait_until, lambda: worker.pausing.state == "paused", 60, "the worker pauses")
        assert (
            "bucket 'no-such-bucket-here' does not exist" in worker.pausing.reason and "\n" not in worker.pausing.reason
        )
        assert pending_parts(r, keys) == 0 and r.xlen(keys.parts_dead) == 0
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(task, 60) == 0


async def test_an_upload_failing_mid_part_releases_it_uncounted(r, keys, redis_url, bucket, image_host, tmp_path):
    """The bucket goes away between the claim check and the upload: the part is given back
    (no strike), the worker pauses, and once the bucket is back the part commits once."""
    shard_dir = bucket + "/run"
    worker = ten_rows_worker(r, keys, redis_url, shard_dir, image_host, tmp_path)
    real_put = worker.spool.store.put_file
    calls = {"n": 0}

    def flaky_put(local, name):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard's upload: the endpoint is gone
            from streamcap.common.store import StoreUnavailable

            raise StoreUnavailable(f"cannot upload {name} in {shard_dir}: EndpointConnectionError: (injected)")
        return real_put(local, name)

    worker.spool.store.put_file = flaky_put
    assert await worker.serve() == 0
    assert worker.stats.parts_env_failed == 1 and worker.stats.parts_failed == 0
    assert worker.stats.parts_committed == 1
    assert spooled_files(tmp_path / "spool") == []
    final_audit(r, keys, shard_dir)


async def test_a_worker_that_loses_its_part_mid_upload_uploads_nothing_more(
    r, keys, redis_url, bucket, image_host, tmp_path
):
    """Another worker takes the part over after the first shard's upload (as after a lease that
    lapsed while the process stalled): the first attempt stops before its next object, so it
    never writes over the new owner's objects; the part still commits exactly once."""
    shard_dir = bucket + "/run"
    worker = ten_rows_worker(r, keys, redis_url, shard_dir, image_host, tmp_path)
    real_put = worker.spool.store.put_file
    uploads: list[str] = []

    def put_then_lose_the_part(local, name):
        info = real_put(local, name)
        uploads.append(name)
        if len(uploads) == 1:
            (entry,) = r.xpending_range(keys.parts, bus.GROUP_DOWNLOADERS, "-", "+", 10)
            r.xclaim(keys.parts, bus.GROUP_DOWNLOADERS, "another-worker", 0, [entry["message_id"]])
        return info

    worker.spool.store.put_file = put_then_lose_the_part
    assert await worker.serve() == 0  # the other "worker" never renews: the lease brings the part back
    assert worker.stats.parts_superseded == 1 and worker.stats.parts_committed == 1
    registered = sorted(s.name for _, s in registry.registered_shards(r, keys))
    assert len(registered) == 4  # 10 rows, 3 per shard
    # One object of the lost attempt, then every shard and the stats file of the one that committed.
    assert uploads == [registered[0], *registered, "src-000000.stats.json"], uploads
    final_audit(r, keys, shard_dir)


def test_a_downloader_killed_mid_upload_registers_nothing_and_the_part_is_redelivered(
    r, keys, redis_url, bucket, image_host, tmp_path, fleets
):
    shard_dir = bucket + "/run"
    enqueue_into(r, keys, shard_dir, paced_rows(image_host, 30, failures=False), tmp_path)
    fleet = fleets(redis_url, keys, shard_dir)
    common = (
        "--exit-when-empty",
        "--lease-seconds",
        "3",
        "--shard-max-samples",
        "3",
        "--spool-dir",
        str(tmp_path / "spool"),
    )
    victim = fleet.start(*common, env={"STREAMCAP_FAULT": "during_upload", "STREAMCAP_FAULT_PART": "src:0"})
    assert timing.wait(victim, 90) == -9, fleet.tail(victim)
    fleet.killed.add(victim.pid)
    assert "fault injection: SIGKILL at during_upload" in fleet.tail(victim)
    # Some of src:0's shards are in the bucket, none is registered, the part is not done.
    assert open_store(shard_dir).list("src-000000-", ".tar")
    assert not [s for _, s in registry.registered_shards(r, keys) if s.part_id == "src:0"]
    assert not r.sismember(keys.parts_done, "src:0")
    fleet.start(*common)
    fleet.wait_all(120)
    assert r.hget(keys.parts_deliveries, "src:0") == "2"  # redelivered once the lease ran out
    assert spooled_files(tmp_path / "spool") == []  # the dead worker's spool swept by the next one
    final_audit(r, keys, shard_dir)
