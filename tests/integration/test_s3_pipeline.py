"""The done-when of shards in object storage: `streamcap download` and `streamcap train` as two
processes that share no shard directory, only a bucket on a real SeaweedFS (killed and restarted
mid-run), and Redis. Every fresh shard is read exactly once, and the audit finds nothing lost or
twice. Plus: an object deleted under the trainer is counted and skipped, not a crash."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from streamcap import bus
from streamcap.common.store import open_store
from streamcap.trainer.shardcache import ShardCache
from tests.integration.test_s3_downloader import enqueue_into
from tests.support.fleet import trainer_args
from tests.support.pipeline import CAPTION, final_audit, paced_rows, vocab_file, wait_until


def _reads(run_dir: Path) -> list[dict]:
    path = run_dir / "reads-rank0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _registered(r, keys: bus.Keys) -> set[str]:
    return {bus.decode(fields)["name"] for _, fields in r.xrange(keys.shards)}


@pytest.mark.timeout(900)  # a tiny CPU training run of 400 steps on a loaded machine, plus an S3 outage
def test_download_and_train_through_a_bucket_that_dies_mid_run(
    r, keys, redis_url, bucket, s3_server, image_host, fleets, tmp_path
):
    shard_dir, run = bucket + "/p", "s3run"
    enqueue_into(r, keys, shard_dir, paced_rows(image_host, 80, delay_s=0.05), tmp_path, part_size=10)
    vocab = vocab_file(tmp_path / "vocab.txt", [CAPTION])
    fleet = fleets(redis_url, keys, shard_dir)
    downloader = fleet.start("--exit-when-empty", "--shard-max-samples", "4", "--spool-dir", str(tmp_path / "spool"))
    args = trainer_args(run, tmp_path / "ck", vocab, max_steps=400, checkpoint_every=10, shuffle_buffer=4)
    trainer = fleet.start(*args, "--shard-cache", str(tmp_path / "cache"), command="train")
    wait_until(lambda: len(_reads(tmp_path / "ck" / run)) >= 2, 180, "the trainer reads its first shards")

    s3_server.kill()  # SIGKILL mid-run: uploads and downloads fail until it is back
    time.sleep(3)
    s3_server.start()

    fleet.wait_all(300)  # the downloader finishes the queue, the trainer its steps; both exit 0
    assert downloader.returncode == 0 and trainer.returncode == 0
    fresh = [e["shard"] for e in _reads(tmp_path / "ck" / run) if e["fresh"]]
    registered = _registered(r, keys)
    assert len(fresh) == len(set(fresh)), "a fresh shard was read twice"
    assert set(fresh) == registered, f"fresh shards never read: {sorted(registered - set(fresh))}"
    assert not [e for e in _reads(tmp_path / "ck" / run) if e["missing"]]
    assert not list((tmp_path / "spool").rglob("*.tar"))
    final_audit(r, keys, shard_dir)


def test_an_object_deleted_under_the_trainer_is_counted_and_skipped(bucket, tmp_path):
    store = open_store(bucket)
    (tmp_path / "a.tar").write_bytes(b"\0" * 1024)
    store.put_file(tmp_path / "a.tar", "a.tar")
    cache = ShardCache(store, tmp_path / "cache", max_bytes=0)
    problems: list[tuple[str, str]] = []
    path, _ = cache.fetch("a.tar", lambda name, why: problems.append((name, why)))
    assert path is not None and path.read_bytes() == b"\0" * 1024
    store.delete("b.tar")
    path, _ = cache.fetch("b.tar", lambda name, why: problems.append((name, why)))
    assert path is None and problems == [("b.tar", f"shard object {bucket}/b.tar does not exist")]
    store.client.put_object(Bucket=store.bucket, Key="c.tar", Body=b"x" * 10, Metadata={"crc32": "1"})
    path, _ = cache.fetch("c.tar", lambda name, why: problems.append((name, why)))
    assert path is None and "fails its checksum" in problems[-1][1]
    assert not (tmp_path / "cache" / "c.tar").exists()


def test_an_unreachable_bucket_is_data_wait_until_it_answers(bucket, s3_server, tmp_path):
    store = open_store(bucket)
    (tmp_path / "a.tar").write_bytes(b"1" * 100)
    store.put_file(tmp_path / "a.tar", "a.tar")
    s3_server.kill()
    cache = ShardCache(open_store(bucket), tmp_path / "cache", max_bytes=0)
    tries = {"n": 0}

    def give_up() -> bool:  # asked between retries: bring the server back after a few
        tries["n"] += 1
        if tries["n"] == 2:
            s3_server.start()
        return tries["n"] > 50

    path, waited = cache.fetch("a.tar", lambda *_: None, give_up)
    assert path is not None and path.read_bytes() == b"1" * 100 and waited > 0
