"""Shards in a bucket against shards on local disk: upload, download, and what a reader waits.

    .venv/bin/python benchmarks/s3.py                          # a SeaweedFS of its own on 127.0.0.1, ~1 min
    .venv/bin/python benchmarks/s3.py --shards 24 --shard-mb 64 --url s3://bucket/bench   # a real bucket (AWS_* set)

1. write+upload: PartWriter writes a part's shards (real JPEG samples, fsync) into a folder, then
   they are uploaded (the downloader's spool path) or, for the baseline, stay where they are.
2. read: every shard is read through `iter_samples` from local disk, and from the bucket through
   the trainer's ShardCache with a cold cache (fetch on demand) and after the prefetcher's work
   (warm). The seconds spent getting shards to the reader, per shard, are the data wait a loader
   worker adds to a step when the bucket, not the GPU, is the bottleneck.
All runs in one process, one after another, on the same machine.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap.common.store import open_store  # noqa: E402
from streamcap.formats.records import PartRecord  # noqa: E402
from streamcap.formats.shards import iter_samples  # noqa: E402
from streamcap.shardwriter.writer import PartWriter  # noqa: E402
from streamcap.trainer.shardcache import ShardCache  # noqa: E402


def jpeg(rng: np.random.Generator, side: int = 384) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def write_part(folder: Path, shards: int, shard_bytes: int) -> list[Path]:
    rng = np.random.default_rng(0)
    images = [jpeg(rng) for _ in range(8)]
    per_shard = max(1, shard_bytes // (len(images[0]) + 2048))
    rows = shards * per_shard
    part = PartRecord(source="bench", part=0, start=0, end=rows)
    with PartWriter(folder, part, max_samples=per_shard, max_bytes=shard_bytes * 2, owner="bench") as w:
        for row in range(rows):
            w.add(row=row, image=images[row % len(images)], image_ext="jpg", caption="a bench", meta={})
        stats = w.finish()
    return [folder / s.name for s in stats.shards]


def read_all(path: Path) -> int:
    return sum(1 for _ in iter_samples(path))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=12)
    ap.add_argument("--shard-mb", type=int, default=32)
    ap.add_argument("--url", help="an existing bucket (AWS_* variables set); default: start SeaweedFS here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="streamcap-bench-s3-"))
    server = None
    try:
        url = args.url
        if url is None:
            from streamcap.demo.seaweed import SeaweedS3

            server = SeaweedS3(work / "weed")
            server.start()
            os.environ.update(server.env)
            url = server.make_bucket("bench") + "/run"
        store = open_store(url)
        t = time.perf_counter()
        paths = write_part(work / "local", args.shards, args.shard_mb * 2**20)
        written = time.perf_counter() - t
        total = sum(p.stat().st_size for p in paths) / 1e6
        t = time.perf_counter()
        for p in paths:
            store.put_file(p, p.name)
        uploaded = time.perf_counter() - t
        print(f"write (PartWriter, fsync) {len(paths)} shards, {total:.0f} MB: {total / written:.0f} MB/s")
        print(
            f"write+upload: {total / (written + uploaded):.0f} MB/s "
            f"(upload alone {total / uploaded:.0f} MB/s) vs local disk {total / written:.0f} MB/s"
        )
        t = time.perf_counter()
        samples = sum(read_all(p) for p in paths)
        local_s = time.perf_counter() - t
        cache = ShardCache(store, work / "cache", max_bytes=0)
        wait = 0.0
        t = time.perf_counter()
        for p in paths:
            got, waited = cache.fetch(p.name, lambda *a: print("problem", a))
            wait += waited
            read_all(got)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm_wait = 0.0
        for p in paths:
            got, waited = cache.fetch(p.name, lambda *a: print("problem", a))
            warm_wait += waited
            read_all(got)
        warm_s = time.perf_counter() - t
        print(f"read {samples} samples: local disk {total / local_s:.0f} MB/s, {samples / local_s:.0f} samples/s")
        print(
            f"read from the bucket, cold cache: {total / cold_s:.0f} MB/s, {samples / cold_s:.0f} samples/s; "
            f"data wait {wait / len(paths) * 1000:.0f} ms per shard ({100 * wait / cold_s:.0f}% of the read)"
        )
        print(
            f"read from the bucket, prefetched (warm cache): {total / warm_s:.0f} MB/s; "
            f"data wait {warm_wait / len(paths) * 1000:.0f} ms per shard"
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
