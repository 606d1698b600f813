"""One clock for tests on a busy machine: every bound a test waits against scales with the load.

    scale()                     # >= 1: STREAMCAP_TEST_TIMEOUT_SCALE if set, else the load per core
    scaled(60)                  # 60 s on a quiet machine, more on a busy one (static, for APIs taking a number)
    deadline = Deadline(60)     # .left(), .passed(): keeps stretching while the machine stays busy
    wait(proc, 90)              # Popen.wait against a Deadline: TimeoutExpired only past the scaled bound

As a pytest plugin (tests/conftest.py registers it), it makes each test's pytest-timeout (pyproject's
`timeout`, or a `timeout` marker) a Deadline as well.

A bound is what the wait takes on a quiet machine with margin, not a measure of speed: a machine
whose runnable processes outnumber its cores n times runs each of them about n times slower, so
the bound is multiplied by `scale()`, up to MAX_SCALE (a hung test still ends). No test asserts
on speed: a deadline only says when waiting for a condition has become hopeless.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
import pytest_timeout

SCALE_ENV = "STREAMCAP_TEST_TIMEOUT_SCALE"
MAX_SCALE = 12.0  # load 24 on 2 cores; beyond that a bound stops growing (STREAMCAP_TEST_TIMEOUT_SCALE may go further)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_per_core() -> float:
    """Runnable processes per core: the larger of the 1- and 5-minute load averages, so a lull of a
    few seconds between the bursts of a shared CI box does not shrink the bounds."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:  # no load average on this platform
        return 1.0
    return max(one, five) / _cores()


def scale() -> float:
    """How much slower than a quiet machine this one runs now (>= 1)."""
    fixed = os.environ.get(SCALE_ENV, "").strip()
    if fixed:
        return max(1.0, float(fixed))
    return min(MAX_SCALE, max(1.0, load_per_core()))


def scaled(seconds: float) -> float:
    """`seconds` of a quiet machine, scaled to this one as it is now."""
    return seconds * scale()


class Deadline:
    """`seconds` of a quiet machine from now. The scale is read again at each look and only ever
    grows, so a machine that gets busy while a test waits stretches the bound instead of failing it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.factor = scale()

    def allowed(self) -> float:
        """The bound in seconds of this machine, as of now."""
        self.factor = max(self.factor, scale())
        return self.seconds * self.factor

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.allowed() - self.elapsed()

    def passed(self) -> bool:
        return self.left() <= 0

    def describe(self) -> str:
        """For failure messages: the quiet bound and what it came to here."""
        return f"{self.elapsed():.0f} s ({self.seconds:g} s on a quiet machine, x{self.factor:.1f} for the load)"


def wait(proc: subprocess.Popen, seconds: float) -> int:
    """`proc.wait(seconds)` with `seconds` a Deadline: its return code, else TimeoutExpired."""
    deadline = Deadline(seconds)
    while True:
        try:
            return proc.wait(max(0.05, min(deadline.left(), 5.0)))
        except subprocess.TimeoutExpired:
            if deadline.passed():
                raise subprocess.TimeoutExpired(proc.args, deadline.allowed()) from None


# --- the pytest plugin -----------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> str:
    return f"test deadlines x{scale():.1f} for the load ({load_per_core():.1f} per core; {SCALE_ENV} fixes the factor)"


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: pytest_timeout.Settings) -> bool:
    """pytest-timeout's timer, its timeout a `Deadline`: when it rings on a machine that got
    busy since the test started, it is set again for the rest of the stretched bound, and the
    test fails only once that is spent too."""
    deadline = Deadline(settings.timeout)
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        # pytest-timeout's thread timer, scaled once at the start
        return pytest_timeout.pytest_timeout_set_timer(item, settings._replace(timeout=deadline.allowed()))

    def ring(signum, frame) -> None:
        __tracebackhide__ = True
        left = deadline.left()
        if left > 0.5:
            signal.setitimer(signal.ITIMER_REAL, left)
            return
        pytest_timeout.timeout_sigalrm(item, settings._replace(timeout=deadline.allowed()))

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # what pytest-timeout's pytest_timeout_cancel_timer calls
    signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, deadline.left())
    return True
