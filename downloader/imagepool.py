"""Image processing off the event loop, in worker processes that may crash without harm.

    pool = ImagePool(ImageOptions(), workers=2)
    out = await pool.process(data, tag="relaion:17")   # ProcessedImage, or Rejection (processing_crash too)
    pool.close()

Why processes and not threads: Pillow releases the GIL while it decodes, resizes and encodes,
so a thread pool is as fast here. Measured on the 2-core CI machine (a mix of 24 JPEG/PNG/WebP
photos, 6-320 KB, 2 workers, from an event loop doing 0.3 ms of its own work per image):
threads 155-182 images/s, processes 146-191 — equal within noise — but with processes the
event loop's mean scheduling lag was lower (0.7-0.8 ms vs 0.9-1.1 ms), and only a process
survives a decoder that segfaults or runs out of memory on a hostile file.

Why not concurrent.futures.ProcessPoolExecutor: its hand-offs (a feeder thread that pickles each
170 KB body into a pipe, a manager thread that collects results) cost the event loop's process
0.55 ms of CPU per image (0.20 ms here), a twentieth of the whole budget; and when a worker dies
it cannot say which image killed it. Here each worker has a socket pair driven by the event loop itself: the
body goes out as raw bytes, the result comes back as one small frame, and a worker has at most
PIPELINE images queued, processed in order — so when it dies, the image at the head of its
queue is the one it died on. That image is `processing_crash`; the others go to other workers,
and the dead worker is replaced. An image still not done `timeout_s` after it reached the head
(a decoder stuck in a loop) gets its worker killed the same way.

Crash tests: `STREAMCAP_FAULT=image_worker STREAMCAP_FAULT_PART=<part id>` makes the worker
process SIGKILL itself on every image of that part (shardwriter.faults), a real dead decoder.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing as mp
import os
import pickle
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streamcap.downloader.imageproc import ImageOptions, ProcessedImage, Rejection, process_image
from streamcap.shardwriter import faults

log = logging.getLogger(__name__)

ProcessFn = Callable[[bytes, ImageOptions], "ProcessedImage | Rejection"]
FAULT_IMAGE_WORKER = "image_worker"
OWNER_CHECK_S = 0.5
# Decoding the largest image --max-pixels allows takes seconds; a minute means a stuck decoder.
IMAGE_TIMEOUT_S = 60.0
PIPELINE = 2  # images queued per worker: one processing, one ready to go
_REQUEST = struct.Struct("!IH")  # body length, tag length; then the tag, then the body
_RESULT = struct.Struct("!I")  # pickled result length; then the pickle
_READY = _RESULT.pack(0)  # a worker's first frame: booted, its clock may start
MAX_BOOT_FAILURES = 3  # workers in a row that die before they are ready: the pool cannot start them


# --- the worker process ---------------------------------------------------------------------------


def _serve(sock: socket.socket, opts: ImageOptions, process_fn: ProcessFn, owner_pid: int) -> None:
    """A worker process: read a request, process it, write the result, until the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the owner shuts us down
    threading.Thread(target=_exit_with_owner, args=(owner_pid,), daemon=True, name="owner-watch").start()
    try:
        # Booting (imports, unpickling the options) can take seconds on a busy machine; no image
        # may be charged for it, so the owner sends none before this.
        sock.sendall(_READY)
        while True:
            header = _recv_exact(sock, _REQUEST.size)
            if header is None:
                return
            body_len, tag_len = _REQUEST.unpack(header)
            tag = (_recv_exact(sock, tag_len) or b"").decode()
            body = _recv_exact(sock, body_len)
            if body is None:
                return
            faults.maybe_crash(FAULT_IMAGE_WORKER, tag)
            payload = pickle.dumps(process_fn(bytes(body), opts), protocol=pickle.HIGHEST_PROTOCOL)
            sock.sendall(_RESULT.pack(len(payload)) + payload)
    except (ConnectionResetError, BrokenPipeError):  # the owner died (SIGKILL): nothing to answer
        return


