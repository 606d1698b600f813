"""Graceful stop: SIGTERM (or Ctrl-C) asks the loop to checkpoint and exit.

    stop = StopSignal.install()
    while ...:
        with stop.interruptible():
            batch = next(batches)         # may block while no data exists at all
        if any_rank(stop.requested): save(); break      # every rank meets before computing
    stop.uninstall()

A wait for data is interrupted (StopRequested is raised inside it); the training loop then
meets the other ranks before anything of the next batch is computed (trainer/train.py,
`_next_batch`), so they all stop at the same step. A second Ctrl-C aborts.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """Raised inside an interruptible wait when a stop signal arrives."""


class StopSignal:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._interruptible = False
        self._previous: dict[int, Any] = {}

    @classmethod
    def install(cls) -> StopSignal:
        stop = cls()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                stop._previous[sig] = signal.signal(sig, stop._handle)
        return stop

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextmanager
    def interruptible(self, allowed: bool = True) -> Iterator[None]:
        if allowed and self.requested:
            raise StopRequested(self.signal_name)
        self._interruptible = allowed
        try:
            yield
        finally:
            self._interruptible = False

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            log.info("%s received: checkpointing and stopping after the current step", name)
        self.requested, self.signal_name = True, name
        if self._interruptible:
            self._interruptible = False
            raise StopRequested(name)
