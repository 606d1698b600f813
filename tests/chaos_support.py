"""Support for the reliability suite (docs/testing.md, faults 1-11) and `benchmarks/chaos.py`.

    with image_server() as server:                           # loopback HTTP, see downloader_support
        rows = paced_rows(server, 600, delay_s=0.2)          # (url, caption), a mix of failures included
        enqueue_rows(r, keys, shard_dir, rows, part_size=40)
        fleet = Fleet(redis_url, keys, shard_dir, log_dir)   # real `streamcap download` processes
        victim = fleet.start("--exit-when-empty")
        fleet.kill(victim)                                   # SIGKILL
        fleet.wait_all(90)                                   # every process left exits 0 (else: the logs)
    report = final_audit(r, keys, shard_dir)                 # lost=0, duplicates=0, no discrepancy

    with RedisProxy(redis_server.port) as proxy:             # services talk to proxy.url
        proxy.drop_replies(COMMIT_SHA, times=1)              # swallow a commit's reply, reset the connection
        proxy.chaos(reset_every_s=2, blackhole_after_s=3, blackhole_s=10)
        proxy.latency_s = 0.02

Everything is real: redis-server, HTTP on 127.0.0.1, processes killed with real signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamcap.downloader.config import EnqueueSettings
from streamcap.downloader.enqueue import describe_source, enqueue
from streamcap.shardwriter import commit, faults
from streamcap.shardwriter.audit import AuditReport, audit
from streamcap import bus
from streamcap.bus.embedded import free_port
from streamcap.text.tokenizer import WordPieceTokenizer
from streamcap.text.vocab import count_words, train_vocab
from tests.downloader_support import ImageServer, jpeg_bytes

ROOT = Path(__file__).resolve().parents[1]
STREAMCAP = [sys.executable, "-m", "streamcap"]
CAPTION = "A dog runs on the beach. It carries a stick."
COMMIT_SHA = hashlib.sha1(commit._COMMIT.encode()).hexdigest()  # what EVALSHA of the part commit names
# Fast, small, reproducible downloads: tiny images, short timeouts, one image worker.
DOWNLOAD_ARGS = ("--image-workers", "1", "--image-size", "64", "--min-size", "32", "--total-timeout", "3",
                 "--connect-timeout", "1", "--read-timeout", "2", "--retries", "0")


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll_s: float = 0.05):
    """The condition's first truthy value; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll_s)


# --- fixtures (import them into a test module to use them) ---------------------------------------


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageServer]:
    with image_server() as server:
        yield server


@pytest.fixture
def fleets(tmp_path: Path):
    """fleets(redis_url, keys, shard_dir, name="logs") -> a Fleet closed when the test ends."""
    made: list[Fleet] = []

    def make(redis_url: str, keys: bus.Keys, shard_dir: Path, name: str = "logs") -> Fleet:
        made.append(Fleet(redis_url, keys, shard_dir, tmp_path / name))
        return made[-1]

    yield make
    for fleet in made:
        fleet.close()


