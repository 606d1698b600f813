"""A TCP proxy between services and Redis that misbehaves on request: the chaos benchmark's and
the fault tests' way to lose replies, reset connections and stall the network for real.

    with RedisProxy(redis_server.port) as proxy:             # services talk to proxy.url
        proxy.drop_replies(commit_sha, times=1)              # swallow a script's reply, reset the connection
        proxy.chaos(reset_every_s=2, blackhole_after_s=3, blackhole_s=10)
        proxy.latency_s = 0.02

It lives with the benchmarks because `benchmarks/chaos.py` drives it and benchmarks never
import the tests; the tests import it from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

from streamcap.bus.embedded import free_port


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
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
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

    def __enter__(self) -> RedisProxy:
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

    @property
    def holding(self) -> bool:
        """True while a blackhole holds every byte."""
        return not self._flowing.is_set()

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

    def _call(self, coro):
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