def _recv_exact(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


def _exit_with_owner(owner_pid: int) -> None:
    """End this worker once the process that owns the pool is gone (a SIGKILLed owner cannot
    close our socket's other end if a sibling inherited it; this never depends on that)."""
    while True:
        time.sleep(OWNER_CHECK_S)
        try:
            os.kill(owner_pid, 0)
        except (ProcessLookupError, PermissionError):  # gone, or the pid now belongs to someone else
            os._exit(0)


def _context() -> mp.context.BaseContext:
    # fork would copy the event loop's threads and sockets into the worker; forkserver starts
    # each worker from a clean, single-threaded server process.
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


# --- the owner's side ---------------------------------------------------------------------------


@dataclass
class _Request:
    body: bytes
    tag: str
    future: asyncio.Future
    timed_out: bool = False


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    transport: asyncio.Transport | None = None
    queue: collections.deque = field(default_factory=collections.deque)  # sent, oldest first
    timer: asyncio.TimerHandle | None = None
    alive: bool = True
    ready: bool = False


class _ResultReader(asyncio.Protocol):
    """Parses result frames from one worker; tells the pool when the worker's socket closes."""

    def __init__(self, pool: ImagePool, worker: _Worker) -> None:
        self.pool, self.worker, self.buffer = pool, worker, bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.worker.transport = transport  # type: ignore[assignment]  # before the worker's first frame

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= _RESULT.size:
            (n,) = _RESULT.unpack_from(self.buffer)
            if n == 0:
                del self.buffer[: _RESULT.size]
                self.pool._ready(self.worker)
                continue
            if len(self.buffer) < _RESULT.size + n:
                return
            result = pickle.loads(self.buffer[_RESULT.size : _RESULT.size + n])
            del self.buffer[: _RESULT.size + n]
            self.pool._finished(self.worker, result)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._died(self.worker)


class ImagePool:
    """`process_fn(data, opts)` in `workers` processes; a crash costs one image, not the pool."""

    def __init__(
        self,
        opts: ImageOptions,
        workers: int,
        process_fn: ProcessFn = process_image,
        timeout_s: float = IMAGE_TIMEOUT_S,
    ) -> None:
        self.opts, self.process_fn, self.timeout_s = opts, process_fn, timeout_s
        self.size = max(1, workers)
        self.crashes = 0
        self._workers: list[_Worker] = []
        self._waiting: collections.deque[_Request] = collections.deque()
        self._starting = 0
        self._boot_failures = 0
        self._closed = False

    async def start(self) -> None:
        """Start the workers now (else the first images wait for them to boot)."""
        while len(self._workers) + self._starting < self.size and not self._closed:
            await self._start_worker()

    async def process(self, data: bytes, tag: str = "") -> ProcessedImage | Rejection:
        """The processed image or a Rejection; `tag` (the part id) only selects injected faults."""
        loop = asyncio.get_running_loop()
        request = _Request(data, tag, loop.create_future())
        self._waiting.append(request)
        await self.start()
        self._dispatch()
        return await request.future

    async def _start_worker(self) -> None:
        self._starting += 1
        mp.active_children()  # reaps workers that died earlier
        try:
            ours, theirs = socket.socketpair()
            process = _context().Process(
                target=_serve, args=(theirs, self.opts, self.process_fn, os.getpid()), daemon=True, name="image-worker"
            )
            process.start()
            theirs.close()  # the worker holds its end; ours sees EOF when it dies
            worker = _Worker(process)
            self._workers.append(worker)  # listed before the await: a worker dying at once is removed
            try:
                transport, _ = await asyncio.get_running_loop().create_unix_connection(
                    lambda: _ResultReader(self, worker), sock=ours
                )
            except OSError:
                worker.alive = False
                self._workers.remove(worker)
                process.kill()
                raise
            worker.transport = transport
        finally:
            self._starting -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        for worker in self._workers:
            while self._waiting and worker.alive and worker.ready and len(worker.queue) < PIPELINE:
                request = self._waiting.popleft()
                if request.future.done():  # its caller was cancelled meanwhile
                    continue
                worker.queue.append(request)
                tag = request.tag.encode()
                worker.transport.writelines([_REQUEST.pack(len(request.body), len(tag)), tag, request.body])
                self._arm(worker)

    def _ready(self, worker: _Worker) -> None:
        worker.ready = True
        self._boot_failures = 0
        self._dispatch()

    def _arm(self, worker: _Worker) -> None:
        """Time the image at the head of the worker's queue (the one being processed)."""
        if worker.timer is None and worker.queue:
            head = worker.queue[0]
            worker.timer = asyncio.get_running_loop().call_later(self.timeout_s, self._timed_out, worker, head)

    def _timed_out(self, worker: _Worker, head: _Request) -> None:
        if worker.queue and worker.queue[0] is head:
            head.timed_out = True
            worker.process.kill()  # its socket closes; _died settles the head and requeues the rest

    def _finished(self, worker: _Worker, result: ProcessedImage | Rejection) -> None:
        request = worker.queue.popleft()
        if worker.timer is not None:
            worker.timer.cancel()
            worker.timer = None
        if not request.future.done():
            request.future.set_result(result)
        self._arm(worker)
        self._dispatch()

    def _died(self, worker: _Worker) -> None:
        worker.alive = False
        if worker.timer is not None:
            worker.timer.cancel()
        if worker in self._workers:
            self._workers.remove(worker)
        if self._closed:
            return
        if not worker.ready:
            self._boot_failures += 1
            if self._boot_failures >= MAX_BOOT_FAILURES:  # say so rather than respawn forever
                self._boot_failures = 0
                log.error("image workers die before they are ready (%d in a row); see their stderr", MAX_BOOT_FAILURES)
                while self._waiting:
                    request = self._waiting.popleft()
                    if not request.future.done():
                        request.future.set_result(Rejection("processing_crash", "the image worker could not start"))
        if worker.queue:
            head = worker.queue.popleft()
            self.crashes += 1
            why = (
                f"image processing took longer than {self.timeout_s:g} s"
                if head.timed_out
                else "the image worker process died on this image"
            )
            log.warning("image worker %s: %s; starting another", worker.process.pid, why)
            if not head.future.done():
                head.future.set_result(Rejection("processing_crash", why))
            self._waiting.extendleft(reversed(worker.queue))  # innocent: first in line elsewhere
        worker.process.join(0)
        if self._waiting:
            asyncio.ensure_future(self._start_worker())

    def close(self) -> None:
        """Stop every worker (they exit when their socket closes; stragglers are killed)."""
        self._closed = True
        for worker in list(self._workers):
            if worker.transport is not None:
                # transport.close() only takes effect on the loop's next turn; shutting the
                # socket down gives the worker its EOF now, while this method waits for it.
                sock = worker.transport.get_extra_info("socket")
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                worker.transport.close()
        deadline = time.monotonic() + 2.0
        for worker in list(self._workers):
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)
        for request in self._waiting:
            if not request.future.done():
                request.future.cancel()
