"""`--processes N`: N worker processes under one parent that forwards signals and restarts crashes.

    supervise(cfg, child_main)     # -> 0 when every worker exited cleanly

Workers are forked where the platform can (Linux): the parent is still single-threaded with no
event loop, socket or Redis connection at that point, and a forked worker skips re-importing the
service (about 0.6 CPU-seconds each); elsewhere they are spawned. SIGTERM or SIGINT reaching the parent is passed on to every worker as
SIGTERM, so each finishes or releases its parts by itself; a worker that dies without being
asked to (OOM killer, a crash) is restarted after RESTART_DELAY_S, its parts being reclaimed by
the lease like any dead worker's. Workers that exit 0 (`--exit-when-empty`) or gave up on a
failing environment (EXIT_GAVE_UP) are not restarted.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable

from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.failures import EXIT_GAVE_UP

log = logging.getLogger("streamcap.downloader")

RESTART_DELAY_S = 1.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def supervise(cfg: DownloaderSettings, child_main: Callable[[DownloaderSettings, int], None]) -> int:
    """Run `child_main(cfg.worker(), i)` in `cfg.processes` processes until all have exited."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    stopping = False

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    def start(i: int) -> mp.Process:
        # Signals stay blocked while the child starts: it inherits the mask and unblocks once
        # its own handlers are in place, so no signal reaches it half set up.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            p = ctx.Process(target=child_main, args=(cfg.worker(), i), name=f"downloader-{i}")
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return p

    procs: list[mp.Process] = []
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    procs.extend(start(i) for i in range(cfg.processes))
    codes: dict[int, int] = {}
    while len(codes) < len(procs):
        for i, p in enumerate(procs):
            if i in codes:
                continue
            p.join(timeout=0.2)
            if p.exitcode is None:
                continue
            if p.exitcode not in (0, EXIT_GAVE_UP) and not stopping:
                log.error("worker process %d (pid %s) died with exit code %s; restarting it", i, p.pid, p.exitcode)
                time.sleep(RESTART_DELAY_S)
                procs[i] = start(i)
                continue
            codes[i] = p.exitcode
    if all(c == 0 for c in codes.values()):
        return 0
    return EXIT_GAVE_UP if all(c in (0, EXIT_GAVE_UP) for c in codes.values()) else 1
