"""Reliability suite (docs/testing.md, faults 1-3): downloader processes killed or frozen for real.

1. several `streamcap download` processes, a random one SIGKILLed and restarted every 1-2 s;
2. the committing process SIGKILLed at each window of finalize + commit;
3. a worker frozen (SIGSTOP) until its part was reclaimed and committed by another, then let go;
   and one frozen mid-finalize, holding its part's lock, while another reclaims the part.

Each ends with the accounting check once every process is gone: lost = 0, duplicates = 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamcap import bus
from streamcap.formats.shards import stats_name
from streamcap.shardwriter import faults
from tests.support import timing
from tests.support.fleet import Fleet, fault_env, lease, process_state
from tests.support.pipeline import enqueue_rows, final_audit, histogram_line, paced_rows, pending_parts, wait_until

KILLS = 10
ROWS, PARTS = 1200, 30
HOGS = 2


@pytest.fixture
def cpu_hogs() -> Iterator[list[subprocess.Popen]]:
    """Busy-loop processes beside the test, so leases lapse on a busy machine as they do in CI."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(HOGS)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            timing.wait(hog, 10)


def test_random_sigkills_of_downloaders_lose_and_double_nothing(
    r, keys, redis_url, image_host, fleets, tmp_path, cpu_hogs
):
    """At the default --max-deliveries, beside two CPU hogs: a part in flight at several kills,
    or whose lease lapsed on the busy machine, is not poison and must not die."""
    shard_dir = tmp_path / "shards"
    # Rows that take 0.3 s each on the server, 3 workers x 6 connections: >= 20 s of work
    # whatever the CPU, so ten kills 1-2 s apart land while parts are in flight.
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, ROWS, delay_s=0.3), part_size=40)
    fleet = fleets(redis_url, keys, shard_dir)
    args = (
        "--exit-when-empty",
        "--lease-seconds",
        "2",
        "--concurrency",
        "6",
        "--per-host",
        "6",
        "--parts-in-flight",
        "2",
    )
    workers = [fleet.start(*args) for _ in range(3)]
    wait_until(lambda: pending_parts(r, keys) >= 3, 60, "the workers to claim parts")
    rng = random.Random(1)
    for kill in range(KILLS):
        time.sleep(rng.uniform(1.0, 2.0))
        alive = [i for i, p in enumerate(workers) if p.poll() is None]
        assert alive and r.scard(keys.parts_done) < PARTS, f"the work ran out after {kill} kills"
        victim = rng.choice(alive)
        fleet.kill(workers[victim])
        workers[victim] = fleet.start(*args)  # restarted at once, as a supervisor would
    fleet.wait_all(180)
    report = final_audit(r, keys, shard_dir)
    print(f"{KILLS} SIGKILLs; " + histogram_line(report))
    assert report.parts == {"pending": 0, "in_flight": 0, "done": PARTS, "dead": 0}
    assert report.samples + report.failures == ROWS
    assert report.redelivered_parts >= 1 and sum(report.deliveries.values()) == PARTS


WINDOWS = ("after_fetch", *faults.WRITER_POINTS)


def test_a_kill_at_each_commit_window_ends_with_the_part_committed_once(
    r, redis_url, keys, image_host, fleets, tmp_path
):
    """Every window at once, each in its own namespace: a victim dies there on part src:0, a
    rescuer started afterwards finishes the work."""
    rows = [*paced_rows(image_host, 5, failures=False), (image_host.url("/status/404"), "A broken link.")]
    runs: dict[str, tuple[bus.Keys, Path, Fleet]] = {}
    for window in WINDOWS:
        wkeys, shard_dir = bus.Keys(f"{keys.namespace}-{window}"), tmp_path / window / "shards"
        enqueue_rows(r, wkeys, shard_dir, rows, part_size=3)
        fleet = fleets(redis_url, wkeys, shard_dir, name=f"{window}-logs")
        fleet.start("--lease-seconds", "1", "--parts-in-flight", "1", env=fault_env(window, part="src:0"))
        runs[window] = (wkeys, shard_dir, fleet)
    for window, (wkeys, _shard_dir, fleet) in runs.items():
        [victim] = fleet.procs
        assert timing.wait(victim, 90) == -signal.SIGKILL, f"{window}: " + fleet.tail(victim)
        fleet.killed.add(victim.pid)
        assert f"SIGKILL at {window}" in fleet.tail(victim)
        committed = window in ("during_commit", "after_commit")
        assert r.sismember(wkeys.parts_done, "src:0") == committed, window
        fleet.start("--exit-when-empty", *lease())
    for window, (wkeys, shard_dir, fleet) in runs.items():
        fleet.wait_all(90)
        report = final_audit(r, wkeys, shard_dir)
        assert report.parts["done"] == 2 and (report.samples, report.failures) == (5, 1), window
        assert r.hget(wkeys.stats, bus.STAT_PARTS_COMMITTED) == "2", window
        assert sorted(r.hkeys(wkeys.parts_commits)) == ["src:0", "src:1"], window
        if window not in ("during_commit", "after_commit"):  # the rescuer redid src:0
            assert r.hget(wkeys.parts_deliveries, "src:0") == "2", (window, report.deliveries)
            # src:1 twice as well when the victim had claimed it past src:0's tail (its last
            # rows all on the network take no --parts-in-flight slot) and died holding it
            assert r.hget(wkeys.parts_deliveries, "src:1") in ("1", "2"), (window, report.deliveries)


