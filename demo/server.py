"""The demo's image host: serves the world's scenes over HTTP on 127.0.0.1, in a background thread.

    with WorldServer(seed=1, latency_s=0.1) as server:
        server.base_url          # http://127.0.0.1:<port>
        # GET /img/17.jpg -> the JPEG of Scene.for_index(1, 17)

Like the web, it is not perfect: a few URLs answer 404 and a few serve an HTML page labelled
image/jpeg, so the demo's failure accounting has something to count.
"""

from __future__ import annotations

import asyncio
import io
import threading

from aiohttp import web

from streamcap.demo.data import SOURCE_IMAGE_SIZE
from streamcap.demo.world import Scene

MISSING_EVERY = 41  # 404 Not Found
NOT_AN_IMAGE_EVERY = 59  # HTML served as image/jpeg


def failure_kind(index: int) -> str | None:
    if index % MISSING_EVERY == MISSING_EVERY - 1:
        return "missing"
    if index % NOT_AN_IMAGE_EVERY == NOT_AN_IMAGE_EVERY - 1:
        return "not_an_image"
    return None


class WorldServer:
    def __init__(self, seed: int, host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0) -> None:
        self.seed, self.host, self.port, self.latency_s = seed, host, port, latency_s
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _image(self, request: web.Request) -> web.Response:
        self.requests += 1
        try:
            index = int(request.match_info["index"])
        except ValueError:
            raise web.HTTPNotFound() from None
        if self.latency_s:  # a far-away server: the download takes a while, as on the web
            await asyncio.sleep(self.latency_s)
        kind = failure_kind(index)
        if kind == "missing":
            raise web.HTTPNotFound()
        if kind == "not_an_image":
            return web.Response(body=b"<html><body>moved</body></html>", content_type="image/jpeg")
        buffer = io.BytesIO()
        Scene.for_index(self.seed, index).render(SOURCE_IMAGE_SIZE).save(buffer, format="JPEG", quality=90)
        return web.Response(body=buffer.getvalue(), content_type="image/jpeg")

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/img/{index}.jpg", self._image)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # the free port the OS chose
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> WorldServer:
        self._thread = threading.Thread(target=self._serve, name="demo-http", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the demo HTTP server did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> WorldServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m streamcap.demo.server --host 0.0.0.0 --port 8080`: the image host on its own, until
    SIGTERM (scripts/compose_check.sh runs it as a container beside the stack)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m streamcap.demo.server", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--seed", type=int, default=1, help="The world's seed (the source parquet's).")
    parser.add_argument("--latency", type=float, default=0.0, help="Seconds before each answer.")
    args = parser.parse_args(argv)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    with WorldServer(seed=args.seed, host=args.host, port=args.port, latency_s=args.latency) as server:
        print(f"serving the demo world (seed {args.seed}) at {server.base_url}", flush=True)
        stopped.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
