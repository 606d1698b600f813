"""Download speed: `streamcap download` against img2dataset on the same rows, plus the CPU floors.

    .venv/bin/python benchmarks/download.py --cache-dir /tmp/bench          # 3,000 rows, tunes both
    .venv/bin/python benchmarks/download.py --quick --cache-dir /tmp/bench  # one setting each, one round
    .venv/bin/python benchmarks/download.py --quick --rows 1000 ...         # ~75 s on 2 cores
    .venv/bin/python benchmarks/download.py --long --quick ...              # 12,000 rows
    .venv/bin/python benchmarks/download.py --quick --streamcap-timeouts '' # streamcap's own defaults
    .venv/bin/python benchmarks/download.py --quick --streamcap-args '--parts-in-flight 16'

The rows
--------
A loopback HTTP server (its own process) serves photo-like JPEG/PNG/WebP images (40-300 KB,
320-1600 px wide; 85/10/5 %, see make_images) with ~100 ms latency per request. A url+caption
parquet of --rows rows (3,000; --long: 12,000) points at it. What the server does for a row is
fixed by the row number (row_kind), so both tools, and every round, see the same rows:

    kind          share  what the server does                                         stored?
    image         84.8 % the image                                                    yes
    redirect       2   % 302 to /i/<row>?final=1, which serves the image              yes
    slow           1   % sleeps 4-7 s, then sends the whole image                     yes
    huge           0.2 % one 8000x8000 JPEG (~3 MB, smooth so it compresses)          yes
    404            3   % 404                                                          no
    500            2   % 500                                                          no
    cut            2   % promises the image's Content-Length, sends half, closes      no
    html           2   % an HTML page sent as image/jpeg                              no
    hang           1   % accepts, sends nothing for an hour                           no
    hang_headers   0.5 % sends 200 + headers (the image's Content-Length), then
                         nothing for an hour                                          no
    drip           0.5 % sends headers, then one byte every 2 s; closes after DRIP_S  no
    noai           0.5 % the image, with `X-Robots-Tag: noai`                         no (both refuse)
    empty          0.5 % 200 with an empty body                                       no

Stored rows are 88 % of all. `noai`: streamcap refuses opted-out images by default
(--opt-out-directives noai,noimageai,noindex,noimageindex, reason opted_out) and so does
img2dataset (its --disallowed_header_directives defaults to the same four); both count it
as a failure. `drip` is there because a per-read timeout never fires on it: only a deadline
for the whole row ends it before the server gives up.

How the tools run
-----------------
Both write WebDataset at 256 px keep_ratio, JPEG quality 95, with 2 processes and no retries,
and give one row the same 10 s: img2dataset with its default `--timeout 10` (urllib's socket
timeout, which applies to the connect and to each read separately: a `drip` row holds its
thread until the server closes it, DRIP_S), streamcap with STREAMCAP_TIMEOUTS
(`--connect-timeout 10 --read-timeout 10 --total-timeout 10 --retries 0`; the total one ends a
`drip` row at 10 s). `--streamcap-timeouts ''` runs streamcap with its own defaults instead, and
`--streamcap-args '...'` appends any flags to its command (the last value of a flag wins), to
try new downloader flags without editing this file. streamcap's source is enqueued in parts of
250 rows and runs with --exit-when-empty, which returns once no part (retry parts included)
is pending or in flight. img2dataset writes shards of min(1000, rows / 2) samples, so both of
its processes get work even on short runs. Each tool runs with a few concurrency settings,
alternating between the tools, for --rounds rounds, and its best run (images/s) is reported;
the machine is shared, and the best of several runs is the least disturbed one. --quick: one
setting each, one round. img2dataset is installed on first use into its own venv under
--cache-dir (it pins old packages); the generated images are cached there too.

What is reported
----------------
Per run: stored images, wall s (start to exit), images/s, CPU ms per stored image (every
process of the tool's tree: /proc sampled every 0.25 s, and the kernel's count for the root
and the descendants it waited for; the larger of the two), and for streamcap the exit code,
the audit's lost/duplicates and its CPU split: `image workers` (the processes of the image
pool: children of a multiprocessing forkserver, found by their command line since their comm
is `python`) and `rest` (the supervisor, the downloader processes with their event loops,
fetching and shard writing, the forkserver itself, the resource tracker). img2dataset resizes in threads of its download processes,
so its CPU cannot be split that way.

The summary takes the best run of each tool:
- images/s, and the ratio streamcap / img2dataset against the issue's goal: >= 2 at
  >= 12,000 rows, >= 1.3 at 3,000 rows (shorter runs are held to 1.3);
- `successes`: both tools' stored images and whether they agree within 1 %;
- `image floor`: CPU ms per image of streamcap's process_image alone, in this process, over the
  bodies of the rows both should store (each distinct body timed with time.process_time() and
  weighted by how many stored rows serve it, which equals processing every stored row once);
  each tool's CPU ms/image divided by it is its overhead factor (goal for streamcap: <= 2x);
- `pool floor`: images/s of process_image over the same bodies in a pool of one process per
  core, which no downloader can beat on this machine (goal: streamcap reaches >= 75 % of it).
  A short run cannot: its wall time is mostly the 10 s the last timed-out rows take (and, for
  img2dataset, the DRIP_S a drip row holds its shard open), so judge this share with --long;
- `audit`: `python -m streamcap audit --json --expect-done` after the run (same Redis and shard
  dir): lost, missing, duplicates, discrepancies;
- `failures`: streamcap's failures by reason (from the audit) and img2dataset's errors (its
  *_stats.json status_dict).
The benchmark exits 1 when a streamcap run exits non-zero or its audit is not clean.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import multiprocessing as mp
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap.bus.embedded import EmbeddedRedis, free_port  # noqa: E402

IMAGES_VERSION = "v3"
HUGE_SIDE = 8000
LATENCY_S = 0.1
HANG_S = 3600  # longer than any timeout either tool uses
DRIP_S = 40  # a drip row's server gives up after this long, so a tool without a row deadline still ends
DRIP_EVERY_S = 2.0
SLOW_S = (4.0, 7.0)  # within every timeout, but long enough to hold a part or a shard open
# The row mix: (kind, share, stored). Shares are of all rows; the rest are plain images.
MIX = (
    ("404", 0.03, False),
    ("500", 0.02, False),
    ("hang", 0.01, False),
    ("cut", 0.02, False),
    ("html", 0.02, False),
    ("hang_headers", 0.005, False),
    ("drip", 0.005, False),
    ("slow", 0.01, True),
    ("redirect", 0.02, True),
    ("noai", 0.005, False),
    ("empty", 0.005, False),
    ("huge", 0.002, True),
)
STORED_KINDS = frozenset({"image"} | {kind for kind, _, stored in MIX if stored})
ROWS, LONG_ROWS = 3000, 12_000
# The budget a user gets from img2dataset's defaults, given to streamcap too; change it here or
# with --streamcap-timeouts.
I2D_TIMEOUT_S = 10
STREAMCAP_TIMEOUTS = "--connect-timeout 10 --read-timeout 10 --total-timeout 10 --retries 0"
OURS_CONCURRENCY = (128, 256, 512)
I2D_THREADS = (32, 64, 128)
SUCCESS_TOLERANCE = 0.01
PART_SIZE = 250


# --- the served images ------------------------------------------------------------------------


def make_images(directory: Path, count: int, seed: int = 7) -> list[Path]:
    """`count` photo-like images, 85 % JPEG, 10 % PNG, 5 % WebP, each 40-300 KB (cached).

    The shares follow what web image datasets hold (LAION-style URL lists are mostly JPEG,
    then PNG, a few percent WebP); the formats cost very different CPU per image (on the
    2-core CI machine: JPEG ~6 ms, PNG ~9 ms, WebP ~34 ms in streamcap's pipeline).
    """
    done = directory / f"images-{IMAGES_VERSION}-{count}"
    if (done / "DONE").exists():
        return sorted(p for p in done.iterdir() if p.suffix == ".bin")
    import numpy as np
    from PIL import Image

    done.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        fmt = "JPEG" if i % 20 < 17 else "PNG" if i % 20 < 19 else "WEBP"
        width = int(rng.integers(320, 500)) if fmt == "PNG" else int(rng.integers(320, 1601))
        height = int(width * rng.uniform(0.6, 1.0))
        for attempt in range(10):  # lower the quality first, the size only when that is not enough
            data = _photo(np, Image, rng, width, height, fmt, attempt)
            if 40_000 <= len(data) <= 300_000:
                break
            if len(data) < 40_000 or attempt >= 5:
                width = int(width * (0.85 if len(data) > 300_000 else 1.15))
                height = int(width * rng.uniform(0.6, 1.0))
        (done / f"{i:05d}.bin").write_bytes(data)
    (done / "DONE").write_text("ok")
    return sorted(done.glob("*.bin"))


def _photo(np, Image, rng, width: int, height: int, fmt: str, attempt: int) -> bytes:
    """Smooth structure + fine grain, so files compress like photos (not noise, not flat)."""
    base = Image.fromarray((rng.random((height // 24 + 2, width // 24 + 2, 3)) * 255).astype(np.uint8))
    pixels = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    grain = rng.normal(0, 3 if fmt == "PNG" else 7, (height, width, 3)).astype(np.int16)
    im = Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    quality = max(50, 90 - 8 * attempt)
    im.save(buf, fmt, **({} if fmt == "PNG" else {"quality": quality}))
    return buf.getvalue()


def huge_image_path(image_dir: Path) -> Path:
    """The `huge` rows' 8000x8000 JPEG, made once next to the images (not *.bin: not in the cycle)."""
    path = image_dir / f"huge-{HUGE_SIDE}.jpg"
    if path.exists():
        return path
    import numpy as np
    from PIL import Image

    # Without grain the 64 Mpixel image is a few MB, like a big photo from a CDN, yet it still
    # costs a full-size decode to any tool that does not shrink while decoding.
    rng = np.random.default_rng(11)
    base = Image.fromarray((rng.random((HUGE_SIDE // 250 + 2, HUGE_SIDE // 250 + 2, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    base.resize((HUGE_SIDE, HUGE_SIDE), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=85)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # another run may be making it too
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path


def row_kind(row: int) -> str:
    """What the server does for a row: "image", or one of MIX (fixed per row)."""
    x = random.Random(row * 7919 + 13).random()
    for kind, share, _ in MIX:
        if x < share:
            return kind
        x -= share
    return "image"


def body_index(row: int, distinct: int) -> int:
    """Which of the served images a row gets (-1: the huge one)."""
    return -1 if row_kind(row) == "huge" else row % distinct


def _slow_seconds(row: int) -> float:
    return SLOW_S[0] + (SLOW_S[1] - SLOW_S[0]) * random.Random(row).random()


def serve(port: int, image_dir: Path, drip_s: float = DRIP_S) -> None:
    """The benchmark's HTTP server (runs in its own process: `download.py --serve PORT DIR`)."""
    import asyncio

    from aiohttp import web

    images = [p.read_bytes() for p in sorted(image_dir.glob("*.bin"))]
    huge = huge_image_path(image_dir).read_bytes()

    async def handle(request: web.Request) -> web.StreamResponse:
        row = int(request.match_info["row"])
        # A redirect's target is the plain image, so the redirect costs one more round trip only.
        kind = "image" if request.query.get("final") else row_kind(row)
        data = huge if kind == "huge" else images[row % len(images)]
        await asyncio.sleep(LATENCY_S)
        if kind in ("404", "500"):
            return web.Response(status=int(kind))
        if kind == "hang":
            await asyncio.sleep(HANG_S)
        if kind == "html":
            return web.Response(body=b"<html><body>Sorry, not here</body></html>" * 20, content_type="image/jpeg")
        if kind == "redirect":
            return web.Response(status=302, headers={"Location": f"/i/{row}?final=1"})
        if kind == "empty":
            return web.Response(body=b"", content_type="image/jpeg")
        if kind == "slow":
            await asyncio.sleep(_slow_seconds(row))
        if kind in ("cut", "hang_headers", "drip"):
            # The full Content-Length is promised; StreamResponse.prepare sends the headers now.
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(len(data))})
            await resp.prepare(request)
            if kind == "cut":
                await resp.write(data[: len(data) // 2])
            elif kind == "hang_headers":
                await asyncio.sleep(HANG_S)
            else:
                try:
                    for i in range(int(drip_s / DRIP_EVERY_S)):
                        await resp.write(data[i : i + 1])
                        await asyncio.sleep(DRIP_EVERY_S)
                except ConnectionError:  # the client gave up first (aiohttp's reset errors subclass it)
                    return resp
            if request.transport is not None:
                request.transport.close()
            return resp
        headers = {"X-Robots-Tag": "noai"} if kind == "noai" else None
        return web.Response(body=data, content_type="image/jpeg", headers=headers)

    app = web.Application()
    app.router.add_get("/i/{row}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=1024, shutdown_timeout=1)


# --- measuring a process tree ------------------------------------------------------------------------

FORKSERVER_MARK = "multiprocessing.forkserver"
SPAWN_MARK = "--multiprocessing-fork"


def streamcap_role(cmdline: str, parent_cmdline: str) -> str:
    """`image workers` for a process of streamcap's image pool, `rest` for any other.

    The pool starts its workers from a forkserver, and a forked process keeps its parent's argv:
    a process whose command line and whose parent's both name the forkserver is one of its
    workers, one whose parent's does not is the forkserver itself. Where forkserver is missing
    the pool spawns, and spawned children carry --multiprocessing-fork (the resource tracker,
    a spawned helper too, does not).
    """
    if FORKSERVER_MARK in cmdline and FORKSERVER_MARK in parent_cmdline:
        return "image workers"
    if SPAWN_MARK in cmdline:
        return "image workers"
    return "rest"


class TreeCPU:
    """CPU seconds of a process and all its descendants, sampled from /proc while they run.

    Each process is counted at the largest value seen, so its last interval before it was
    reaped is missed; `classify(cmdline, parent_cmdline)` names a role per process.
    """

    def __init__(self, root_pid: int, interval: float = 0.25, classify=None) -> None:
        self.root, self.interval, self.classify = root_pid, interval, classify
        self.ticks: dict[tuple[int, str], int] = {}  # (pid, start time) -> utime + stime
        self.roles: dict[tuple[int, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")

    def seconds_by_role(self) -> dict[str, tuple[float, int]]:
        """role -> (CPU seconds, processes)."""
        out: dict[str, list] = {}
        for key, ticks in self.ticks.items():
            entry = out.setdefault(self.roles.get(key, "all"), [0.0, 0])
            entry[0] += ticks / os.sysconf("SC_CLK_TCK")
            entry[1] += 1
        return {role: (s, n) for role, (s, n) in out.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry)] = (int(fields[1]), fields[19], int(fields[11]) + int(fields[12]))
        tree, changed = {self.root}, True
        while changed:
            changed = False
            for pid, (ppid, _, _) in stats.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        for pid in tree:
            if pid in stats:
                ppid, start, ticks = stats[pid]
                key = (pid, start)
                self.ticks[key] = max(self.ticks.get(key, 0), ticks)
                # Classified again until it is a worker: between fork and exec a new process
                # still shows its parent's command line.
                if self.classify is not None and self.roles.get(key) != "image workers":
                    self.roles[key] = self.classify(_cmdline(pid), _cmdline(ppid))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def timed(cmd: list[str], env: dict | None = None, log: Path | None = None, classify=None) -> dict:
    """Wall seconds, CPU seconds of the tree, CPU by role and exit code of a command."""
    start = time.monotonic()
    with open(log or os.devnull, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        with TreeCPU(proc.pid, classify=classify) as cpu:
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    # The sampler misses each process's last interval; the kernel's count covers the root and
    # every descendant that was waited for, but not an orphan. Both are lower bounds.
    total = max(cpu.seconds, usage.ru_utime + usage.ru_stime)
    return {"wall": wall, "cpu": total, "roles": cpu.seconds_by_role(), "code": proc.returncode}


# --- the two downloaders ------------------------------------------------------------------------


def streamcap_command(concurrency: int, timeouts: str, extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamcap",
        "download",
        "--processes",
        "2",
        "--concurrency",
        str(concurrency),
        "--per-host",
        str(concurrency),
        "--image-size",
        "256",
        "--resize-mode",
        "keep_ratio",
        "--quality",
        "95",
        "--min-size",
        "0",
        "--max-aspect-ratio",
        "0",
        "--allow-private",
        "--exit-when-empty",
        "--log-level",
        "WARNING",
        *shlex.split(timeouts),
        *shlex.split(extra),
    ]


def run_streamcap(parquet: Path, work: Path, concurrency: int, timeouts: str, extra: str) -> dict:
    out = work / f"streamcap-{concurrency}"
    shutil.rmtree(out, ignore_errors=True)
    with EmbeddedRedis(data_dir=out / "redis") as redis_server:
        env = {**os.environ, "REDIS_URL": redis_server.url, "STREAMCAP_SHARD_DIR": str(out / "shards")}
        cli = [sys.executable, "-m", "streamcap"]
        subprocess.run(
            [*cli, "enqueue", str(parquet), "--part-size", str(PART_SIZE)], env=env, check=True, capture_output=True
        )
        run = timed(streamcap_command(concurrency, timeouts, extra), env, out / "download.log", streamcap_role)
        from streamcap import bus

        successes = int(bus.connect(redis_server.url).hget("streamcap:stats", "samples") or 0)
        audited = subprocess.run(
            [*cli, "audit", "--json", "--expect-done"], env=env, capture_output=True, text=True, check=False
        )
    try:
        audit = json.loads(audited.stdout)
    except ValueError:
        audit = {"error": (audited.stderr or audited.stdout).strip().splitlines()[-1:] or ["no output"]}
    image_cpu = run["roles"].get("image workers", (0.0, 0))
    return {
        "tool": "streamcap",
        "setting": f"--concurrency {concurrency}",
        **run,
        "image_cpu": image_cpu[0],
        "image_procs": image_cpu[1],
        "successes": successes,
        "audit": audit,
        "reasons": audit.get("failures_by_reason", {}),
    }


def ensure_img2dataset(cache: Path) -> Path:
    venv = cache / "img2dataset-venv"
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        print(f"installing img2dataset into {venv} (first run only) ...", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "img2dataset"], check=True)
    return exe


def i2d_shard_size(rows: int) -> int:
    """img2dataset gives each process whole shards: at least two, so both processes work."""
    return max(1, min(1000, -(-rows // 2)))


def run_img2dataset(exe: Path, parquet: Path, work: Path, threads: int, rows: int) -> dict:
    out = work / f"img2dataset-{threads}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        str(exe),
        "--url_list",
        str(parquet),
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_format",
        "webdataset",
        "--output_folder",
        str(out / "shards"),
        "--processes_count",
        "2",
        "--thread_count",
        str(threads),
        "--image_size",
        "256",
        "--resize_mode",
        "keep_ratio",
        "--encode_quality",
        "95",
        "--encode_format",
        "jpg",
        "--timeout",
        str(I2D_TIMEOUT_S),
        "--retries",
        "0",
        "--number_sample_per_shard",
        str(i2d_shard_size(rows)),
        "--distributor",
        "multiprocessing",
        "--enable_wandb",
        "False",
    ]
    out.mkdir(parents=True)
    run = timed(cmd, {**os.environ, "WANDB_MODE": "disabled"}, out / "img2dataset.log")
    successes, reasons = 0, collections.Counter()
    for p in (out / "shards").glob("*_stats.json"):
        stats = json.loads(p.read_text())
        successes += stats.get("successes", 0)
        for message, n in stats.get("status_dict", {}).items():
            if message != "success":
                reasons[_i2d_reason(message)] += n
    return {
        "tool": "img2dataset",
        "setting": f"--thread_count {threads}",
        **run,
        "successes": successes,
        "reasons": dict(reasons),
    }


def _i2d_reason(message: str) -> str:
    """img2dataset's error text with the per-row byte counts taken out, so equal errors group."""
    message = re.sub(r"\(\d+ bytes read(, \d+ more expected)?\)", "(...)", message)
    return message[:70]


# --- the CPU floors ---------------------------------------------------------------------------------


def stored_bodies(images: list[Path], rows: int) -> tuple[dict[int, bytes], collections.Counter]:
    """The bodies of the rows both tools should store: index -> bytes, and rows per index."""
    counts = collections.Counter(body_index(r, len(images)) for r in range(rows) if row_kind(r) in STORED_KINDS)
    bodies = {i: (huge_image_path(images[0].parent) if i < 0 else images[i]).read_bytes() for i in counts}
    return bodies, counts


def _floor_options():
    from streamcap.downloader.imageproc import ImageOptions

    return ImageOptions(image_size=256, resize_mode="keep_ratio", quality=95, min_size=0, max_aspect_ratio=0)


def image_floor(images: list[Path], rows: int, repeats: int = 2) -> dict:
    """CPU ms per stored image of process_image alone, in this one process.

    Each distinct body is timed `repeats` times and weighted by the stored rows that serve it:
    the same sum as processing every stored row once, in seconds even for 12,000 rows.
    """
    from streamcap.downloader.imageproc import ProcessedImage, process_image

    bodies, counts = stored_bodies(images, rows)
    opts = _floor_options()
    process_image(bodies[next(iter(bodies))], opts)  # imports and codec set-up off the clock
    total, ok = 0.0, 0
    for i, n in counts.items():
        start = time.process_time()
        for _ in range(repeats):
            result = process_image(bodies[i], opts)
        total += (time.process_time() - start) / repeats * n
        ok += n if isinstance(result, ProcessedImage) else 0
    images_n = sum(counts.values())
    return {"ms": 1000 * total / max(1, images_n), "images": images_n, "ok": ok}


def pool_floor(images: list[Path], rows: int) -> tuple[float, int]:
    """(images/s, images processed) of process_image over the stored rows' bodies, one process per core."""
    from streamcap.downloader.imageproc import ProcessedImage, process_image

    bodies, _ = stored_bodies(images, rows)
    # One bytes object per distinct body, referenced per row: 12,000 copies would be 2 GB.
    data = [bodies[body_index(r, len(images))] for r in range(rows) if row_kind(r) in STORED_KINDS]
    opts = _floor_options()
    cores = len(os.sched_getaffinity(0))
    with mp.get_context("forkserver").Pool(cores) as pool:
        pool.map(abs, range(cores * 4))  # workers up before the clock starts
        start = time.monotonic()
        results = pool.starmap(process_image, ((d, opts) for d in data), chunksize=16)
        elapsed = time.monotonic() - start
    return len(data) / elapsed, sum(isinstance(r, ProcessedImage) for r in results)


# --- main ------------------------------------------------------------------------------------------


def write_parquet(path: Path, rows: int, port: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "url": [f"http://127.0.0.1:{port}/i/{i}" for i in range(rows)],
                "caption": [f"A photo of thing number {i}. It was taken on a sunny day." for i in range(rows)],
            }
        ),
        path,
    )


def mix_counts(rows: int) -> dict[str, int]:
    counts = collections.Counter(row_kind(r) for r in range(rows))
    return {kind: counts[kind] for kind in ["image", *(k for k, _, _ in MIX)]}


def _ms(seconds: float, images: int) -> float:
    return 1000 * seconds / images if images else float("nan")


def _reasons(reasons: dict[str, int], limit: int = 8) -> str:
    top = sorted(reasons.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{k} {v}" for k, v in top[:limit])
    return text + (f", ... ({len(top) - limit} more)" if len(top) > limit else "") if text else "none"


def audit_problems(r: dict) -> list[str]:
    """Why a streamcap run does not pass: its exit code, an unreadable or unclean audit."""
    problems = [] if r["code"] == 0 else [f"exit code {r['code']}"]
    audit = r.get("audit", {})
    if "error" in audit:
        return [*problems, f"audit failed: {audit['error']}"]
    for key in ("lost", "missing", "duplicates"):
        if audit.get(key):
            problems.append(f"{key} {audit[key]}")
    if audit.get("discrepancies"):
        problems.append(f"{len(audit['discrepancies'])} discrepancies, first: {audit['discrepancies'][0]}")
    if audit and not audit.get("complete", True):
        problems.append("parts left unfinished")
    return problems


def report(results: list[dict], floor: dict, rows: int) -> list[str]:
    """Print the runs and the summary; returns the failed checks (empty: all fine)."""
    print(
        f"\n{'tool':<12} {'setting':<20} {'images':>7} {'wall s':>7} {'images/s':>9} {'CPU/image':>10}  "
        "image workers / rest, checks"
    )
    failed = []
    for r in results:
        r["rate"] = r["successes"] / r["wall"] if r["wall"] else 0.0
        per = _ms(r["cpu"], r["successes"])
        note = ""
        if r["tool"] == "streamcap":
            problems = audit_problems(r)
            failed += [f"streamcap {r['setting']}: {p}" for p in problems]
            audit = r.get("audit", {})
            split = (
                f"{_ms(r['image_cpu'], r['successes']):.1f} / {_ms(r['cpu'] - r['image_cpu'], r['successes']):.1f} ms"
            )
            note = f"{split}, exit {r['code']}, lost {audit.get('lost', '?')}, dup {audit.get('duplicates', '?')}"
            note += f"  PROBLEM: {'; '.join(problems)}" if problems else ""
        elif r["code"] != 0:
            note = f"exit code {r['code']}"
        print(
            f"{r['tool']:<12} {r['setting']:<20} {r['successes']:>7} {r['wall']:>7.1f} {r['rate']:>9.1f} "
            f"{per:>7.1f} ms  {note}"
        )
    best = {
        tool: max((r for r in results if r["tool"] == tool), key=lambda r: r["rate"])
        for tool in ("streamcap", "img2dataset")
    }
    ours, theirs = best["streamcap"], best["img2dataset"]
    mix = mix_counts(rows)
    expected = sum(n for kind, n in mix.items() if kind in STORED_KINDS)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nrows {rows}: " + ", ".join(f"{k} {n}" for k, n in mix.items()))
    print(f"expected stored {expected} ({', '.join(sorted(STORED_KINDS))}); machine load average now {load}")
    print("best run of each:")
    ours_ms, theirs_ms = _ms(ours["cpu"], ours["successes"]), _ms(theirs["cpu"], theirs["successes"])
    print(
        f"  streamcap    {ours['rate']:7.1f} images/s ({ours['setting']}), {ours['successes']} images in "
        f"{ours['wall']:.1f} s, {ours_ms:.1f} ms CPU/image: image workers "
        f"{_ms(ours['image_cpu'], ours['successes']):.1f} ms ({ours['image_procs']} processes, "
        f"{100 * ours['image_cpu'] / max(ours['cpu'], 1e-9):.0f} %), rest "
        f"{_ms(ours['cpu'] - ours['image_cpu'], ours['successes']):.1f} ms; exit code {ours['code']}"
    )
    print(
        f"  img2dataset  {theirs['rate']:7.1f} images/s ({theirs['setting']}), {theirs['successes']} images in "
        f"{theirs['wall']:.1f} s, {theirs_ms:.1f} ms CPU/image (downloads and resizes in the same processes)"
    )
    diff = (ours["successes"] - theirs["successes"]) / max(1, theirs["successes"])
    agree = "agree within" if abs(diff) <= SUCCESS_TOLERANCE else "DIFFER by more than"
    print(
        f"  successes    streamcap {ours['successes']}, img2dataset {theirs['successes']} (expected {expected}): "
        f"{agree} ±{100 * SUCCESS_TOLERANCE:.0f} % ({100 * diff:+.1f} %)"
    )
    goal = "goal >= 2 (>= 12,000 rows)" if rows >= LONG_ROWS else "goal >= 1.3 (3,000 rows)"
    ratio = ours["rate"] / theirs["rate"] if theirs["rate"] else float("inf")
    print(f"  ratio        {ratio:.2f}x img2dataset's images/s ({goal})")
    print(
        f"  image floor  {floor['ms']:.1f} ms CPU/image (process_image alone, one process, {floor['images']} stored "
        f"rows' bodies); streamcap {ours_ms / floor['ms']:.2f}x it (goal <= 2x), "
        f"img2dataset {theirs_ms / floor['ms']:.2f}x"
    )
    print(
        f"  pool floor   {floor['pool_rate']:7.1f} images/s (process_image alone, {floor['cores']} processes); "
        f"streamcap reaches {100 * ours['rate'] / floor['pool_rate']:.0f} % of it (goal >= 75 %)"
    )
    audit = ours.get("audit", {})
    if "error" in audit:
        print(f"  audit        FAILED to run: {audit['error']}")
    else:
        print(
            f"  audit        lost {audit.get('lost')}, missing {audit.get('missing')}, duplicates "
            f"{audit.get('duplicates')}, discrepancies {len(audit.get('discrepancies', []))}; parts "
            f"{_reasons(audit.get('parts') or {}, limit=len(audit.get('parts') or {}))}, redelivered {audit.get('redelivered_parts')}, retried rows "
            f"{audit.get('retried_rows')} ({audit.get('retried_samples')} now samples)"
        )
    print(f"  failures     streamcap {sum(ours['reasons'].values())}: {_reasons(ours['reasons'])}")
    print(f"               img2dataset {sum(theirs['reasons'].values())}: {_reasons(theirs['reasons'])}")
    print("checks: " + ("ok" if not failed else "FAILED\n  " + "\n  ".join(failed)))
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help=f"rows to download ({ROWS}; --long: {LONG_ROWS})")
    parser.add_argument("--long", action="store_true", help=f"a long run: {LONG_ROWS} rows unless --rows says")
    parser.add_argument("--distinct", type=int, default=240, help="distinct images the server cycles through")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "streamcap-bench")
    parser.add_argument("--quick", action="store_true", help="one setting per tool, one round")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of all settings; the best run of each tool counts"
    )
    parser.add_argument(
        "--streamcap-timeouts",
        default=STREAMCAP_TIMEOUTS,
        help="streamcap's timeout and retry flags ('' for its own defaults)",
    )
    parser.add_argument("--streamcap-args", default="", help="more flags appended to the streamcap command")
    parser.add_argument(
        "--drip-seconds",
        type=float,
        default=DRIP_S,
        help=f"how long a drip row's server drips before it closes (default {DRIP_S:g}; 0: at once, like a cut body)",
    )
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "IMAGE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]), args.drip_seconds)
        return
    rows = args.rows or (LONG_ROWS if args.long else ROWS)
    cache = args.cache_dir
    exe = ensure_img2dataset(cache)
    images = make_images(cache, args.distinct)
    huge_image_path(images[0].parent)  # before the server starts, which would otherwise make it
    work = cache / "runs"
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"rows {rows}, drip rows close after {args.drip_seconds:g} s; streamcap {' '.join([args.streamcap_timeouts, args.streamcap_args]).strip() or '(defaults)'}; "
        f"img2dataset --timeout {I2D_TIMEOUT_S} --retries 0",
        flush=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            str(images[0].parent),
            "--drip-seconds",
            str(args.drip_seconds),
        ]
    )
    try:
        time.sleep(2.0)
        parquet = work / "rows.parquet"
        write_parquet(parquet, rows, port)
        ours = OURS_CONCURRENCY[1:2] if args.quick else OURS_CONCURRENCY
        theirs = I2D_THREADS[1:2] if args.quick else I2D_THREADS
        results = []
        for _ in range(1 if args.quick else args.rounds):
            for c, t in zip(ours, theirs):  # alternate, so machine noise hits both alike
                results.append(run_streamcap(parquet, work, c, args.streamcap_timeouts, args.streamcap_args))
                results.append(run_img2dataset(exe, parquet, work, t, rows))
                for r in results[-2:]:
                    print(
                        f"{r['tool']:<12} {r['setting']:<20} {r['successes']} images in {r['wall']:.1f} s "
                        f"(exit {r['code']})",
                        flush=True,
                    )
        # Measured while no tool runs, after them, so both floors see the same machine.
        floor = image_floor(images, rows)
        pool = max(pool_floor(images, rows) for _ in range(1 if args.quick else args.rounds))
        floor.update(pool_rate=pool[0], pool_ok=pool[1], cores=len(os.sched_getaffinity(0)))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    failed = report(results, floor, rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
