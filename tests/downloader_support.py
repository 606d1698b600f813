"""Test helpers of the downloader tests: a real HTTP server on a loopback address, and images.

    with ImageServer() as server:                 # 127.0.0.1, a free port, in a background thread
        server.images["cat.jpg"] = jpeg_bytes(640, 480)
        url = server.url("/img/cat.jpg")
        server.requests("/img/cat.jpg")           # what reached the server (its access log)

Routes (each request is logged with its path and User-Agent; `max_active` counts concurrency):
    /img/<name>                    the bytes in server.images[name]
    /status/<code>                 that status, no body
    /flaky/<key>/<n>               503 for the first n requests of <key>, then /img/<key>
    /retry-after/<key>/<secs>      429 with Retry-After: <secs> the first time, then /img/<key>
    /hang                          accepts, never answers
    /drip                          1 byte every 200 ms, forever
    /huge-length                   Content-Length 10 GB, a few bytes
    /endless                       a chunked body that never ends
    /gzip-bomb                     Content-Encoding: gzip, ~65 KB that expand to 64 MiB of zeros
    /truncated                     Content-Length larger than the body sent, then closes
    /redirect/<n>/<name>           a chain of n redirects, then /img/<name>
    /to?url=<target>               a 302 to <target>
    /robots/<name>?tag=<value>     X-Robots-Tag: <value>; the body dribbles slowly (counted)
    /slow/<name>?s=<seconds>       /img/<name> after a delay

`loopback_one_is_public` and `MapResolver` let a test run the address guard for real while
127.0.0.1 plays a public host and names resolve as the test says.
"""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.abc import AbstractResolver
from PIL import Image

from streamcap.downloader.security import address_allowed
from streamcap.bus.embedded import free_port


class ImageServer:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host, self.port = host, port or _free_port(host)
        self.images: dict[str, bytes] = {}
        self.log: list[dict[str, Any]] = []
        self.max_active: Counter[str] = Counter()
        self.robots_chunks_sent = 0
        self._active: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ---
    def __enter__(self) -> "ImageServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("test HTTP server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:  # /hang, /drip, ... never end by themselves
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port)
        self._loop.run_until_complete(site.start())
        ready.set()
        self._loop.run_forever()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def requests(self, path_prefix: str = "/") -> list[dict[str, Any]]:
        return [entry for entry in self.log if entry["path"].startswith(path_prefix)]

    # --- routes ---
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.log.append({"path": path, "ua": request.headers.get("User-Agent", ""), "t": time.monotonic(),
                         "peer": request.remote})
        prefix = "/" + path.strip("/").split("/")[0]
        self._active[prefix] += 1
        self.max_active[prefix] = max(self.max_active[prefix], self._active[prefix])
        try:
            return await self._route(request, path.strip("/").split("/"))
        finally:
            self._active[prefix] -= 1

    async def _route(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        kind, args = parts[0], parts[1:]
        if kind == "img":
            return self._image(args[0])
        if kind == "status":
            return web.Response(status=int(args[0]))
        if kind == "flaky":
            self._counts[request.path] += 1
            return web.Response(status=503) if self._counts[request.path] <= int(args[1]) else self._image(args[0])
        if kind == "retry-after":
            self._counts[request.path] += 1
            if self._counts[request.path] == 1:
                return web.Response(status=429, headers={"Retry-After": args[1]})
            return self._image(args[0])
        if kind == "redirect":
            n = int(args[0])
            target = f"/redirect/{n - 1}/{args[1]}" if n > 1 else f"/img/{args[1]}"
            raise web.HTTPFound(target)
        if kind == "to":
            raise web.HTTPFound(request.query["url"])
        if kind == "slow":
            await asyncio.sleep(float(request.query.get("s", "1")))
            return self._image(args[0])
        if kind in _STREAMS:
            return await getattr(self, "_" + kind.replace("-", "_"))(request, *args)
        return web.Response(status=404)

    def _image(self, name: str) -> web.Response:
        if name not in self.images:
            return web.Response(status=404)
        return web.Response(body=self.images[name], content_type="image/jpeg")

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        return web.Response()

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        while True:
            await resp.write(b"\xff")
            await asyncio.sleep(0.2)

    async def _huge_length(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(10 * 10**9)})
        await resp.prepare(request)
        await resp.write(b"\xff\xd8\xff" + b"\0" * 1000)
        await asyncio.sleep(3600)
        return resp

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"\xab" * 65536
        while True:
            await resp.write(chunk)

    async def _gzip_bomb(self, request: web.Request) -> web.StreamResponse:
        body = await asyncio.to_thread(_gzip_bomb)
        return web.Response(body=body, headers={"Content-Type": "image/jpeg", "Content-Encoding": "gzip"})

    async def _truncated(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": "100000"})
        await resp.prepare(request)
        await resp.write(b"\xff\xd8\xff" + b"\1" * 5000)
        if request.transport is not None:
            request.transport.close()
        return resp

    async def _robots(self, request: web.Request, name: str) -> web.StreamResponse:
        headers = [("Content-Type", "image/jpeg")] + [("X-Robots-Tag", v) for v in request.query.getall("tag", [])]
        data = self.images[name]
        resp = web.StreamResponse(headers=headers)
        resp.content_length = len(data)
        await resp.prepare(request)
        step = max(1, len(data) // 10)
        for i in range(0, len(data), step):
            await asyncio.sleep(0.05)
            await resp.write(data[i:i + step])
            self.robots_chunks_sent += 1
        return resp


_STREAMS = {"hang", "drip", "huge-length", "endless", "gzip-bomb", "truncated", "robots"}
_BOMB_CACHE: list[bytes] = []


def _gzip_bomb() -> bytes:
    """gzip that inflates to 64 MiB of zeros (built once per test session, ~0.5 s)."""
    if not _BOMB_CACHE:
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        zeros = b"\0" * (1 << 20)
        _BOMB_CACHE.append(b"".join(packer.compress(zeros) for _ in range(64)) + packer.flush())
    return _BOMB_CACHE[0]


def _free_port(host: str) -> int:
    if host == "127.0.0.1":
        return free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- images ---------------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (compresses like a photo, not like noise or a flat colour)."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((height // 16 + 2, width // 16 + 2, 3)) * 255).astype(np.uint8))
    return base.resize((width, height), Image.Resampling.BICUBIC)


def encode(im: Image.Image, fmt: str = "JPEG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg_bytes(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=85)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (nothing else is there)."""
    raw = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = bytearray(raw[12:29])                     # b'IHDR' + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(raw)


# --- the address guard in tests ---------------------------------------------------------------------


def loopback_one_is_public(ip):
    """127.0.0.1 plays a public host; every other address is judged as in production."""
    return (True, "") if str(ip) == "127.0.0.1" else address_allowed(ip)


class MapResolver(AbstractResolver):
    """DNS as a test wants it: name -> list of answers, one list per lookup (the last repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers, self.lookups = answers, []

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        self.lookups.append(host)
        if host not in self.answers:
            raise OSError(socket.EAI_NONAME, f"{host}: Name or service not known")
        queue = self.answers[host]
        ips = queue.pop(0) if len(queue) > 1 else queue[0]
        return [{"hostname": host, "host": ip, "port": port, "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for ip in ips]

    async def close(self) -> None:
        pass
