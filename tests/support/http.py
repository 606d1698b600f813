"""The one HTTP server of the tests: a loopback image host that behaves, or misbehaves on request.

    with ImageServer(hosts=("127.0.0.1", "::1")) as server:   # one free port on every address
        server.images["cat.jpg"] = jpeg_bytes(320, 240)
        server.url("/img/cat.jpg")                             # on the first host
        server.url("/img/cat.jpg", host="::1")                 # http://[::1]:<port>/img/cat.jpg
        server.requests_to("/img/cat.jpg")                     # what reached it, oldest first
        server.connections        # every accepted TCP connection: addresses, open/close times, bytes written
        server.max_open           # most connections open at once; max_active: requests being answered
        server.max_active_by_route["/img"]                     # the same, per first path segment

It speaks HTTP/1.1 over plain asyncio streams in a background thread, so it sees everything at
the socket level: a connection that never sends a request is still in its log, body bytes are
counted as they are written, and a client hanging up is noticed while the server waits or dribbles.

Routes (a request's query string is kept whole in `Request.target`, so `i=<n>` tells rows apart):
    /img/<name>[?delay=<s>]          server.images[name] (Content-Type server.types.get(name, image/jpeg)),
                                     after <delay> seconds
    /status/<code>                   that status, no body
    /busy/<name>?status=429&after=<Retry-After>&times=1&delay=0
                                     <status> (with Retry-After when given; `date+2`: an HTTP date two
                                     seconds ahead) for the first <times> requests of this exact URL,
                                     then the image after <delay> seconds
    /redirect/<n>/<name>             a chain of n redirects, then /img/<name>
    /to?url=<target>[&status=302]    a redirect to <target>
    /hang                            reads the request, never answers
    /drip                            headers at once, then the body 1 byte every 200 ms, forever
    /drip-head                       the status line and headers themselves 1 byte every 200 ms
    /huge-length                     Content-Length: 10 GB, 1000 bytes, then silence until the client hangs up
    /endless                         a chunked body of 64 KiB chunks that never ends
    /gzip-bomb                       Content-Encoding: gzip, 1 GiB of zeros, compressed as it is sent
    /truncated                       Content-Length: 100000, 5003 bytes, then the connection closes
    /robots/<name>?tag=<v>[&tag=..][&header=<spelling>]
                                     X-Robots-Tag: <v> (one header per tag), then waits HANGUP_GRACE_S
                                     for the client to hang up before it writes a single body byte

Also here: `never_accepting_port`, a listener whose connect() never completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

HANGUP_GRACE_S = 1.0  # /robots waits this long for a hang-up before it sends the body
DRIP_EVERY_S = 0.2
GIB = 2**30


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
    target: str  # path and query string, as sent
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    t: float
    status: int = 0
    body_sent: int = 0  # response body bytes written to the socket
    hung_up: float | None = None  # when the client hung up while this request was being answered

    def arg(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]


class ClientGone(Exception):
    """The client closed the connection while the server was still answering."""


class _Reply:
    """The response side of one request: counted writes, and a watch for the client hanging up."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, request: Request
    ) -> None:
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