# --- data ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def image_server() -> Iterator[ImageServer]:
    """The loopback image host of the suite: a small photo, an HTML page, a truncated JPEG."""
    with ImageServer() as server:
        good = jpeg_bytes(96, 96)
        server.images.update({"good.jpg": good, "html": b"<html>not an image</html>", "cut.jpg": good[: len(good) // 2]})
        yield server


def paced_rows(server: ImageServer, n: int, delay_s: float = 0.0, failures: bool = True) -> list[tuple[str, str]]:
    """n rows of (url, caption). Good rows take `delay_s` on the server (so a run lasts long
    enough to be interrupted whatever the CPU); with `failures`, a fixed mix of rows fails:
    every 10th a 404, every 17th HTML, every 23rd a truncated JPEG, every 31st no URL."""
    rows = []
    for i in range(n):
        if failures and i % 10 == 9:
            url = server.url(f"/status/404?i={i}")
        elif failures and i % 17 == 16:
            url = server.url(f"/img/html?i={i}")
        elif failures and i % 23 == 22:
            url = server.url(f"/img/cut.jpg?i={i}")
        elif failures and i % 31 == 30:
            url = ""
        elif delay_s > 0:
            url = server.url(f"/slow/good.jpg?s={delay_s}&i={i}")
        else:
            url = server.url(f"/img/good.jpg?i={i}")
        rows.append((url, CAPTION))
    return rows


def enqueue_rows(r, keys: bus.Keys, shard_dir: Path, rows: list[tuple[str, str]], part_size: int,
                 name: str = "src") -> Path:
    """Write the rows as a parquet file next to the shard dir and enqueue it (what `streamcap enqueue` does)."""
    path = write_parquet(shard_dir.parent / f"{name}.parquet", rows)
    record, _ = describe_source(EnqueueSettings(part_size=part_size, name=name), str(path))
    assert enqueue(r, keys, shard_dir, record).added
    return path


def write_parquet(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"url": [u for u, _ in rows], "llava_caption": [c for _, c in rows]}), path)
    return path


def vocab_file(path: Path, captions: list[str]) -> Path:
    """A WordPiece vocab of the captions (the trainer needs one)."""
    WordPieceTokenizer.from_vocab(train_vocab(count_words(captions * 20), 200, min_frequency=1)).save(path)
    return path


# --- processes -----------------------------------------------------------------------------------


def service_env(redis_url: str, keys: bus.Keys, shard_dir: Path, extra: dict | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAP_FAULT")}
    env.update({"REDIS_URL": redis_url, "STREAMCAP_NAMESPACE": keys.namespace, "STREAMCAP_SHARD_DIR": str(shard_dir),
                "STREAMCAP_ALLOW_PRIVATE": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
                "NO_ALBUMENTATIONS_UPDATE": "1"})
    env.update(extra or {})
    return env


class Fleet:
    """`streamcap download` processes of one pipeline, each logging to its own file.

    Tests must `close()` it (a fixture does): no process outlives its test.
    """

    def __init__(self, redis_url: str, keys: bus.Keys, shard_dir: Path, log_dir: Path,
                 args: tuple[str, ...] = DOWNLOAD_ARGS) -> None:
        self.redis_url, self.keys, self.shard_dir, self.log_dir, self.args = redis_url, keys, shard_dir, log_dir, args
        self.procs: list[subprocess.Popen] = []
        self.killed: set[int] = set()
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, *args: str, env: dict | None = None, command: str = "download") -> subprocess.Popen:
        log = self.log_dir / f"{command}-{len(self.procs)}.log"
        full = [*STREAMCAP, command, *(self.args if command == "download" else ()), *args]
        proc = subprocess.Popen(full, cwd=ROOT, env=service_env(self.redis_url, self.keys, self.shard_dir, env),
                                stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(10)
            self.killed.add(proc.pid)

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def wait_all(self, timeout: float) -> None:
        """Every process not killed by the test exits 0 within `timeout` s (else: its log)."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{' '.join(proc.args[3:5])} still running after {timeout:.0f} s:\n"
                                     + self.tail(proc)) from None
            if proc.pid not in self.killed:
                assert code == 0, f"{proc.args[3]} exited {code}:\n" + self.tail(proc)

    def tail(self, proc: subprocess.Popen, chars: int = 4000) -> str:
        return proc.log.read_text(errors="replace")[-chars:]  # type: ignore[attr-defined]

    def logs(self) -> str:
        return "".join(p.log.read_text(errors="replace") for p in self.procs)  # type: ignore[attr-defined]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process dies only once resumed
                proc.kill()
                proc.wait(10)


def trainer_args(run: str, checkpoint_dir: Path, vocab: Path, **extra: object) -> list[str]:
    """`streamcap train` flags for a tiny CPU run (extra: flag name without dashes -> value)."""
    values = {"run-id": run, "checkpoint-dir": checkpoint_dir, "tokenizer": vocab, "preset": "tiny", "image-size": 32,
              "batch-size": 4, "shuffle-buffer": 8, "fresh-wait-ms": 300, "log-every": 1, "sample-every": 0,
              "histogram-every": 0, "checkpoint-every": 1000, "warmup-steps": 2, "loader-workers": 1,
              "no-pretrained": True} | {k.replace("_", "-"): v for k, v in extra.items()}
    return [str(x) for flag, value in values.items() for x in ((f"--{flag}",) if value is True else (f"--{flag}", value))]


def trainer_step(r, keys: bus.Keys) -> int:
    """The highest step any live trainer rank reports (-1 before the first heartbeat)."""
    return max((int(b.get("step", 0)) for b in bus.read_heartbeats(r, keys, bus.ROLE_TRAINER)), default=-1)


def children(pid: int) -> list[int]:
    """Pids of the direct children of `pid` (e.g. a trainer's DataLoader workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def cli_json(redis_url: str, keys: bus.Keys, shard_dir: Path, *args: str, ok: bool = True) -> dict:
    """Run `streamcap <args> --json` against the pipeline and return its JSON output."""
    out = subprocess.run([*STREAMCAP, *args, "--json", "--redis-url", redis_url, "--namespace", keys.namespace,
                          "--shard-dir", str(shard_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (out.returncode == 0) == ok, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout)


def fault_env(point: str, part: str | None = None, while_file: Path | None = None) -> dict[str, str]:
    env = {faults.FAULT_ENV: point}
    if part:
        env[faults.FAULT_PART_ENV] = part
    if while_file:
        env[faults.FAULT_WHILE_ENV] = str(while_file)
    return env


def process_state(pid: int) -> str:
    """The kernel's state letter of a process (R, S, T for stopped, Z, ...); '' when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def heartbeats(r, keys: bus.Keys) -> list[dict]:
    return bus.read_heartbeats(r, keys, bus.ROLE_DOWNLOADER)


def pending_parts(r, keys: bus.Keys) -> int:
    group = bus.group_info(r, keys.parts, bus.GROUP_DOWNLOADERS)
    return int(group["pending"]) if group else 0


# --- the accounting check ------------------------------------------------------------------------


def final_audit(r, keys: bus.Keys, shard_dir: Path, *, expect_done: bool = True) -> AuditReport:
    """The audit every test ends with, once its workers are gone: exact, or the discrepancies."""
    report = audit(r, keys, shard_dir, expect_done=expect_done)
    print(report.summary())
    assert report.lost == 0 and report.duplicates == 0, report.summary()
    assert report.ok and not report.discrepancies, report.discrepancies
    return report


def histogram_line(report: AuditReport) -> str:
    bars = ", ".join(f"{times}x: {n}" for times, n in sorted(report.deliveries.items()))
    return f"redelivery histogram (deliveries: parts): {bars}; redelivered parts={report.redelivered_parts}"


# --- a Redis proxy that misbehaves ------------------------------------------------------------------


class _Link:
    """One proxied connection: the client's side and Redis's side."""

    def __init__(self, client: tuple, upstream: tuple) -> None:
        (self.client_r, self.client_w), (self.up_r, self.up_w) = client, upstream
        self.awaiting_script_reply = False

    def close(self, reset: bool = False) -> None:
        for writer in (self.client_w, self.up_w):
            if reset:  # RST, not FIN: the peer sees "connection reset by peer"
                with contextlib.suppress(OSError, AttributeError):
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()


class RedisProxy:
    """A TCP proxy on 127.0.0.1 between services and Redis, run in a background thread.

    - `drop_replies(sha, times)`: the reply to the next `times` EVALSHA calls of that script
      is swallowed and the connection reset (the command ran; the client never learns it);
    - `reset_all()`: every open connection is reset at once;
    - `blackhole(seconds)`: nothing moves for that long (connections are accepted, no byte is
      forwarded either way; what was held is delivered afterwards, as TCP would);
    - `latency_s`: added to every chunk forwarded, each way;
    - `chaos(...)`: resets every few seconds and one blackhole, until `calm()`.
    Counters: connections, resets, dropped_replies, blackholes.
    """

    def __init__(self, upstream_port: int, latency_s: float = 0.0) -> None:
        self.upstream_port, self.port, self.latency_s = upstream_port, free_port(), latency_s
        self.connections = self.resets = self.dropped_replies = self.blackholes = 0
        self._drop_sha: bytes | None = None
        self._drops_left = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None
        self._chaos: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="redis-proxy")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> "RedisProxy":
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # --- control, from any thread ---
    def drop_replies(self, script_sha: str, times: int = 1) -> None:
        self._drop_sha, self._drops_left = script_sha.encode(), times

    def reset_all(self) -> int:
        return self._call(self._reset_all())

    def blackhole(self, seconds: float) -> None:
        self._call(self._begin_blackhole(seconds))

    def chaos(self, reset_every_s: float, blackhole_after_s: float, blackhole_s: float) -> None:
        async def start() -> None:
            self._chaos = asyncio.ensure_future(self._run_chaos(reset_every_s, blackhole_after_s, blackhole_s))
        self._call(start())

    def calm(self) -> None:
        async def stop() -> None:
            if self._chaos is not None:
                self._chaos.cancel()
            self._flowing.set()
        self._call(stop())

    def _call(self, coro):  # noqa: ANN001, ANN202
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # --- inside the proxy's loop ---
    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._chaos is not None:
            self._chaos.cancel()
        self._server.close()
        for link in list(self._links):
            link.close(reset=True)

    async def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.close(reset=True)
        self.resets += 1
        return len(links)

    async def _begin_blackhole(self, seconds: float) -> None:
        self.blackholes += 1
        self._flowing.clear()
        self._loop.call_later(seconds, self._flowing.set)

    async def _run_chaos(self, reset_every_s: float, blackhole_after_s: float, blackhole_s: float) -> None:
        started, holed = self._loop.time(), False
        while True:
            await asyncio.sleep(reset_every_s)
            if not holed and self._loop.time() - started >= blackhole_after_s:
                holed = True
                await self._begin_blackhole(blackhole_s)
                await self._flowing.wait()
            await self._reset_all()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._flowing.wait()
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # Redis is down: the client sees the connection close
            client_w.transport.abort()
            return
        link = _Link((client_r, client_w), upstream)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(link, to_server=True), self._pump(link, to_server=False))
        finally:
            self._links.discard(link)

    async def _pump(self, link: _Link, to_server: bool) -> None:
        src, dst = (link.client_r, link.up_w) if to_server else (link.up_r, link.client_w)
        while True:
            try:
                data = await src.read(1 << 16)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                break
            await self._flowing.wait()
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if to_server:
                if self._drop_sha is not None and self._drop_sha in data:
                    link.awaiting_script_reply = True
            elif link.awaiting_script_reply:
                link.awaiting_script_reply = False
                if self._drops_left > 0 and not data.startswith(b"-"):  # not a NOSCRIPT error: the script ran
                    self._drops_left -= 1
                    self.dropped_replies += 1
                    link.close(reset=True)
                    return
            try:
                dst.write(data)
                await dst.drain()
            except (ConnectionError, OSError):
                break
        link.close()
