"""Chaos run: faults 1, 5 and 7 of docs/testing.md at once on a longer run, then the accounting check.

    .venv/bin/python benchmarks/chaos.py                       # 10000 rows, ~1.5 minutes on 2 cores
    .venv/bin/python benchmarks/chaos.py --rows 50000 --workers 4 --no-baseline

`--workers` real `streamcap download` processes work through `--rows` rows (a mix of good
images, 404s, HTML served as a JPEG, empty URLs and hanging servers: the demo's image host,
answering after ~50 ms, and a host that accepts connections and never answers) while:
- a random worker is SIGKILLed every 1.5-3 s and restarted at once (fault 1);
- redis-server is SIGKILLed once, when 40 % of the parts are done, and restarted on its AOF
  2 s later (fault 5);
- every connection to Redis goes through a proxy that adds latency, resets all connections
  every 5 s and blackholes everything for 10 s once (fault 7).
Workers run at the default `--max-deliveries`: a delivery lost to a killed worker is no
strike against its part, so a part in flight at many kills is not dead-lettered for it, and a
dead part here means a part that really cannot finish. Then `shardwriter.audit` checks every row. One line is printed (with a dead part's last error, if any), e.g.

    chaos: 10000 rows, 18 downloader kills, 1 redis restart, 7 connection resets, 1 blackhole of 10 s ->
    7762 samples + 2238 failures (http_status 990, not_an_image 524, ...), lost=0, duplicates=0,
    redelivered parts=40, dead parts=0; 46 s, throughput 0.41x a calm run (19 s)

"a calm run" is the same rows and workers without any fault, measured first in the same run
(skip it with --no-baseline). Exit code 1 unless lost = 0, duplicates = 0, no part is dead and the
audit is clean.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.redis_proxy import RedisProxy  # noqa: E402
from streamcap import bus  # noqa: E402
from streamcap.bus.embedded import EmbeddedRedis  # noqa: E402
from streamcap.demo.data import image_path  # noqa: E402
from streamcap.demo.processes import Services  # noqa: E402
from streamcap.demo.server import WorldServer  # noqa: E402
from streamcap.downloader.config import EnqueueSettings  # noqa: E402
from streamcap.downloader.enqueue import describe_source, enqueue  # noqa: E402
from streamcap.shardwriter.audit import AuditReport, audit  # noqa: E402

PART_SIZE = 50
CAPTION = "A dog runs on the beach. It carries a stick."
LATENCY_S = 0.05  # the image host answers after this long: a run lasts long enough to be disturbed
EMPTY_EVERY = 31  # rows without a URL: `invalid_url`
HANG_EVERY = 97  # rows that hang: each ends as `timeout` after --total-timeout
# Fast, small downloads: tiny images, short timeouts, one image worker.
DOWNLOAD_ARGS = tuple(
    "--image-workers 1 --image-size 64 --min-size 32 --total-timeout 3 "
    "--connect-timeout 1 --read-timeout 2 --retries 0".split()
)
KILL_EVERY_S = (1.5, 3.0)
REDIS_DOWN_S = 2.0
REDIS_KILL_AT = 0.4  # fraction of parts done
RESET_EVERY_S, BLACKHOLE_AFTER_S, BLACKHOLE_S = 5.0, 12.0, 10.0


@contextlib.contextmanager
def hanging_host() -> Iterator[str]:
    """http://127.0.0.1:<port>: accepts every connection, reads nothing, never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the run is over
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True, name="hanging-host").start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def write_rows(path: Path, images_url: str, hang_url: str, n: int) -> Path:
    """n url + caption rows: the demo world's images, with empty and hanging URLs mixed in."""
    urls = []
    for i in range(n):
        if i % HANG_EVERY == HANG_EVERY - 1:
            urls.append(f"{hang_url}/img/{i}.jpg")
        elif i % EMPTY_EVERY == EMPTY_EVERY - 1:
            urls.append("")
        else:
            urls.append(images_url + image_path(i))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"url": urls, "llava_caption": [CAPTION] * n}), path)
    return path


@dataclass
class Fleet:
    """The run's `streamcap download` processes, as the demo runs its services."""

    services: Services
    args: tuple[str, ...]
    procs: list[subprocess.Popen] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)

    def start(self) -> subprocess.Popen:
        name = f"download-{len(self.procs)}"
        self.procs.append(self.services.start(name, ["download", *DOWNLOAD_ARGS, *self.args]))
        return self.procs[-1]

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL to the worker and its image pool, as when its machine dies."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.killed.add(proc.pid)

    def wait_all(self, timeout: float) -> None:
        """Every worker not killed exits 0 within `timeout` s, else RuntimeError quoting its log."""
        deadline = time.monotonic() + timeout
        for index, proc in enumerate(self.procs):
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"download-{index} still running after {timeout:.0f} s" + self.services.tail(f"download-{index}")
                ) from None
            if proc.pid not in self.killed and code != 0:
                raise RuntimeError(f"download-{index} exited {code}" + self.services.tail(f"download-{index}"))


