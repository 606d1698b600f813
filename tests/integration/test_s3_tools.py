"""The shard tools on a bucket (a real SeaweedFS, streamcap.demo.seaweed): `shards gc`, the budget,
`shards verify --quarantine`, `shards reconcile`, `shards ls`, `streamcap audit` and `streamcap
status` with `--shard-dir s3://...` do to the bucket's objects what they do to a directory's
files. The parts are written locally, uploaded, and the local copies removed, so nothing here can
pass by reading a directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streamcap import bus
from streamcap.cli import app
from streamcap.common.store import ShardStore, open_store
from streamcap.entrypoint import run_app
from streamcap.ops import status
from streamcap.shardwriter.audit import audit
from streamcap.shardwriter.registry import registered_shards
from streamcap.shardwriter.retention import disk_pressure, shard_bytes_on_disk
from tests.integration.test_shardwriter_retention import read, start_run
from tests.support.parts import enqueue_source, process_part


def bucket_with_parts(r, keys, tmp_path: Path, url: str, parts: int = 3) -> tuple[ShardStore, list]:
    """`parts` committed parts of 8 rows (4 samples per shard), whose files live only in the bucket."""
    made = tmp_path / "made"
    enqueue_source(r, keys, made, "src", rows=8 * parts, part_size=8)
    for _ in range(parts):
        assert process_part(r, keys, made, "w1").applied
    store = open_store(url)
    for path in sorted(made.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            store.put_file(path, path.relative_to(made).as_posix())
    shutil.rmtree(made)
    return store, [s for _, s in registered_shards(r, keys)]


def streamcap(capsys, redis_url: str, keys: bus.Keys, url: str, *args: str) -> tuple[int, str]:
    code = run_app(app, [*args, "--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", url])
    out = capsys.readouterr()
    return code, out.out + out.err


def in_bucket(store: ShardStore, prefix: str = "") -> list[str]:
    return [i.name for i in store.list(prefix, ".tar")]


def test_gc_deletes_read_shards_in_the_bucket_oldest_first_within_its_budget(
    r, keys, redis_url, bucket, tmp_path, capsys
):
    url = bucket + "/run"
    store, shards = bucket_with_parts(r, keys, tmp_path, url)
    names = [s.name for s in shards]
    assert shard_bytes_on_disk(url) == sum(s.bytes for s in shards)
    start_run(r, keys, "a")
    read(r, keys, "a", names[:-1])  # the newest is unread: never deleted, whatever the budget
    budget = sum(s.bytes for s in shards) - shards[0].bytes - 1  # deleting two shards suffices
    code, out = streamcap(capsys, redis_url, keys, url, "shards", "gc", "--max-disk-bytes", str(budget))
    assert code == 0, out
    assert f"deleted {names[0]}" in out and f"deleted {names[1]}" in out and "within budget" in out
    assert in_bucket(store) == names[2:]
    assert r.smembers(keys.shards_deleted) == set(names[:2])
    code, out = streamcap(capsys, redis_url, keys, url, "shards", "gc", "--max-disk-bytes", "1", "--json")
    assert code == 0 and json.loads(out)["deleted"] == names[2:-1]
    assert in_bucket(store) == names[-1:]
    assert audit(r, keys, url).ok  # gc's deletions are accounted, not lost


def test_the_budget_counts_the_bucket_and_status_shows_it(r, keys, redis_url, bucket, tmp_path, capsys):
    url = bucket + "/run"
    store, shards = bucket_with_parts(r, keys, tmp_path, url, parts=1)
    used = sum(s.bytes for s in shards)
    reason = disk_pressure(r, keys, url, max_disk_bytes=used - 1, min_free_bytes=0)
    assert reason and "over --max-disk-bytes" in reason
    assert r.hget(keys.control, bus.CONTROL_DISK_PAUSED) == reason
    # A bucket has no free space to fall under: the floor guards a downloader's spool disk only.
    assert disk_pressure(r, keys, url, max_disk_bytes=used, min_free_bytes=1 << 60) is None
    assert r.hgetall(keys.control) == {}
    disk = status.collect(r, keys, url)["shards"]["disk"]
    assert disk == {"path": url, "free": None, "total": None, "used": used, "objects": len(shards)}
    code, out = streamcap(capsys, redis_url, keys, url, "status")
    assert code == 0 and "bucket" in out and url in out, out
    store.delete(shards[0].name)
    assert status.collect(r, keys, url)["shards"]["disk"]["used"] == used - shards[0].bytes


def test_verify_quarantine_moves_bad_objects_to_the_quarantine_prefix(r, keys, redis_url, bucket, tmp_path, capsys):
    url = bucket + "/run"
    store, shards = bucket_with_parts(r, keys, tmp_path, url, parts=2)
    flipped, torn = shards[0].name, shards[1].name
    local = tmp_path / flipped
    store.get_file(flipped, local)
    data = bytearray(local.read_bytes())
    data[512 + 200] ^= 0xFF  # inside the first image: its image_crc32 no longer matches
    local.write_bytes(bytes(data))
    store.put_file(local, flipped)  # stored with the new bytes' checksum: only reading the tar finds it
    s3 = store  # an object whose bytes differ from the checksum it was stored with
    s3.client.put_object(Bucket=s3.bucket, Key=s3.prefix + torn, Body=b"x" * 1000, Metadata={"crc32": "1"})
    code, out = streamcap(capsys, redis_url, keys, url, "shards", "verify")
    assert code == 1 and f"BAD {url}/{flipped}" in out and f"BAD {url}/{torn}" in out, out
    assert "image_crc32" in out and "CRC32" in out
    assert in_bucket(store) == [s.name for s in shards]  # without --quarantine nothing moves
    code, out = streamcap(capsys, redis_url, keys, url, "shards", "verify", "--quarantine")
    assert code == 1 and f"(moved to {url}/quarantine/{flipped})" in out, out
    assert in_bucket(store, "quarantine/") == sorted(f"quarantine/{n}" for n in (flipped, torn))
    assert in_bucket(store) == [s.name for s in shards[2:]]
    assert {s.name for _, s in registered_shards(r, keys)} == {s.name for s in shards[2:]}
    assert r.smembers(keys.shards_lost) == {flipped, torn}
    code, out = streamcap(capsys, redis_url, keys, url, "shards", "verify", f"{url}/{shards[2].name}")
    assert code == 0 and "verify: 1 shards" in out, out
    code, out = streamcap(capsys, redis_url, keys, url, "shards", "verify")
    assert code == 0 and f"verify: {len(shards) - 2} shards" in out, out


def test_reconcile_rebuilds_the_registry_from_the_bucket(r, keys, redis_url, bucket, tmp_path, capsys):
    url = bucket + "/run"
    store, shards = bucket_with_parts(r, keys, tmp_path, url)
    gone = shards[1]
    store.delete(gone.name)  # deleted by hand: its rows must come back through a retry
    for key in r.scan_iter(match=f"{keys.namespace}:*"):  # as a FLUSHALL would, for this pipeline
        r.delete(key)
    assert not audit(r, keys, url).ok
    code, out = streamcap(capsys, redis_url, keys, url, "shards", "reconcile", "--requeue-missing", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"], out
    assert report["sources_restored"] == ["src"]
    assert report["parts_restored"] == ["src:0", "src:1", "src:2"]
    assert report["shards_marked_deleted"] == [gone.name]
    assert report["rows_requeued"] == gone.last_row - gone.first_row + 1
    registered = {s.name for _, s in registered_shards(r, keys)}
    assert registered == {s.name for s in shards}
    assert r.smembers(keys.shards_deleted) == r.smembers(keys.shards_lost) == {gone.name}
    assert len(report["retry_parts"]) == 1  # the gone shard's rows, fetched again by a downloader
    after = audit(r, keys, url)
    assert after.lost == 0 and after.duplicates == 0, after.discrepancies
    assert any(gone.name in line for line in after.discrepancies + after.notes)


def test_ls_says_each_shard_state_from_the_bucket(r, keys, redis_url, bucket, tmp_path, capsys):
    url = bucket + "/run"
    store, shards = bucket_with_parts(r, keys, tmp_path, url, parts=1)
    store.delete(shards[0].name)
    code, out = streamcap(capsys, redis_url, keys, url, "shards", "ls", "--json")
    assert code == 0, out
    assert [(row["name"], row["state"]) for row in json.loads(out)] == [
        (shards[0].name, "missing"),
        *[(s.name, "ok") for s in shards[1:]],
    ]


def test_audit_names_a_shard_gone_from_the_bucket(r, keys, redis_url, bucket, tmp_path, capsys):
    url = bucket + "/run"
    store, shards = bucket_with_parts(r, keys, tmp_path, url, parts=1)
    code, out = streamcap(capsys, redis_url, keys, url, "audit")
    assert code == 0, out
    store.delete(shards[0].name)
    code, out = streamcap(capsys, redis_url, keys, url, "audit")
    assert code == 1 and "DISCREPANCY" in out and shards[0].name in out, out
