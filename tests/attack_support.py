"""Helpers of the attack suite (docs/testing.md, attacks 12-21): a hostile HTTP server and real download runs.

    with HostileServer(hosts=("127.0.0.1", "127.0.0.2", "::1")) as server:   # one port on every address
        server.images["cat.jpg"] = jpeg_bytes(320, 240)
        server.url("/img/cat.jpg")                        # on the first host
        server.url("/img/cat.jpg", host="::1")            # http://[::1]:<port>/img/cat.jpg
        server.connections        # every accepted TCP connection: addresses, open/close times, bytes written
        server.requests           # every request: path, query, headers, response body bytes written, hang-up
        server.max_open           # most connections open at once; server.max_active: requests being answered

Unlike `tests.downloader_support.ImageServer` (an aiohttp app), this server speaks HTTP/1.1 over
plain asyncio streams, so it sees everything at the socket level: a connection that never sends a
request is still in its log, body bytes are counted as they are written, and a client hanging up
is noticed while the server waits or dribbles.

Routes:
    /img/<name>                      server.images[name] (Content-Type server.types.get(name, image/jpeg))
    /to?url=<target>[&status=302]    a redirect to <target>
    /huge-length                     Content-Length: 10 GB, 1000 bytes, then silence until the client hangs up
    /endless                         a chunked body of 64 KiB chunks that never ends
    /gzip-bomb                       Content-Encoding: gzip, 1 GiB of zeros, compressed as it is sent
    /drip                            headers at once, then the body 1 byte every 200 ms, forever
    /drip-head                       the status line and headers themselves 1 byte every 200 ms
    /hang                            reads the request, never answers
    /robots/<name>?tag=<v>[&tag=..][&header=<spelling>]
                                     X-Robots-Tag: <v> (one header per tag), then waits HANGUP_GRACE_S
                                     for the client to hang up before it writes a single body byte
    /busy/<name>?status=429&after=<Retry-After>&times=1&delay=0
                                     <status> (with Retry-After when given) for the first <times>
                                     requests of this exact URL, then the image after <delay> seconds

Also here: `never_accepting_port` (a listener that never accepts), parquet sources and their
enqueueing, `streamcap download` runs with their peak memory, and row outcomes read back from
the stats files and shards.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from streamcap.downloader.config import EnqueueSettings
from streamcap.downloader.enqueue import describe_source, enqueue
from streamcap.shardwriter import registry
from streamcap.shardwriter.audit import AuditReport, audit
from streamcap import bus
from streamcap.formats.records import PartStats
from streamcap.formats.shards import iter_samples

STREAMCAP = [sys.executable, "-m", "streamcap"]
CAPTION = "A red kite flies over a green hill. Two children watch it."
HANGUP_GRACE_S = 1.0      # /robots waits this long for a hang-up before it sends the body
DRIP_EVERY_S = 0.2
GIB = 2**30


# --- the hostile server ---------------------------------------------------------------------------


@dataclass
class Connection:
    id: int
    local: tuple
    peer: tuple
    opened: float
    closed: float | None = None
    bytes_sent: int = 0


@dataclass
class Request:
    conn: int
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]            # names lower-cased
    t: float
    status: int = 0
    body_sent: int = 0                 # response body bytes written to the socket
    hung_up: float | None = None       # when the client hung up while this request was being answered

    def arg(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]


class ClientGone(Exception):
    """The client closed the connection while the server was still answering."""


class _Reply:
    """The response side of one request: counted writes, and a watch for the client hanging up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection,
                 request: Request) -> None:
        self.reader, self.writer, self.conn, self.request = reader, writer, conn, request
        self.gone = asyncio.Event()
        self._watch: asyncio.Future | None = None

    @property
    def watched(self) -> bool:
        """A hang-up watch ran: the connection is closed after this reply (see `until_hangup`)."""
        return self._watch is not None

    async def _watch_hangup(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.reader.read(1)
        self.request.hung_up = time.monotonic()
        self.gone.set()

    async def close_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    async def raw(self, data: bytes, body: bool = False) -> None:
        if self.gone.is_set():
            raise ClientGone
        try:
            self.writer.write(data)
            self.conn.bytes_sent += len(data)
            if body:
                self.request.body_sent += len(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            raise ClientGone from None

    async def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.request.status = status
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"] + [f"{k}: {v}" for k, v in headers]
        await self.raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def full(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] = ()) -> None:
        await self.head(status, [*headers, ("Content-Length", str(len(body)))])
        if body:
            await self.raw(body, body=True)

    async def until_hangup(self, seconds: float = 60.0) -> bool:
        """Wait for the client to hang up; True when it did within `seconds`.

        The watch reads from the connection: aiohttp never pipelines, so whatever arrives while
        a reply is under way is the client's FIN. A watched connection is closed after its
        reply, so the watch can never eat the first byte of a next request.
        """
        if self._watch is None:
            self._watch = asyncio.ensure_future(self._watch_hangup())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.gone.wait(), seconds)
        return self.gone.is_set()