_REASONS = {
    200: "OK",
    302: "Found",
    301: "Moved Permanently",
    307: "Temporary Redirect",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ImageServer:
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
        self.max_active_by_route: Counter[str] = Counter()
        self._active_by_route: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle ---
    def __enter__(self) -> ImageServer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="test-http")
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
        """Requests whose target (path and query string) starts with `prefix`, oldest first."""
        return [r for r in list(self.requests) if r.target.startswith(prefix)]

    # --- connections ---
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = Connection(
            id=len(self.connections),
            local=writer.get_extra_info("sockname"),
            peer=writer.get_extra_info("peername"),
            opened=time.monotonic(),
        )
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
        request = Request(
            conn=conn.id,
            target=target,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            t=time.monotonic(),
        )
        self.requests.append(request)
        reply = _Reply(reader, writer, conn, request)
        route = "/" + parts.path.strip("/").split("/")[0]
        self._count_active(route, +1)
        try:
            keep = await self._route(request, reply)
        finally:
            self._count_active(route, -1)
            await reply.close_watch()
        return keep and not reply.watched

    def _count_active(self, route: str, delta: int) -> None:
        self.active += delta
        self._active_by_route[route] += delta
        self.max_active = max(self.max_active, self.active)
        self.max_active_by_route[route] = max(self.max_active_by_route[route], self._active_by_route[route])

    async def _route(self, request: Request, reply: _Reply) -> bool:
        kind, _, rest = request.path.strip("/").partition("/")
        handler = getattr(self, "_" + kind.replace("-", "_"), None)
        if kind not in _ROUTES or handler is None:
            await reply.full(404)
            return True
        return await handler(request, reply, rest)

    # --- routes that answer ---
    async def _img(self, request: Request, reply: _Reply, name: str) -> bool:
        await asyncio.sleep(float(request.arg("delay", "0")))  # a server that takes its time: requests overlap
        if name not in self.images:
            await reply.full(404)
            return True
        await reply.full(200, self.images[name], [("Content-Type", self.types.get(name, "image/jpeg"))])
        return True

    async def _status(self, request: Request, reply: _Reply, code: str) -> bool:
        await reply.full(int(code))
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
        return await self._img(request, reply, name)

    async def _redirect(self, request: Request, reply: _Reply, rest: str) -> bool:
        hops, _, name = rest.partition("/")
        target = f"/redirect/{int(hops) - 1}/{name}" if int(hops) > 1 else f"/img/{name}"
        await reply.full(302, headers=[("Location", target)])
        return True

    async def _to(self, request: Request, reply: _Reply, _: str) -> bool:
        await reply.full(int(request.arg("status", "302")), headers=[("Location", request.arg("url"))])
        return True

    async def _robots(self, request: Request, reply: _Reply, name: str) -> bool:
        spelling = request.arg("header", "X-Robots-Tag")
        data = self.images[name]
        await reply.head(
            200,
            [("Content-Type", "image/jpeg"), ("Content-Length", str(len(data)))]
            + [(spelling, tag) for tag in request.query.get("tag", [])],
        )
        if await reply.until_hangup(HANGUP_GRACE_S):
            return False  # skipped: not one body byte was written
        await reply.raw(data, body=True)
        return True

    # --- routes that never finish, or finish badly ---
    async def _hang(self, request: Request, reply: _Reply, _: str) -> bool:
        await reply.until_hangup()
        return False

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
        await reply.head(
            200, [("Content-Type", "image/jpeg"), ("Content-Encoding", "gzip"), ("Transfer-Encoding", "chunked")]
        )
        packer, zeros = zlib.compressobj(9, zlib.DEFLATED, 31), b"\0" * 2**20
        for _ in range(GIB // len(zeros)):  # compressed as sent: the server never holds the gigabyte
            out = packer.compress(zeros)
            if out:
                await reply.raw(b"%x\r\n" % len(out) + out + b"\r\n", body=True)
        tail = packer.flush()
        await reply.raw(b"%x\r\n" % len(tail) + tail + b"\r\n0\r\n\r\n", body=True)
        return True

    async def _truncated(self, request: Request, reply: _Reply, _: str) -> bool:
        await reply.head(200, [("Content-Type", "image/jpeg"), ("Content-Length", "100000")])
        await reply.raw(b"\xff\xd8\xff" + b"\1" * 5000, body=True)
        return False  # the connection closes with the body 95 KB short


_ROUTES = {
    "img",
    "status",
    "busy",
    "redirect",
    "to",
    "robots",
    "hang",
    "drip",
    "drip-head",
    "huge-length",
    "endless",
    "gzip-bomb",
    "truncated",
}


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
            try:  # a completed handshake waits in the queue even once closed
                fillers.append(socket.create_connection(address, timeout=0.5))
            except TimeoutError:
                break  # the queue is full: nothing gets through any more
        else:
            raise RuntimeError("could not fill the accept queue of a loopback listener")
        yield address[1]
    finally:
        for s in fillers:
            s.close()
        listener.close()
