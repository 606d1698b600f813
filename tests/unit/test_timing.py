"""The tests' clock (tests/support/timing.py): bounds scale with the load, and a test's pytest-timeout
stretches when the machine gets busy mid-test, yet still fails a test that overruns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import timing

ROOT = Path(__file__).resolve().parents[2]


def test_scale_follows_the_load_per_core_within_bounds(monkeypatch):
    monkeypatch.delenv(timing.SCALE_ENV, raising=False)
    monkeypatch.setattr(timing, "_cores", lambda: 2)
    for loads, expected in (
        ((0.3, 0.1, 0.0), 1.0),
        ((8.0, 3.0, 1.0), 4.0),
        ((2.0, 9.0, 5.0), 4.5),
        ((90, 50, 9), 12.0),
    ):
        monkeypatch.setattr(os, "getloadavg", lambda loads=loads: loads)
        assert timing.scale() == expected, loads
    monkeypatch.setenv(timing.SCALE_ENV, "30")  # fixed by hand, past MAX_SCALE if asked
    assert timing.scale() == 30.0 and timing.scaled(2) == 60.0


def test_a_deadline_stretches_when_the_machine_gets_busy_and_never_shrinks(monkeypatch):
    monkeypatch.setenv(timing.SCALE_ENV, "1")
    deadline = timing.Deadline(10)
    assert 9 < deadline.left() <= 10 and not deadline.passed()
    monkeypatch.setenv(timing.SCALE_ENV, "3")
    assert deadline.allowed() == 30
    monkeypatch.setenv(timing.SCALE_ENV, "1")
    assert deadline.allowed() == 30
    assert timing.Deadline(0).passed()


def test_wait_returns_the_exit_code_or_raises_past_the_deadline(monkeypatch):
    monkeypatch.setenv(timing.SCALE_ENV, "1")
    assert timing.wait(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]), 60) == 3
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            timing.wait(sleeper, 0.2)
    finally:
        sleeper.kill()
        sleeper.wait()


SLOW_TEST = """
import os, time
import pytest

@pytest.mark.timeout(1)
def test_slow():
    os.environ["STREAMCAP_TEST_TIMEOUT_SCALE"] = os.environ.get("SCALE_DURING", "1")  # the machine gets busy
    time.sleep(2.5)
"""


def pytest_run(tmp_path: Path, during: str) -> subprocess.CompletedProcess:
    """pytest on SLOW_TEST with the timing plugin alone: 1 s allowed at the start, scale `during` after."""
    (tmp_path / "test_slow.py").write_text(SLOW_TEST)
    env = os.environ | {timing.SCALE_ENV: "1", "SCALE_DURING": during, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "tests.support.timing", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*cmd, "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_slow.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timing.scaled(60),
    )


def test_the_pytest_timeout_fails_a_test_that_overruns_it(tmp_path):
    out = pytest_run(tmp_path, during="1")
    assert out.returncode == 1 and "Timeout (>1.0s) from pytest-timeout" in out.stdout, out.stdout + out.stderr


def test_the_pytest_timeout_stretches_when_the_machine_gets_busy_mid_test(tmp_path):
    out = pytest_run(tmp_path, during="20")  # rings after 1 s, finds 20 s allowed now: set again
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr
