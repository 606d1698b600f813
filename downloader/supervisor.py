"""`--processes N`: N worker processes under one parent that forwards signals and restarts crashes.

    supervise(cfg, child_main)     # -> 0 when every worker exited cleanly

Workers are forked where the platform can (Linux): the parent is still single-threaded with no
event loop, socket or Redis connection at that point, and a forked worker skips re-importing the
service (about 0.6 CPU-seconds each); elsewhere they are spawned. SIGTERM or SIGINT reaching the
parent stops it from starting any more workers at once, even halfway through starting N, and
is passed on to every worker started as SIGTERM, so each finishes or releases its parts by
itself; a second signal is passed on as well (a worker then releases its parts at once). A
worker that dies without being asked to (OOM killer, a crash) is restarted after
RESTART_DELAY_S, its parts being reclaimed by the lease like any dead worker's. Workers that
exit 0 (`--exit-when-empty`) or gave up on a failing environment (EXIT_GAVE_UP) are not
restarted. On Linux every worker also gets SIGTERM when the parent dies without passing
anything on (SIGKILL, the OOM killer): no worker outlives it (streamcap.common.lifetime).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamcap.common.lifetime import die_with_parent
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.failures import EXIT_GAVE_UP

if TYPE_CHECKING:
    from streamcap.downloader.progress import DownloadProgress

log = logging.getLogger("streamcap.downloader")

RESTART_DELAY_S = 1.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
ChildMain = Callable[[DownloaderSettings, int], None]
MakeProgress = Callable[[Callable[[], set[int]]], "DownloadProgress"]


def supervise(cfg: DownloaderSettings, child_main: ChildMain, progress: MakeProgress | None = None) -> int:
    """Run `child_main(cfg.worker(), i)` in `cfg.processes` processes until all have exited;
    `progress(pids)` shows their progress, made once they are started."""
    workers = _Workers(cfg, child_main)
    signal.signal(signal.SIGTERM, workers.stop)
    signal.signal(signal.SIGINT, workers.stop)
    for i in range(cfg.processes):
        if workers.stopping:
            break
        workers.start(i)
    if workers.stopping:
        log.info("stopping: %d of %d worker processes were started", len(workers.procs), cfg.processes)
    # Made after the forks: it connects to Redis, and the parent must hold no socket when it forks.
    shown = progress(workers.pids) if progress is not None else None
    try:
        codes = workers.wait(shown.tick if shown is not None else None)
    finally:
        if shown is not None:
            shown.close()
    if all(c == 0 for c in codes.values()):
        return 0
    return EXIT_GAVE_UP if all(c in (0, EXIT_GAVE_UP) for c in codes.values()) else 1


class _Workers:
    """The worker processes, by index, and whether a stop was asked for."""

    def __init__(self, cfg: DownloaderSettings, child_main: ChildMain) -> None:
        self.cfg, self.child_main = cfg, child_main
        self.ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.procs: dict[int, mp.process.BaseProcess] = {}
        self.started: set[int] = set()  # pids of every worker started, restarted ones too
        self.stopping = False

    def pids(self) -> set[int]:
        return set(self.started)

    def stop(self, sig: int, _frame: object) -> None:
        """The signal handler: start nothing more, pass the stop on to every worker started."""
        self.stopping = True
        for p in self.procs.values():
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    def start(self, i: int) -> None:
        # Stop signals stay blocked while the child starts: it inherits the mask and unblocks
        # once its own handlers are in place, so no signal reaches it half set up; and the
        # parent's handler runs only once the child is in `procs`, so the stop reaches it too.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            p = self.ctx.Process(
                target=_worker_process,
                args=(self.child_main, self.cfg.worker(), i, os.getpid()),
                name=f"downloader-{i}",
            )
            p.start()
            self.procs[i] = p
            if p.pid is not None:
                self.started.add(p.pid)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def wait(self, tick: Callable[[], None] | None = None) -> dict[int, int]:
        """Until every worker has exited (restarting crashed ones unless stopping): their exit
        codes. `tick` runs about once a second meanwhile."""
        codes: dict[int, int] = {}
        while len(codes) < len(self.procs):
            running = [p.sentinel for i, p in self.procs.items() if i not in codes]
            multiprocessing.connection.wait(running, timeout=1.0)  # returns as soon as one exits
            if tick is not None:
                tick()
            for i, p in list(self.procs.items()):
                if i in codes or p.exitcode is None:
                    continue
                if p.exitcode not in (0, EXIT_GAVE_UP) and not self.stopping:
                    log.error("worker process %d (pid %s) died with exit code %s; restarting it", i, p.pid, p.exitcode)
                    time.sleep(RESTART_DELAY_S)
                    if not self.stopping:  # a stop during the delay: nothing to restart
                        self.start(i)
                        continue
                # A worker the forwarded SIGTERM ended before its handlers were in place was
                # stopped as asked, not crashed.
                stopped = self.stopping and p.exitcode == -signal.SIGTERM
                codes[i] = 0 if stopped else p.exitcode
        return codes


def _worker_process(child_main: ChildMain, cfg: DownloaderSettings, index: int, parent: int) -> None:
    """The worker's first steps: die with the parent (even one that died already), then run."""
    die_with_parent(signal.SIGTERM, parent=parent)
    child_main(cfg, index)
