"""Shards in a bucket against shards on local disk: upload, download, what a reader waits, and
what a training run waits.

    .venv/bin/python benchmarks/s3.py                          # a SeaweedFS of its own on 127.0.0.1, ~4 min
    .venv/bin/python benchmarks/s3.py --shards 24 --shard-mb 64 --url s3://bucket/bench   # a real bucket (AWS_* set)
    .venv/bin/python benchmarks/s3.py --train-steps 0          # leave out the training runs

1. write+upload: PartWriter writes a part's shards (real JPEG samples, fsync) into a folder, then
   they are uploaded (the downloader's spool path) or, for the baseline, stay where they are.
2. read: every shard is read through `iter_samples` from local disk, and from the bucket through
   the trainer's ShardCache with a cold cache (fetch on demand) and after the prefetcher's work
   (warm). The seconds spent getting shards to the reader, per shard, are the data wait a loader
   worker adds to a step when the bucket, not the GPU, is the bottleneck.
3. train: the same registered shards (demo-world samples) trained on by `streamcap train` (tiny
   preset, CPU) three times: from a local shard dir, from the bucket through --shard-cache, and
   from the bucket behind a link throttled to --slow-mbps (a far bucket on a thin line). Each
   prints its samples/s and data wait from metrics.jsonl: what the bucket costs a run.
All runs on the same machine, one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap import bus  # noqa: E402
from streamcap.bus.embedded import EmbeddedRedis, free_port  # noqa: E402
from streamcap.common.store import open_store  # noqa: E402
from streamcap.demo.synthetic import commit_written, demo_samples, demo_tokenizer  # noqa: E402
from streamcap.demo.synthetic import write_part as write_demo_part  # noqa: E402
from streamcap.formats.records import PartRecord  # noqa: E402
from streamcap.formats.shards import iter_samples  # noqa: E402
from streamcap.shardwriter.writer import PartWriter  # noqa: E402
from streamcap.trainer.metrics_sink import read_metrics  # noqa: E402
from streamcap.trainer.shardcache import ShardCache  # noqa: E402

TRAIN_PARTS, TRAIN_PART_SAMPLES, TRAIN_IMAGE_PX = 8, 128, 160


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


class ThrottledLink:
    """A TCP proxy on 127.0.0.1 whose replies flow at most `mbps` megabytes per second (and wait
    `rtt_s` before each chunk): a far bucket on a thin line, in front of a near one."""

    def __init__(self, upstream_port: int, mbps: float, rtt_s: float = 0.02) -> None:
        self.upstream_port, self.rate, self.rtt_s = upstream_port, mbps * 1e6, rtt_s
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThrottledLink:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pump(client_r, up_w, 0.0), self._pump(up_r, client_w, self.rate))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(64 * 1024):
                if rate:
                    await asyncio.sleep(self.rtt_s / 2 + len(chunk) / rate)
                writer.write(chunk)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()


def training_data(work: Path, r, url: str) -> tuple[Path, Path, bus.Keys, bus.Keys]:
    """The same parts registered twice: in namespace `disk` from a folder, in `bucket` from `url`."""
    local, staging = work / "train-shards", work / "train-staging"
    keys_disk, keys_bucket = bus.Keys("disk"), bus.Keys("bucket")
    store = open_store(url)
    for part in range(TRAIN_PARTS):
        samples = demo_samples(seed=5, start=part * TRAIN_PART_SAMPLES, count=TRAIN_PART_SAMPLES, image_size=160)
        for folder, keys in ((local, keys_disk), (staging, keys_bucket)):
            stats = write_demo_part(folder, "train", part, samples)
            commit_written(r, keys, stats)
        for path in staging.iterdir():
            if not path.name.startswith("."):
                store.put_file(path, path.name)
                path.unlink()
    vocab = work / "vocab.txt"
    demo_tokenizer(demo_samples(seed=5, start=0, count=300, image_size=8), size=300).save(vocab)
    return local, vocab, keys_disk, keys_bucket


def train_once(
    work: Path, name: str, redis_url: str, keys: bus.Keys, shard_dir: str, vocab: Path, steps: int, env: dict[str, str]
) -> dict[str, float]:
    run_dir = work / "ck" / name
    args = [
        sys.executable, "-m", "streamcap.trainer",
        "--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", shard_dir,
        "--run-id", name, "--checkpoint-dir", str(work / "ck"), "--tokenizer", str(vocab),
        "--preset", "tiny", "--no-pretrained", "--device", "cpu", "--image-size", "64",
        "--batch-size", "32", "--max-steps", str(steps), "--warmup-steps", "10", "--loader-workers", "2",
        "--shuffle-buffer", "64", "--log-every", "10", "--sample-every", "0", "--histogram-every", "0",
        "--checkpoint-every", str(steps), "--fresh-wait-ms", "500",
        "--shard-cache", str(work / f"cache-{name}"),
    ]  # fmt: skip
    log = work / f"train-{name}.log"
    t = time.perf_counter()
    with open(log, "wb") as out:
        rc = subprocess.run(
            args, env=os.environ | env | {"OMP_NUM_THREADS": "1"}, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    seconds = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"the {name} training run exited {rc}; see {log}:\n{log.read_text()[-2000:]}")
    records = [m for m in read_metrics(run_dir / "metrics.jsonl") if "data_wait_pct" in m]
    steady = records[1:] or records  # past the first load of the model and the first shard
    mean = lambda field: sum(float(m[field]) for m in steady) / max(1, len(steady))  # noqa: E731
    return {
        "seconds": seconds,
        "samples_per_s": mean("samples_per_s"),
        "data_wait_pct": mean("data_wait_pct"),
        "fresh": sum(float(m.get("fresh_samples", 0)) for m in records),
        "replay": sum(float(m.get("replay_samples", 0)) for m in records),
    }


def compare_training(work: Path, url: str, steps: int, slow_mbps: float, server) -> None:
    with EmbeddedRedis(work / "redis") as redis_server:
        r = bus.connect(redis_server.url)
        local, vocab, keys_disk, keys_bucket = training_data(work, r, url)
        runs = {"disk": train_once(work, "disk", redis_server.url, keys_disk, str(local), vocab, steps, {})}
        runs["bucket"] = train_once(work, "bucket", redis_server.url, keys_bucket, url, vocab, steps, {})
        if server is not None and slow_mbps:
            with ThrottledLink(server.port, slow_mbps) as link:
                slow = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{link.port}"}
                runs["slow"] = train_once(work, "slow", redis_server.url, keys_bucket, url, vocab, steps, slow)
    base = runs["disk"]
    names = {"disk": "local shard dir", "bucket": "bucket + shard cache", "slow": f"bucket at {slow_mbps:g} MB/s"}
    print(f"train ({steps} steps, tiny preset, CPU; {TRAIN_PARTS} shards of {TRAIN_PART_SAMPLES} samples):")
    for name, run in runs.items():
        print(
            f"  {names[name]:<24} {run['samples_per_s']:6.0f} samples/s ({run['samples_per_s'] / base['samples_per_s']:.2f}x disk), "
            f"data wait {run['data_wait_pct']:5.1f} % (disk {base['data_wait_pct']:.1f} %), "
            f"fresh {run['fresh']:.0f} / replay {run['replay']:.0f}, {run['seconds']:.0f} s"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=12)
    ap.add_argument("--shard-mb", type=int, default=32)
    ap.add_argument("--url", help="an existing bucket (AWS_* variables set); default: start SeaweedFS here")
    ap.add_argument("--train-steps", type=int, default=200, help="steps of each training run (0: no training runs)")
    ap.add_argument("--slow-mbps", type=float, default=0.1, help="the throttled link's MB/s (0: no throttled run)")
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
        if args.train_steps:
            compare_training(work, url.rstrip("/") + "-train", args.train_steps, args.slow_mbps, server)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
