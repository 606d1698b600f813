"""The progress of long commands (streamcap.common.progress) as plain lines: what logs and CI get."""

from __future__ import annotations

import io
import re

from streamcap.common.progress import Progress, human_seconds

LINE = re.compile(r"^enqueue: \d+/\d+ rows \(\d+\.\d %\), [\d.]+ rows/s(, ETA \w+)?(; .*)?$")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_plain_line_every_interval_with_rate_and_eta_and_no_control_codes():
    out, clock = io.StringIO(), Clock()
    with Progress("enqueue", unit="rows", total=1000, every=10, stream=out, clock=clock) as progress:
        for done in range(100, 1001, 100):  # 100 rows every 2 s: 50 rows/s
            clock.now += 2
            progress.update(done, note="0 duplicates")
    lines = out.getvalue().splitlines()
    assert lines[0] == "enqueue: 500/1000 rows (50.0 %), 50 rows/s, ETA 10s; 0 duplicates"  # after 10 s
    assert lines[1] == "enqueue: 1000/1000 rows (100.0 %), 50 rows/s; 0 duplicates"  # done: no ETA
    assert lines[2] == "enqueue: 1000/1000 rows (100.0 %), 50 rows/s; 0 duplicates; took 20s"
    assert len(lines) == 3 and all(LINE.match(line) for line in lines)
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_no_closing_line_when_the_task_failed_and_none_without_a_total():
    out, clock = io.StringIO(), Clock()
    try:
        with Progress("enqueue", unit="rows", total=10, every=1, stream=out, clock=clock) as progress:
            progress.update(3)
            raise ValueError("unreadable row")
    except ValueError:
        pass
    assert out.getvalue() == ""  # the error is the last line, not a "took" line
    with Progress("download", unit="rows", every=1, stream=out, clock=clock) as progress:
        clock.now += 4
        progress.update(20, note="ok 18, failed 2")
    assert out.getvalue().splitlines()[0] == "download: 20 rows, 5.0 rows/s; ok 18, failed 2"


def test_human_seconds():
    assert [human_seconds(s) for s in (4.2, 75, 3725)] == ["4s", "1m15s", "1h02m"]
