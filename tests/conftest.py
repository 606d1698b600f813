"""Marks every test by its folder, registers the shared fixtures (tests/support/fixtures.py), and
scales each test's pytest-timeout with the machine's load (tests/support/timing.py).

Tests never import fixtures: they ask for them by name (redis_server, redis_url, keys, r,
image_host, fleets); helpers come from their module in tests/support/.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import pytest_timeout

from tests.support import timing

# Nothing phones home from tests: albumentations checks PyPI on import, W&B would sync.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# One OpenMP thread per process, in the test process (set before anything imports torch) and in
# every process it starts: the cores are shared by a test's own processes and, on CI, by others',
# and OpenMP threads that spin at a barrier while one of them waits for a core crawl (four short
# CPU training runs took 122 s instead of 23 s beside a load of 10).
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["tests.support.fixtures"]

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by its directory: unit/, integration/, e2e/."""
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(_TESTS.resolve())
        if rel.parts and rel.parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, rel.parts[0]))


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"test deadlines x{timing.scale():.1f} for the load ({timing.load_per_core():.1f} per core; "
        f"{timing.SCALE_ENV} fixes the factor)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: pytest_timeout.Settings) -> bool:
    """pytest-timeout's timer, its timeout a `timing.Deadline`: when it rings on a machine that got
    busy since the test started, it is set again for the rest of the stretched bound, and the
    test fails only once that is spent too."""
    deadline = timing.Deadline(settings.timeout)
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
