"""Reliability suite (docs/testing.md, faults 22-25): the environment fails, not the part.

22. the shard dir is a read-only mount: every downloader pauses and says why, no part is
    counted against or dead; once it is writable every row is downloaded; a batch run that
    stays read-only gives up with exit code 3 and one line;
23. the shard dir is a real, tiny tmpfs with no room left: no temporary shard outlives its
    attempt, no part dies, and the parts finish once there is space;
24. the source file is missing on one downloader host (a mount namespace hides it): that host
    releases what it claims, uncounted, and a healthy host does every part;
25. deliveries lost to killed workers do not make a healthy part dead, while a part that takes
    its worker down every time still dies in a bounded number of deliveries.

Mounts are real (`mount -t tmpfs`, `mount --bind` + `remount,ro`, `unshare -m`): the tests run
as root, for whom chmod alone makes nothing read-only. Where mounting is impossible they skip,
saying so. Each ends with the accounting check: lost = 0, duplicates = 0.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamcap import bus
from streamcap.shardwriter import tempfiles
from tests.support import timing
from tests.support.fleet import cli_json, fault_env, heartbeats
from tests.support.pipeline import enqueue_rows, final_audit, paced_rows, wait_until


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=timing.scaled(30))


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points the test made; unmounted (lazily, even if busy) when it ends."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a read-only or tiny file system needs root and mount(8)")
    made: list[Path] = []
    probe = Path(f"/tmp/streamcap-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
        _run("umount", str(probe))
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"this machine does not allow mounts: {e}")
    finally:
        probe.rmdir()
    try:
        yield made
    finally:
        for point in reversed(made):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=timing.scaled(30))


def read_only(mounts: list[Path], directory: Path) -> None:
    _run("mount", "--bind", str(directory), str(directory))
    mounts.append(directory)
    _run("mount", "-o", "remount,ro,bind", str(directory))


def writable(directory: Path) -> None:
    _run("mount", "-o", "remount,rw,bind", str(directory))


def tiny_tmpfs(mounts: list[Path], directory: Path, size: str = "3m") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory))
    mounts.append(directory)


def fill(directory: Path, leave: int) -> Path:
    """A file taking all of `directory`'s file system but about `leave` bytes."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def paused(r, keys: bus.Keys, state: str, reason: str) -> list[dict]:
    return [b for b in heartbeats(r, keys) if b.state == state and b.reason.startswith(reason)]


def test_a_read_only_shard_dir_pauses_downloads_until_it_is_writable(
    r, keys, redis_url, image_host, fleets, mounts, tmp_path
):
    """The note's scenario (enqueue, download into a read-only shard dir, make it writable:
    every row downloaded, 0 dead), and a batch run that stays read-only giving up."""
    runs = {}
    for case in ("recovers", "stays"):
        ckeys, shard_dir = bus.Keys(f"{keys.namespace}-{case}"), tmp_path / case / "shards"
        enqueue_rows(r, ckeys, shard_dir, paced_rows(image_host, 12), part_size=4)
        read_only(mounts, shard_dir)
        fleet = fleets(redis_url, ckeys, shard_dir, name=f"{case}-logs")
        patience = ("--environment-patience", "5") if case == "stays" else ()
        fleet.start("--exit-when-empty", "--lease-seconds", "2", "--max-deliveries", "1", *patience)
        runs[case] = (ckeys, shard_dir, fleet)
    ckeys, shard_dir, fleet = runs["recovers"]
    [beat] = wait_until(
        lambda: paused(r, ckeys, "paused", "shard dir not writable: Read-only file system"),
        60,
        "the downloader to pause for the read-only shard dir",
    )
    status = cli_json(redis_url, ckeys, shard_dir, "status")
    assert status["urls"]["paused"] == 1
    assert any("downloader(s) paused: shard dir not writable" in hint for hint in status["hints"]), status["hints"]
    assert r.xlen(ckeys.parts_dead) == 0 and r.hlen(ckeys.parts_strikes) == 0
    writable(shard_dir)
    fleet.wait_all(120)  # the same process, up all along, finished by itself
    report = final_audit(r, ckeys, shard_dir)
    assert report.parts == {"pending": 0, "in_flight": 0, "done": 3, "dead": 0}
    assert report.samples + report.failures == 12 and report.deliveries == {1: 3}
    assert "released without counting the delivery" in fleet.logs()

    ckeys, shard_dir, fleet = runs["stays"]
    [proc] = fleet.procs
    assert timing.wait(proc, 90) == 3, fleet.tail(proc)
    last = fleet.tail(proc).strip().splitlines()[-3:]
    assert any("giving up after" in line and "shard dir not writable: Read-only file system" in line for line in last)
    report = final_audit(r, ckeys, shard_dir, expect_done=False)
    assert (report.parts["done"], report.parts["dead"]) == (0, 0) and r.hlen(ckeys.parts_strikes) == 0