def service_env(redis_url: str, keys: bus.Keys, shard_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "STREAMCAP_NAMESPACE": keys.namespace,
        "STREAMCAP_SHARD_DIR": str(shard_dir),
        "STREAMCAP_ALLOW_PRIVATE": "1",
        "OMP_NUM_THREADS": "1",
    }


@dataclass
class Outcome:
    report: AuditReport
    seconds: float
    kills: int = 0
    redis_restarts: int = 0
    resets: int = 0
    blackholes: int = 0
    dead_errors: tuple[str, ...] = ()


def run_once(work: Path, rows: Path, args: argparse.Namespace, chaos: bool) -> Outcome:
    shard_dir, keys = work / "shards", bus.Keys("chaos")
    with EmbeddedRedis(data_dir=work / "redis") as redis_server, contextlib.ExitStack() as stack:
        r = bus.connect(redis_server.url)
        stack.callback(r.close)
        record, _ = describe_source(EnqueueSettings(part_size=PART_SIZE, name="chaos"), str(rows))
        enqueue(r, keys, shard_dir, record)
        parts = record.parts
        proxy = stack.enter_context(RedisProxy(redis_server.port, latency_s=0.002)) if chaos else None
        env = service_env(proxy.url if proxy else redis_server.url, keys, shard_dir)
        services = stack.enter_context(Services(work / "logs", env))
        # The default --max-deliveries: only a part's own failures count toward it, never
        # the kills, so a dead part here means a part that really cannot finish.
        worker_args = ("--exit-when-empty", "--lease-seconds", "3", "--concurrency", "16", "--per-host", "16")
        fleet = Fleet(services, worker_args)
        outcome, started = Outcome(report=AuditReport(), seconds=0.0), time.monotonic()
        workers = [fleet.start() for _ in range(args.workers)]
        if proxy:
            proxy.chaos(RESET_EVERY_S, BLACKHOLE_AFTER_S, BLACKHOLE_S)
            _make_chaos(r, keys, parts, fleet, workers, redis_server, args.seed, outcome)
        fleet.wait_all(args.timeout)
        outcome.seconds = time.monotonic() - started
        if proxy:
            proxy.calm()
            outcome.resets, outcome.blackholes = proxy.resets, proxy.blackholes
        outcome.report = audit(r, keys, shard_dir, expect_done=True)
        outcome.dead_errors = tuple(bus.decode(fields)["error"] for _, fields in r.xrange(keys.parts_dead))
    return outcome


def _make_chaos(
    r, keys: bus.Keys, parts: int, fleet: Fleet, workers: list, redis_server, seed: int, outcome: Outcome
) -> None:
    """Kill workers at random and Redis once, until every part is done or dead."""
    rng = random.Random(seed)
    next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_S)
    while any(p.poll() is None for p in workers):
        time.sleep(0.1)
        finished = r.scard(keys.parts_done) + r.xlen(keys.parts_dead)
        if finished >= parts:
            return
        if not outcome.redis_restarts and finished >= REDIS_KILL_AT * parts:
            redis_server.kill()
            time.sleep(REDIS_DOWN_S)
            redis_server.start()
            outcome.redis_restarts += 1
        if time.monotonic() >= next_kill:
            alive = [i for i, p in enumerate(workers) if p.poll() is None]
            victim = rng.choice(alive)
            fleet.kill(workers[victim])
            workers[victim] = fleet.start()
            outcome.kills += 1
            next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_S)


def line(rows: int, chaos: Outcome, calm: Outcome | None) -> str:
    rep = chaos.report
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rep.failures_by_reason.items(), key=lambda kv: -kv[1]))
    text = (
        f"chaos: {rows} rows, {chaos.kills} downloader kills, {chaos.redis_restarts} redis restart, "
        f"{chaos.resets} connection resets, {chaos.blackholes} blackhole of {BLACKHOLE_S:.0f} s -> "
        f"{rep.samples} samples + {rep.failures} failures ({reasons}), lost={rep.lost}, "
        f"duplicates={rep.duplicates}, redelivered parts={rep.redelivered_parts}, dead parts={rep.parts['dead']}; "
        f"{chaos.seconds:.0f} s"
    )
    if calm is not None:
        text += f", throughput {calm.seconds / chaos.seconds:.2f}x a calm run ({calm.seconds:.0f} s)"
    if chaos.dead_errors:
        text += f"; a dead part's last error: {chaos.dead_errors[0][:300]}"
    if rep.discrepancies:
        text += f"; AUDIT FAILED: {rep.discrepancies[0]}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds the downloaders get to finish.")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="Skip the calm run.")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="streamcap-chaos-") as tmp,
        WorldServer(seed=args.seed, latency_s=LATENCY_S) as images,
        hanging_host() as hang_url,
    ):
        rows = write_rows(Path(tmp) / "chaos.parquet", images.base_url, hang_url, args.rows)
        calm = run_once(Path(tmp) / "calm", rows, args, chaos=False) if args.baseline else None
        chaos = run_once(Path(tmp) / "chaos", rows, args, chaos=True)
    print(line(args.rows, chaos, calm), flush=True)
    ok = chaos.report.ok and chaos.report.complete and (calm is None or calm.report.ok) and not chaos.dead_errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
