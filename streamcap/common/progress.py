"""How a long command shows its progress: a rich bar on a terminal, a plain line now and then elsewhere.

    with Progress("enqueue", unit="rows", total=3_000_000, every=cfg.progress_every) as progress:
        for batch in batches:
            progress.update(done)                                # cheap: draws only when due
    # on a terminal: enqueue ━━━━━━━━╸━━━━━  1200000/3000000 rows  41000 rows/s  0:00:44
    # in docker compose logs, CI, a pipe (one line every `every` seconds and one at the end):
    # enqueue: 1200000/3000000 rows (40.0 %), 41000 rows/s, ETA 44s

Which one is chosen by whether stderr is a terminal: logs of `docker compose` and CI must never
fill with carriage returns and escape codes, so the plain line has neither. The rate is measured
here, over the last RATE_WINDOW_S, from the counts `update` was given. `note` is free text after
the numbers ("loss 2.31, data wait 4 %"). Progress goes to stderr, so stdout stays the
command's result (`streamcap enqueue ... | tee`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

RATE_WINDOW_S = 30.0  # a rate over the recent past: the start-up (model loading, first claims) fades out
REFRESH_PER_SECOND = 2  # the terminal bar; a plain line follows `every`


class Progress:
    """One long task's progress (module doc); a context manager, or `close()` at the end."""

    def __init__(
        self,
        label: str,
        *,
        unit: str,
        total: int | None = None,
        start: int = 0,
        every: float = 30.0,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.unit, self.total, self.every = label, unit, total, every
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.done, self.note = start, ""  # start: where a resumed task picks up; the rate counts from there
        self.started = self._last_line = clock()
        self._samples: deque[tuple[float, int]] = deque([(self.started, start)])
        self._closed = False
        self._bar: _Bar | None = None
        if terminal if terminal is not None else _is_terminal(self.stream):
            self._bar = _Bar(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(finished=exc_type is None)

    def update(self, done: int, *, total: int | None = None, note: str | None = None) -> None:
        """The count so far (not an increment); redraws the bar, or writes a line when one is due."""
        now = self.clock()
        self.done = done
        self.total = total if total is not None else self.total
        self.note = note if note is not None else self.note
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW_S:
            self._samples.popleft()
        if self._bar is not None:
            self._bar.update()
        elif now - self._last_line >= self.every:
            self._last_line = now
            self._write(self.line())

    def rate(self) -> float:
        """Per second over the last RATE_WINDOW_S."""
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def eta_s(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate

    def line(self) -> str:
        """The plain line: `label: done/total unit (pct %), rate unit/s, ETA x; note`."""
        counts = f"{self.done}/{self.total} {self.unit}" if self.total is not None else f"{self.done} {self.unit}"
        if self.total:
            counts += f" ({100 * min(self.done, self.total) / self.total:.1f} %)"
        text = f"{self.label}: {counts}, {_number(self.rate())} {self.unit}/s"
        eta = self.eta_s()
        if eta is not None and self.done < (self.total or 0):
            text += f", ETA {human_seconds(eta)}"
        return f"{text}; {self.note}" if self.note else text

    def close(self, finished: bool = True) -> None:
        """The last state, once: the bar's final frame, or a last plain line with the time taken
        (none when the task failed: the error is the last line then)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif finished:
            self._write(f"{self.line()}; took {human_seconds(self.clock() - self.started)}")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) must not end the command
            pass


class _Bar:
    """The terminal form: a rich progress bar; log lines of this process print above it."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        console = Console(file=progress.stream)
        self.rich = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn() if progress.total is not None else TextColumn("{task.completed}"),
            TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn() if progress.total is not None else TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
        )
        self.task = self.rich.add_task(
            progress.label, total=progress.total, completed=progress.done, unit=progress.unit, rate="", note=""
        )
        self.rich.start()
        self._handlers = _log_to(console)

    def update(self) -> None:
        p = self.progress
        rate = f"{_number(p.rate())} {p.unit}/s"
        self.rich.update(self.task, completed=p.done, total=p.total, rate=rate, note=p.note)

    def close(self) -> None:
        self.update()
        self.rich.stop()
        for handler, stream in self._handlers:
            handler.setStream(stream)


def _log_to(console: Console) -> list[tuple[logging.StreamHandler, Any]]:
    """Point this process's stderr log handlers at the console while the bar shows: rich prints
    them above the bar instead of through it. Returns what to restore."""
    moved = []
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__):
            moved.append((handler, handler.setStream(_ConsoleLines(console))))
    return moved


class _ConsoleLines:
    """A text stream that prints each write through the console (above a live bar)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def write(self, text: str) -> int:
        if text.strip():
            self.console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _number(x: float) -> str:
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


def human_seconds(seconds: float) -> str:
    """3725 -> '1h02m', 75 -> '1m15s', 4.2 -> '4s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