_REASONS = {200: "OK", 302: "Found", 301: "Moved Permanently", 307: "Temporary Redirect", 404: "Not Found",
            429: "Too Many Requests", 503: "Service Unavailable"}


class HostileServer:
    """An HTTP/1.1 server on one port of each of `hosts` (loopback addresses), in a background thread."""

    def __init__(self, hosts: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.hosts = hosts
        self.port = 0
        self.images: dict[str, bytes] = {}
        self.types: dict[str, str] = {}
        self.connections: list[Connection] = []
        self.requests: list[Request] = []
        self.open = self.max_open = 0
        self.active = self.max_active = 0
        self._seen: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle ---
    def __enter__(self) -> "HostileServer":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="hostile-http")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> None:
        for _ in range(50):  # one port free on every address
            try:
                first = await asyncio.start_server(self._serve, self.hosts[0], 0)
                self.port = first.sockets[0].getsockname()[1]
                self._servers = [first]
                for host in self.hosts[1:]:
                    self._servers.append(await asyncio.start_server(self._serve, host, self.port))
                return
            except OSError:
                for server in self._servers:
                    server.close()
                self._servers = []
        raise RuntimeError(f"no port free on all of {self.hosts}")

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, path: str, host: str | None = None) -> str:
        host = host or self.hosts[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}{path}"

    def requests_to(self, prefix: str) -> list[Request]:
        return [r for r in list(self.requests) if r.path.startswith(prefix)]

    # --- connections ---
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = Connection(id=len(self.connections), local=writer.get_extra_info("sockname"),
                          peer=writer.get_extra_info("peername"), opened=time.monotonic())
        self.connections.append(conn)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while await self._one_request(reader, writer, conn):
                pass
        except (ConnectionError, ClientGone, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            conn.closed = time.monotonic()
            self.open -= 1
            writer.close()
            self._tasks.discard(task)

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        target = request_line.split(" ")[1]
        parts = urlsplit(target)
        headers = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        request = Request(conn=conn.id, path=parts.path, query=parse_qs(parts.query, keep_blank_values=True),
                          headers=headers, t=time.monotonic())
        self.requests.append(request)
        reply = _Reply(reader, writer, conn, request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            keep = await self._route(request, reply)
        finally:
            self.active -= 1
            await reply.close_watch()
        return keep and not reply.watched

    async def _route(self, request: Request, reply: _Reply) -> bool:
        kind, _, rest = request.path.strip("/").partition("/")
        handler = getattr(self, "_" + kind.replace("-", "_"), None)
        if kind not in _ROUTES or handler is None:
            await reply.full(404)
            return True
        return await handler(request, reply, rest)

    # --- routes ---
    async def _img(self, request: Request, reply: _Reply, name: str) -> bool:
        if name not in self.images:
            await reply.full(404)
            return True
        await reply.full(200, self.images[name], [("Content-Type", self.types.get(name, "image/jpeg"))])
        return True

    async def _to(self, request: Request, reply: _Reply, _: str) -> bool:
        await reply.full(int(request.arg("status", "302")), headers=[("Location", request.arg("url"))])
        return True

    async def _huge_length(self, request: Request, reply: _Reply, _: str) -> bool:
        await reply.head(200, [("Content-Type", "image/jpeg"), ("Content-Length", str(10 * 10**9))])
        await reply.raw(b"\xff\xd8\xff" + b"\0" * 997, body=True)
        await reply.until_hangup()
        return False

    async def _endless(self, request: Request, reply: _Reply, _: str) -> bool:
        await reply.head(200, [("Content-Type", "image/jpeg"), ("Transfer-Encoding", "chunked")])
        chunk = b"%x\r\n" % 65536 + b"\xab" * 65536 + b"\r\n"
        while True:
            await reply.raw(chunk, body=True)

    async def _gzip_bomb(self, request: Request, reply: _Reply, _: str) -> bool:
        await reply.head(200, [("Content-Type", "image/jpeg"), ("Content-Encoding", "gzip"),
                               ("Transfer-Encoding", "chunked")])
        packer, zeros = zlib.compressobj(9, zlib.DEFLATED, 31), b"\0" * 2**20
        for _ in range(GIB // len(zeros)):  # compressed as sent: the server never holds the gigabyte
            out = packer.compress(zeros)
            if out:
                await reply.raw(b"%x\r\n" % len(out) + out + b"\r\n", body=True)
        tail = packer.flush()
        await reply.raw(b"%x\r\n" % len(tail) + tail + b"\r\n0\r\n\r\n", body=True)
        return True

    async def _drip(self, request: Request, reply: _Reply, _: str) -> bool:
        await reply.head(200, [("Content-Type", "image/jpeg"), ("Content-Length", "100000")])
        while True:
            await reply.raw(b"\xff", body=True)
            if await reply.until_hangup(DRIP_EVERY_S):
                return False

    async def _drip_head(self, request: Request, reply: _Reply, _: str) -> bool:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"a" * 4000:
            await reply.raw(bytes([byte]))
            if await reply.until_hangup(DRIP_EVERY_S):
                return False
        return False

    async def _hang(self, request: Request, reply: _Reply, _: str) -> bool:
        await reply.until_hangup()
        return False

    async def _robots(self, request: Request, reply: _Reply, name: str) -> bool:
        spelling = request.arg("header", "X-Robots-Tag")
        data = self.images[name]
        await reply.head(200, [("Content-Type", "image/jpeg"), ("Content-Length", str(len(data)))]
                         + [(spelling, tag) for tag in request.query.get("tag", [])])
        if await reply.until_hangup(HANGUP_GRACE_S):
            return False  # skipped: not one body byte was written
        await reply.raw(data, body=True)
        return True

    async def _busy(self, request: Request, reply: _Reply, name: str) -> bool:
        key = request.path + "?" + "&".join(f"{k}={v}" for k, vs in sorted(request.query.items()) for v in vs)
        self._seen[key] += 1
        if self._seen[key] <= int(request.arg("times", "1")):
            after = request.arg("after")
            if after == "date+2":  # an HTTP date two seconds ahead
                after = email.utils.formatdate(time.time() + 2, usegmt=True)
            await reply.full(int(request.arg("status", "429")), headers=[("Retry-After", after)] if after else [])
            return True
        await asyncio.sleep(float(request.arg("delay", "0")))  # a server that takes its time: requests overlap
        return await self._img(request, reply, name)


_ROUTES = {"img", "to", "huge-length", "endless", "gzip-bomb", "drip", "drip-head", "hang", "robots", "busy"}


@contextlib.contextmanager
def never_accepting_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port with a listener that never accepts: its accept queue is full, so the kernel drops
    every new SYN and a client's connect() hangs until its own timeout (no refusal, no answer)."""
    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            probe = socket.create_connection(address, timeout=0.5) if not fillers else None
            if probe is not None:  # a completed handshake waits in the queue even once closed
                fillers.append(probe)
                continue
            try:
                fillers.append(socket.create_connection(address, timeout=0.5))
            except (socket.timeout, TimeoutError):
                break  # the queue is full: nothing gets through any more
        else:
            raise RuntimeError("could not fill the accept queue of a loopback listener")
        yield address[1]
    finally:
        for s in fillers:
            s.close()
        listener.close()


# --- sources, runs, outcomes -----------------------------------------------------------------------


def enqueue_rows(r, keys: bus.Keys, shard_dir: Path, urls: list[str], part_size: int, name: str = "src",
                 captions: list[str] | None = None) -> None:
    """A url+caption parquet next to `shard_dir`, enqueued as `streamcap enqueue` does."""
    path = shard_dir.parent / f"{name}.parquet"
    pq.write_table(pa.table({"url": urls, "caption": captions or [CAPTION] * len(urls)}), path)
    record, _ = describe_source(EnqueueSettings(part_size=part_size, name=name), str(path))
    assert enqueue(r, keys, shard_dir, record).added


@dataclass
class Ran:
    returncode: int
    log: str
    peak_rss: int          # bytes: VmHWM of the download process, sampled until it exited


def download(redis_url: str, keys: bus.Keys, shard_dir: Path, log_path: Path, *args: str, timeout: float = 90,
             env: dict[str, str] | None = None) -> Ran:
    """`streamcap download --exit-when-empty --image-workers 1 ARGS` to the end; killed if it overruns."""
    full_env = {**os.environ, "REDIS_URL": redis_url, "STREAMCAP_NAMESPACE": keys.namespace,
                "STREAMCAP_SHARD_DIR": str(shard_dir), **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*STREAMCAP, "download", "--exit-when-empty", "--image-workers", "1", *args],
                                env=full_env, stdout=log, stderr=subprocess.STDOUT)
    peak, deadline = 0, time.monotonic() + timeout
    try:
        while proc.poll() is None:
            peak = max(peak, peak_rss(proc.pid))
            assert time.monotonic() < deadline, f"streamcap download ran past {timeout} s:\n{log_path.read_text()}"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    return Ran(proc.returncode, log_path.read_text(), peak)


def peak_rss(pid: int) -> int:
    """The peak resident memory (VmHWM) of a live process, in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def part_stats(shard_dir: Path) -> dict[int, PartStats]:
    """Stats file of every committed part, by part index."""
    problems: list[str] = []
    stats = registry.load_part_stats(shard_dir, problems)
    assert not problems, problems
    return {s.part: s for s in stats.values()}


def outcomes(shard_dir: Path) -> dict[int, tuple[str, str]]:
    """row -> ('sample', '') or (failure reason, detail), from the stats files and the shards."""
    out: dict[int, tuple[str, str]] = {}
    for stats in part_stats(shard_dir).values():
        for f in stats.failures:
            out[f.row] = (f.reason, f.detail)
        for shard in stats.shards:
            for sample in iter_samples(shard_dir / shard.name):
                out[sample.meta["row"]] = ("sample", "")
    return out


def samples_by_row(shard_dir: Path) -> dict[int, Any]:
    return {s.meta["row"]: s for path in sorted(shard_dir.glob("*.tar")) for s in iter_samples(path)}


def audited(r, keys: bus.Keys, shard_dir: Path) -> AuditReport:
    """The accounting check every pipeline test ends with: nothing lost, nothing twice, no discrepancy."""
    report = audit(r, keys, shard_dir, expect_done=True)
    assert report.ok and report.lost == 0 and report.duplicates == 0, report.discrepancies
    return report
