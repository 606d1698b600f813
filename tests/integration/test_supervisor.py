"""`streamcap download --processes N` as a process tree: a stop ends the starting of workers at
once and reaches every worker started; a SIGKILLed parent takes its workers along.

Real processes against the real Redis, with no parts enqueued, so workers only ever stop because
they are told to. Waits are generous and poll for outcomes: the machine may be loaded.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

from tests.support import timing
from tests.support.fleet import Fleet, children, heartbeats, process_state, process_tree, running
from tests.support.pipeline import wait_until

WORKERS = 64  # more than a loaded machine starts before the test stops the parent
EXIT_WAIT_S = 180.0


@contextlib.contextmanager
def no_leftovers() -> Iterator[set[tuple[int, int]]]:
    """A set to put the processes a test sees in: any still running at the end is killed."""
    seen: set[tuple[int, int]] = set()
    try:
        yield seen
    finally:
        for pid in running(seen):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_while_workers_start_stops_the_starting_and_every_worker(fleets, redis_url, keys, r, tmp_path):
    fleet = fleets(redis_url, keys, tmp_path / "shards")
    parent = fleet.start("--processes", str(WORKERS))
    with no_leftovers() as seen:
        wait_until(lambda: children(parent.pid), 120, "the first worker process", proc=parent, log=parent.log)
        started = stop_while_starting(parent, seen, fleet)
    log = parent.log.read_text()
    assert parent.returncode == 0, log[-4000:]
    # It started at most the one worker it was starting when it froze, then stopped starting.
    counted = re.search(rf"stopping: (\d+) of {WORKERS} worker processes were started", log)
    assert counted and int(counted.group(1)) <= started + 1, log[-4000:]
    assert heartbeats(r, keys) == []  # the workers that got going stopped cleanly


def stop_while_starting(parent: subprocess.Popen, seen: set[tuple[int, int]], fleet: Fleet) -> int:
    """SIGTERM the parent while it starts its workers, and see its process tree until it exits;
    returns how many workers it had started when the stop arrived."""
    # Frozen mid-way through starting its workers, the parent cannot go on while the test
    # counts them, however slow the machine is.
    os.kill(parent.pid, signal.SIGSTOP)
    wait_until(lambda: process_state(parent.pid) == "T", 30, "the parent to freeze")
    seen |= process_tree(parent.pid)
    started = len(children(parent.pid))
    assert started < WORKERS, "the parent started every worker before the test could stop it"
    parent.send_signal(signal.SIGTERM)
    os.kill(parent.pid, signal.SIGCONT)
    deadline = timing.Deadline(EXIT_WAIT_S)
    while parent.poll() is None:  # every process of the tree while it lives: none may outlive it
        seen |= process_tree(parent.pid)
        assert not deadline.passed(), f"still running {deadline.describe()} after SIGTERM:\n{fleet.tail(parent)}"
        time.sleep(0.1)
    wait_until(lambda: not running(seen), 60, "every process of the tree to be gone", log=parent.log)
    return started


def test_a_sigkilled_parent_takes_its_workers_along(fleets, redis_url, keys, r, tmp_path):
    fleet = fleets(redis_url, keys, tmp_path / "shards")
    parent = fleet.start("--processes", "3")
    with no_leftovers() as tree:
        wait_until(lambda: len(heartbeats(r, keys)) == 3, 120, "three workers running", proc=parent, log=parent.log)
        tree |= process_tree(parent.pid)  # the workers and their image processes
        assert len(children(parent.pid)) == 3
        fleet.kill(parent)  # SIGKILL: nothing is passed on to the workers
        wait_until(lambda: not running(tree), EXIT_WAIT_S, "every worker process to be gone", log=parent.log)
    # They got SIGTERM from the kernel, stopped as asked and removed their heartbeats.
    wait_until(lambda: heartbeats(r, keys) == [], 30, "the workers' heartbeats to be removed")