def _files(shard_dir: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (inode, mtime ns, sha256) of every finalized file: what 'untouched' means."""
    out = {}
    for path in sorted(p for p in shard_dir.glob("*.*") if not p.name.startswith(".")):
        st = path.stat()
        out[path.name] = (st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.mark.parametrize("point", ["after_fetch", "before_commit"])
def test_a_worker_frozen_past_its_lease_changes_nothing_when_it_wakes(
    point, r, keys, redis_url, image_host, fleets, tmp_path
):
    """Frozen with every row fetched (it would finalize over the winner's shards) or with its
    shards on disk and only the commit left (its commit must be a no-op)."""
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 4, failures=False), part_size=4)
    fleet = fleets(redis_url, keys, shard_dir)
    slow = fleet.start("--exit-when-empty", "--lease-seconds", "1", env=fault_env(f"{point}:stop"))
    wait_until(lambda: process_state(slow.pid) == "T", 60, f"the worker to freeze at {point}")
    rescuer = fleet.start("--exit-when-empty", *lease())
    assert timing.wait(rescuer, 60) == 0, fleet.tail(rescuer)
    assert "delivery 2" in fleet.tail(rescuer) and r.sismember(keys.parts_done, "src:0")
    winner = _files(shard_dir)
    os.kill(slow.pid, signal.SIGCONT)
    fleet.wait_all(60)
    assert _files(shard_dir) == winner  # the winner's shards and stats file, byte for byte, same inodes
    assert r.hget(keys.stats, bus.STAT_COMMITS_WASTED) == "1"  # the slow attempt, counted as wasted
    assert r.hget(keys.stats, bus.STAT_PARTS_COMMITTED) == "1"
    report = final_audit(r, keys, shard_dir)
    assert report.samples == 4 and report.deliveries == {2: 1}


def test_a_worker_frozen_between_its_claim_check_and_its_renames_cannot_overwrite_the_winner(
    r, keys, redis_url, image_host, fleets, tmp_path
):
    """Frozen holding the part's lock with its claim confirmed: the rescuer's renames wait for
    it, so the woken worker renames first, is refused (or drops the part on its next
    keep-alive), and the committed attempt's files are the ones left on disk."""
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 4, failures=False), part_size=4)
    fleet = fleets(redis_url, keys, shard_dir)
    slow = fleet.start("--exit-when-empty", "--lease-seconds", "1", env=fault_env("before_rename:stop"))
    wait_until(lambda: process_state(slow.pid) == "T", 60, "the worker to freeze before its renames")
    rescuer = fleet.start("--exit-when-empty", *lease())
    waiting = f"waiting for pid {slow.pid} "
    wait_until(
        lambda: waiting in fleet.tail(rescuer) or r.sismember(keys.parts_done, "src:0"),
        60,
        "the rescuer to wait for the part's lock (or, without one, to commit)",
    )
    os.kill(slow.pid, signal.SIGCONT)
    fleet.wait_all(60)
    stats = json.loads((shard_dir / stats_name("src", 0)).read_text())
    assert f"-{rescuer.pid}-" in stats["owner"]  # written by the attempt that committed
    assert waiting in fleet.tail(rescuer)
    assert r.hget(keys.stats, bus.STAT_PARTS_COMMITTED) == "1"  # the slow attempt's commit refused or never sent
    assert not list(shard_dir.glob(".lock~*"))
    report = final_audit(r, keys, shard_dir)
    assert report.samples == 4 and report.deliveries == {2: 1}
