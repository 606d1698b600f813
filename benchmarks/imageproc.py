"""Image processing CPU per image: the simplejpeg JPEG path against the Pillow-only path.

    .venv/bin/python benchmarks/imageproc.py                          # ~1 minute on 2 cores
    .venv/bin/python benchmarks/imageproc.py --rounds 9 --cache-dir /tmp/bench
    .venv/bin/python benchmarks/imageproc.py --pool                   # + threads vs processes, ~1 more minute

The images are the download benchmark's (benchmarks/download.py make_images: photo-like JPEG,
PNG and WebP, 40-300 KB, 320-1600 px; cached under --cache-dir), processed as it stores them
(256 px keep_ratio, JPEG quality 95). One process, time.process_time; rounds alternate between
the two paths so machine noise hits both alike; each figure is the median over rounds, with
the range. Also reported: what the hand-off back to the event loop costs (pickling the result,
its size) and, for the JPEG encoder, Pillow against simplejpeg on the stored images (time,
luma PSNR against the unencoded pixels, size).

--pool runs the same images from an event loop through ImagePool (--workers processes, 2 by
default) and through as many threads in the event loop's process, and reports CPU per image of
the event loop's process and of all processes, against process_image alone (worker CPU read
from /proc). Measured (2-core CI machine, 2 workers): processes 0.27 ms in the event loop's
process and 5.6-6.0 ms in all, threads 5.1-5.3 ms in all, process_image alone 4.7-5.2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.download import make_images  # noqa: E402
from streamcap.downloader.imagepool import ImagePool  # noqa: E402
from streamcap.downloader.imageproc import (  # noqa: E402
    ImageOptions,
    ProcessedImage,
    _process_image_pillow,
    _simplejpeg,
    process_image,
)

OPTS = ImageOptions(image_size=256, resize_mode="keep_ratio", image_format="jpg", quality=95)
SHARES = {"JPEG": 0.85, "PNG": 0.10, "WEBP": 0.05}  # the download benchmark's mix


def cpu_ms(fn: Callable[[bytes, ImageOptions], object], images: list[bytes]) -> float:
    start = time.process_time()
    for data in images:
        fn(data, OPTS)
    return (time.process_time() - start) / len(images) * 1000


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def paths(by_format: dict[str, list[bytes]], rounds: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {fmt: {"pillow": [], "simplejpeg": []} for fmt in by_format}
    for images in by_format.values():  # one warm-up pass each, then alternate
        cpu_ms(_process_image_pillow, images[:8])
        cpu_ms(process_image, images[:8])
    for _ in range(rounds):
        for fmt, images in by_format.items():
            times[fmt]["pillow"].append(cpu_ms(_process_image_pillow, images))
            times[fmt]["simplejpeg"].append(cpu_ms(process_image, images))
    return times


def report_paths(by_format: dict[str, list[bytes]], times: dict[str, dict[str, list[float]]]) -> None:
    print(f"\nCPU ms per image, median of {len(next(iter(times.values()))['pillow'])} rounds (range)")
    print(f"{'format':<7} {'images':>6} {'Pillow path':>19} {'simplejpeg path':>19} {'new/old':>8}")
    mix = {"pillow": 0.0, "simplejpeg": 0.0}
    for fmt, t in times.items():
        old, new = statistics.median(t["pillow"]), statistics.median(t["simplejpeg"])
        ratios = [n / o for n, o in zip(t["simplejpeg"], t["pillow"])]
        print(
            f"{fmt:<7} {len(by_format[fmt]):>6} {spread(t['pillow']):>19} {spread(t['simplejpeg']):>19} "
            f"{statistics.median(ratios):>8.2f}"
        )
        mix["pillow"] += SHARES.get(fmt, 0) * old
        mix["simplejpeg"] += SHARES.get(fmt, 0) * new
    print(
        f"{'mix':<7} {'85/10/5':>6} {mix['pillow']:>19.2f} {mix['simplejpeg']:>19.2f} "
        f"{mix['simplejpeg'] / mix['pillow']:>8.2f}"
    )


def report_handoff(images: list[bytes]) -> None:
    results = [process_image(d, OPTS) for d in images]
    start = time.process_time()
    blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results]
    dumps = (time.process_time() - start) / len(results) * 1000
    start = time.process_time()
    for b in blobs:
        pickle.loads(b)
    loads = (time.process_time() - start) / len(results) * 1000
    print(
        f"\nhand-off per image: body {statistics.mean(map(len, images)) / 1000:.0f} KB out, "
        f"pickled result {statistics.mean(map(len, blobs)) / 1000:.1f} KB back; "
        f"pickle.dumps {dumps:.3f} ms (worker), pickle.loads {loads:.3f} ms (event loop)"
    )


def report_encoders(images: list[bytes], rounds: int) -> None:
    codec = _simplejpeg()
    if codec is None:
        print("\nsimplejpeg is not installed: no encoder comparison")
        return
    results = [process_image(d, OPTS) for d in images]
    stored = [Image.open(io.BytesIO(r.data)).convert("RGB") for r in results if isinstance(r, ProcessedImage)]

    def pillow(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=OPTS.quality)
        return buf.getvalue()

    def turbo(im: Image.Image) -> bytes:  # what simplejpeg needs: the pixels as an array first
        return codec.encode_jpeg(np.asarray(im), quality=OPTS.quality, colorspace="RGB", colorsubsampling="420")

    def luma(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]

    print(f"\nJPEG encoder, quality {OPTS.quality} 4:2:0, on the {len(stored)} stored images")
    for name, fn in (("Pillow", pillow), ("simplejpeg", turbo)):
        ms = []
        for _ in range(rounds):
            start = time.process_time()
            out = [fn(im) for im in stored]
            ms.append((time.process_time() - start) / len(stored) * 1000)
        psnr = [
            10 * np.log10(255**2 / np.mean((luma(np.asarray(im)) - luma(np.asarray(Image.open(io.BytesIO(o))))) ** 2))
            for im, o in zip(stored, out)
        ]
        print(
            f"  {name:<11} {spread(ms)} ms, luma PSNR {statistics.mean(psnr):.2f} dB, "
            f"{statistics.mean(map(len, out)) / 1000:.1f} KB"
        )


# --- threads vs processes ---------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def run_all(submit: Callable[[bytes], object], images: list[bytes], in_flight: int = 8) -> None:
    gate = asyncio.Semaphore(in_flight)

    async def one(data: bytes) -> None:
        async with gate:
            assert isinstance(await submit(data), ProcessedImage)

    await asyncio.gather(*(one(d) for d in images))


async def with_processes(images: list[bytes], workers: int) -> tuple[float, float, float]:
    pool = ImagePool(OPTS, workers=workers)
    try:
        await pool.start()
        await run_all(pool.process, images[:16])  # warm: imports, first decodes
        pids = [w.process.pid for w in pool._workers]
        workers0, loop0, wall0 = sum(map(proc_cpu_s, pids)), time.process_time(), time.perf_counter()
        await run_all(pool.process, images)
        loop_s, wall = time.process_time() - loop0, time.perf_counter() - wall0
        workers_s = sum(map(proc_cpu_s, pids)) - workers0
    finally:
        pool.close()
    return loop_s, loop_s + workers_s, wall


async def with_threads(images: list[bytes], workers: int) -> tuple[float, float, float]:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(workers) as executor:

        def submit(data: bytes) -> asyncio.Future:
            return loop.run_in_executor(executor, process_image, data, OPTS)

        await run_all(submit, images[:16])
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await run_all(submit, images)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu, cpu, wall  # one process: the event loop's is everything


def report_pool(images: list[bytes], rounds: int, workers: int) -> None:
    rows: dict[str, list[tuple[float, float, float]]] = {"processes": [], "threads": []}
    alone = []
    for _ in range(rounds):
        alone.append(cpu_ms(process_image, images))
        rows["processes"].append(asyncio.run(with_processes(images, workers)))
        rows["threads"].append(asyncio.run(with_threads(images, workers)))
    n = len(images)
    print(
        f"\nfrom an event loop, {workers} workers, {n} images (the mix) x {rounds} rounds; CPU ms per image, median (range)"
    )
    print(f"  process_image alone, one thread: {spread(alone)}")
    print(f"  {'':<10} {'event loop process':>20} {'all processes':>20} {'images/s':>18}")
    for name, runs in rows.items():
        loop_ms = [r[0] / n * 1000 for r in runs]
        all_ms = [r[1] / n * 1000 for r in runs]
        rate = [n / r[2] for r in runs]
        print(f"  {name:<10} {spread(loop_ms):>20} {spread(all_ms):>20} {spread(rate):>18}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/bench"))
    parser.add_argument("--distinct", type=int, default=240, help="images, as the download benchmark makes them")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pool", action="store_true", help="also threads vs processes from an event loop")
    parser.add_argument("--workers", type=int, default=2, help="threads or processes for --pool")
    args = parser.parse_args()
    images = [p.read_bytes() for p in make_images(args.cache_dir, args.distinct)]
    by_format: dict[str, list[bytes]] = {}
    for data in images:
        by_format.setdefault(Image.open(io.BytesIO(data)).format, []).append(data)
    print(f"{len(images)} images: " + ", ".join(f"{len(v)} {k}" for k, v in by_format.items()))
    if _simplejpeg() is None:
        print("simplejpeg is not installed: both paths are Pillow's")
    report_paths(by_format, paths(by_format, args.rounds))
    report_handoff(images)
    report_encoders(by_format["JPEG"][:80], args.rounds)
    if args.pool:
        report_pool(images, max(3, args.rounds // 2), args.workers)
    print(f"\nload average now {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
