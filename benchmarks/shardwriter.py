"""Shard writing speed: streamcap's PartWriter against webdataset.ShardWriter, fsync for both.

    .venv/bin/python benchmarks/shardwriter.py                  # ~1 minute on 2 cores
    .venv/bin/python benchmarks/shardwriter.py --samples 4000 --rounds 5 --dir /mnt/shards

Both write the same samples (real JPEG bytes of three sizes, a caption and a json each) into
shards of --shard-samples samples and fsync every shard. PartWriter also does what its
guarantee needs (temporary names, rename, directory fsync, a stats file per part); webdataset
gets an fsync of each finished shard through its `post` hook. Rounds alternate between the two
so disk caching favours neither; the median of each is reported, plus the import cost of each
writer in a fresh interpreter (webdataset imports torch when it is installed).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap.formats.records import PartRecord  # noqa: E402
from streamcap.formats.shards import sample_key  # noqa: E402
from streamcap.shardwriter.writer import PartWriter  # noqa: E402

SIZES = (256, 512, 1024)  # stored image sizes a downloader produces at common --image-size values


def photo_like_jpeg(size: int, seed: int) -> bytes:
    """A JPEG with smooth structure plus noise, so it compresses like a photo, not like a flat fill."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y - seed), np.sin(4 * (x + y))], axis=-1)
    pixels = (base * 80 + 128 + rng.normal(0, 10, (size, size, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_samples(n: int) -> list[tuple[bytes, str, dict]]:
    images = [photo_like_jpeg(SIZES[i % len(SIZES)], i) for i in range(12)]
    return [
        (
            images[i % len(images)],
            f"a photo of thing number {i}",
            {
                "url": f"https://example.com/{i}.jpg",
                "caption_raw": f"A photo of thing number {i}.",
                "width": 256,
                "height": 256,
                "sha256": "0" * 64,
            },
        )
        for i in range(n)
    ]


def payload_bytes(samples) -> int:
    return sum(len(img) + len(cap) + 200 for img, cap, _ in samples)


def run_streamcap(samples, out: Path, shard_samples: int, part_size: int) -> None:
    for start in range(0, len(samples), part_size):
        part = PartRecord("bench", start // part_size, start, min(start + part_size, len(samples)))
        with PartWriter(out, part, max_samples=shard_samples, max_bytes=1 << 40, owner="bench") as w:
            for row in range(part.start, part.end):
                image, caption, meta = samples[row]
                w.add(row=row, image=image, image_ext="jpg", caption=caption, meta=meta)
            w.finish()


def _fsync_file(name: str) -> None:
    with open(name, "rb") as f:
        os.fsync(f.fileno())


def run_webdataset(samples, out: Path, shard_samples: int, part_size: int) -> None:
    import webdataset as wds

    pattern = str(out / "bench-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_samples, maxsize=1 << 40, post=_fsync_file, verbose=0) as sink:
        for row, (image, caption, meta) in enumerate(samples):
            sink.write({"__key__": sample_key("bench", row), "jpg": image, "txt": caption, "json": meta})


def timed(fn, samples, base: Path, **kw) -> float:
    out = Path(tempfile.mkdtemp(dir=base))
    try:
        start = time.perf_counter()
        fn(samples, out, **kw)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out)


def import_seconds(statement: str) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shard-samples", type=int, default=250)
    ap.add_argument("--part-size", type=int, default=500, help="rows per part (one stats file each)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=ROOT / ".bench-shards", help="a directory on the disk to measure")
    args = ap.parse_args()
    samples = make_samples(args.samples)
    mb = payload_bytes(samples) / 1e6
    args.dir.mkdir(parents=True, exist_ok=True)
    import webdataset  # noqa: F401  # outside the timing: its import cost is reported separately

    kw = dict(shard_samples=args.shard_samples, part_size=args.part_size)
    times: dict[str, list[float]] = {"streamcap": [], "webdataset": []}
    try:
        for _ in range(args.rounds):
            times["streamcap"].append(timed(run_streamcap, samples, args.dir, **kw))
            times["webdataset"].append(timed(run_webdataset, samples, args.dir, **kw))
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    ours, theirs = (mb / statistics.median(times[k]) for k in ("streamcap", "webdataset"))
    print(
        f"shardwriter benchmark: {args.samples} samples ({mb:.1f} MB, JPEG {'/'.join(map(str, SIZES))} px), "
        f"{args.shard_samples} per shard, fsync each shard, median of {args.rounds} rounds"
    )
    print(f"  streamcap PartWriter      {ours:8.1f} MB/s  (temp name, fsync, rename, dir fsync, stats file)")
    print(f"  webdataset.ShardWriter    {theirs:8.1f} MB/s  (fsync of each shard in its post hook)")
    print(f"  ratio streamcap/webdataset {ours / theirs:.2f}  (goal >= 1.0)")
    ours_import = import_seconds("import streamcap.shardwriter.writer")
    wds_import = import_seconds("import webdataset")
    print(
        f"  import cost: shardwriter.writer {ours_import:.2f} s, webdataset {wds_import:.2f} s (per downloader process)"
    )


if __name__ == "__main__":
    main()