def test_a_full_tmpfs_leaves_no_temporary_shard_and_loses_no_part(
    r, keys, redis_url, image_host, fleets, mounts, tmp_path
):
    shard_dir = tmp_path / "shards"
    tiny_tmpfs(mounts, shard_dir)
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 16, failures=False), part_size=4)
    filler = fill(shard_dir, leave=4096)  # a part's shard (~20 KB) cannot fit
    fleet = fleets(redis_url, keys, shard_dir)
    first = fleet.start("--exit-when-empty", "--lease-seconds", "2", "--max-deliveries", "1", "--parts-in-flight", "1")
    wait_until(
        lambda: paused(r, keys, "paused_for_disk", "disk_full: No space left on device"),
        60,
        "the downloader to pause for the full disk",
    )
    # The failed attempt removed its temporary shard although closing it hit ENOSPC again.
    assert tempfiles.temp_files(shard_dir) == [], "a temporary shard outlived its attempt"
    fleet.kill(first, signal.SIGTERM)
    assert timing.wait(first, 60) == 0, fleet.tail(first)
    assert tempfiles.temp_files(shard_dir) == [] and not list(shard_dir.glob("*.tar"))
    assert r.xlen(keys.parts_dead) == 0 and r.hlen(keys.parts_strikes) == 0
    filler.unlink()  # space is back
    fleet.start("--exit-when-empty", "--lease-seconds", "2", "--max-deliveries", "1")
    fleet.wait_all(120)
    report = final_audit(r, keys, shard_dir)
    assert report.parts == {"pending": 0, "in_flight": 0, "done": 4, "dead": 0} and report.samples == 16


def test_a_source_missing_on_one_host_costs_no_part_a_healthy_host_does_them(
    r, keys, redis_url, image_host, fleets, mounts, tmp_path
):
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1) to hide the source from one downloader")
    source_dir, shard_dir = tmp_path / "source", tmp_path / "shards"
    enqueue_rows(r, keys, source_dir / "registry", paced_rows(image_host, 12), part_size=4)
    shutil.copytree(source_dir / "registry" / "sources", shard_dir / "sources")  # the shard dir's copy
    fleet = fleets(redis_url, keys, shard_dir)
    # A host where the source's volume is not mounted: an empty tmpfs hides it, in a mount
    # namespace of its own (private propagation), so no other process sees the difference.
    hide = ("unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"')
    blind = fleet.start(
        "--exit-when-empty", "--lease-seconds", "2", "--max-deliveries", "1", prefix=(*hide, str(source_dir))
    )
    wait_until(
        lambda: paused(r, keys, "paused", "source unreadable: "),
        60,
        "the downloader without the source to pause: " + fleet.tail(blind),
    )
    assert r.xlen(keys.parts_dead) == 0 and r.hlen(keys.parts_strikes) == 0
    healthy = fleet.start("--exit-when-empty", "--lease-seconds", "2", "--max-deliveries", "1")
    fleet.wait_all(120)
    report = final_audit(r, keys, shard_dir)
    assert report.parts == {"pending": 0, "in_flight": 0, "done": 3, "dead": 0}
    assert report.samples + report.failures == 12
    assert "committed part" not in fleet.tail(blind, 100_000)
    assert fleet.tail(healthy, 100_000).count("committed part") == 3


def test_lost_deliveries_spare_a_healthy_part_but_not_one_that_kills_its_worker(
    r, keys, redis_url, image_host, fleets, tmp_path
):
    """Part src:0's worker is SIGKILLed mid-part at each delivery (`after_fetch`), at
    --max-deliveries 1. Killed 3 times, then left alone: it is committed (the old rule
    dead-lettered it at its second delivery). Killed at every delivery: it still dies, after
    LOST_DELIVERIES_FACTOR x --max-deliveries lost deliveries, with a reason saying so."""
    runs = {}
    for case, kills in (("healthy", 3), ("kills_its_worker", 4)):
        ckeys, shard_dir = bus.Keys(f"{keys.namespace}-{case}"), tmp_path / case / "shards"
        enqueue_rows(r, ckeys, shard_dir, paced_rows(image_host, 4, failures=False), part_size=4)
        runs[case] = (ckeys, shard_dir, fleets(redis_url, ckeys, shard_dir, name=f"{case}-logs"), kills)
    args = ("--exit-when-empty", "--lease-seconds", "1", "--max-deliveries", "1")
    for kill in range(4):
        victims = []
        for _case, (_ckeys, _shard_dir, fleet, kills) in runs.items():
            if kill < kills:
                victims.append((fleet, fleet.start(*args, env=fault_env("after_fetch", part="src:0"))))
        for fleet, victim in victims:
            assert timing.wait(victim, 90) == -signal.SIGKILL, fleet.tail(victim)
            fleet.killed.add(victim.pid)
    for _case, (_ckeys, _shard_dir, fleet, _kills) in runs.items():
        fleet.start(*args)
    for _case, (_ckeys, _shard_dir, fleet, _kills) in runs.items():
        fleet.wait_all(90)
    ckeys, shard_dir, _fleet, _kills = runs["healthy"]
    report = final_audit(r, ckeys, shard_dir)
    assert report.parts == {"pending": 0, "in_flight": 0, "done": 1, "dead": 0} and report.deliveries == {4: 1}
    ckeys, shard_dir, _fleet, _kills = runs["kills_its_worker"]
    [(_, fields)] = r.xrange(ckeys.parts_dead)
    dead = bus.decode(fields)
    assert dead["deliveries"] == 5 and "delivered 5 times, its worker lost 4 times" in dead["error"], dead
    report = final_audit(r, ckeys, shard_dir)
    assert report.parts["dead"] == 1 and report.dead_rows == 4
