"""Reliability suite (docs/testing.md, faults 8-10): parts that cannot be finished, and parts enqueued twice.

8. a poison part (a row that crashes the image decoder process every time);
9. the shard disk full (an injected ENOSPC on every shard write while a flag file exists);
10. `streamcap enqueue` of the same source twice, and four times at once.

Each ends with the accounting check once every process is gone: lost = 0, duplicates = 0.
"""

from __future__ import annotations

from streamcap import bus
from streamcap.bus.partqueue import read_part_queue
from streamcap.shardwriter import tempfiles
from tests.support import timing
from tests.support.fleet import cli_json, fault_env, heartbeats, lease
from tests.support.pipeline import enqueue_rows, final_audit, paced_rows, wait_until, write_parquet


def test_a_poison_row_gets_its_part_dead_lettered_and_everything_else_finishes(
    r, keys, redis_url, image_host, fleets, tmp_path
):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 12, failures=False), part_size=4)
    fleet = fleets(redis_url, keys, shard_dir)
    # Row 5 (part src:1) kills the image worker process each time it is decoded.
    worker = fleet.start(
        "--exit-when-empty",
        "--lease-seconds",
        "2",
        "--max-deliveries",
        "2",
        "--parts-in-flight",
        "1",
        env=fault_env("image_worker", part="src:1@5"),
    )
    fleet.wait_all(90)
    [(_, fields)] = r.xrange(keys.parts_dead)
    dead = bus.decode(fields)
    assert (dead["source"], dead["part"], dead["deliveries"]) == ("src", 1, 3)
    assert "delivered 3 times; last error: processing_crash: row 5 (http://127.0.0.1" in dead["error"]
    log = fleet.tail(worker, 100_000)
    assert log.count("died on this image; starting another") == 2  # once per delivery allowed
    # The pool recovered: parts claimed after the first crash finished with every image.
    assert log.index("committed part src:2") > log.index("part src:1 failed")
    report = final_audit(r, keys, shard_dir)
    assert report.parts == {"pending": 0, "in_flight": 0, "done": 2, "dead": 1}
    assert (report.samples, report.failures, report.dead_rows) == (8, 0, 4)


def test_a_full_disk_registers_nothing_and_the_service_waits_for_space_or_gives_up(
    r, keys, redis_url, image_host, fleets, tmp_path
):
    """Two pipelines at once: on one the disk frees up, on the other it stays full. A full disk
    is the environment's failure: no delivery is counted and no part dies, whatever
    --max-deliveries; a batch run that stays full gives up with exit code 3 and one line.

    The pause is watched where it lasts as long as the test looks (--environment-patience 600);
    the run that gives up after 8 s says in its log that it paused, so no check races its end."""
    runs = {}
    for case in ("frees_up", "stays_full"):
        ckeys, shard_dir, full = (
            bus.Keys(f"{keys.namespace}-{case}"),
            tmp_path / case / "shards",
            tmp_path / case / "full",
        )
        enqueue_rows(r, ckeys, shard_dir, paced_rows(image_host, 4, failures=False), part_size=4)
        full.touch()
        fleet = fleets(redis_url, ckeys, shard_dir, name=f"{case}-logs")
        fleet.start(
            "--exit-when-empty",
            *lease(2),
            "--max-deliveries",
            "1",
            "--environment-patience",
            "8" if case == "stays_full" else "600",
            env=fault_env("enospc", while_file=full),
        )
        runs[case] = (ckeys, shard_dir, full, fleet)
    ckeys, shard_dir, full, fleet = runs["frees_up"]
    [beat] = wait_until(
        lambda: [b for b in heartbeats(r, ckeys) if b.state == "paused_for_disk"],
        60,
        "the downloader to pause for the full disk",
    )
    assert beat.reason.startswith("disk_full: No space left on device"), beat
    assert "shard disk full: no new parts" in fleet.logs()

    def paused_status() -> dict | None:
        status = cli_json(redis_url, ckeys, shard_dir, "status")
        return status if status["urls"]["paused_for_disk"] == 1 else None

    # Each retry of the part after a back-off shows `working` while it runs (and fails again), so
    # `status` is read until it shows the pause, as an operator sees it nearly all the time.
    status = wait_until(paused_status, 60, "`streamcap status` to report the pause")
    assert any("found the shard disk full (disk_full: No space left" in hint for hint in status["hints"])

    stays_ckeys, stays_dir, _, stays_fleet = runs["stays_full"]
    [gave_up] = stays_fleet.procs
    assert timing.wait(gave_up, 90) == 3, stays_fleet.tail(gave_up)
    log = stays_fleet.tail(gave_up)
    assert "shard disk full: no new parts" in log  # it paused too, until its patience ran out
    assert any(
        "giving up after" in line and "disk_full: No space left on device" in line
        for line in log.strip().splitlines()[-3:]
    )
    assert heartbeats(r, stays_ckeys) == []  # gone from `streamcap status`

    # Nothing half-written is registered, on either disk; nor left behind by the run that ended (the
    # other may be inside a retry, its temporary file not yet removed: its final audit checks it).
    for case_keys, case_dir, _, _ in runs.values():
        assert r.xlen(case_keys.shards) == 0 and not list(case_dir.glob("*.tar")) and not list(case_dir.glob("*.json"))
    assert tempfiles.temp_files(stays_dir) == []
    report = final_audit(r, stays_ckeys, stays_dir, expect_done=False)
    # Released for the next run (claimable at once), never counted against: nothing is dead.
    assert (report.parts["done"], report.parts["dead"], report.parts["pending"] + report.parts["in_flight"]) == (
        0,
        0,
        1,
    )
    assert r.hlen(stays_ckeys.parts_strikes) == 0

    full.unlink()  # space is back
    fleet.wait_all(90)  # the same process, up all along, finished by itself
    report = final_audit(r, ckeys, shard_dir)
    assert report.parts["done"] == 1 and report.samples == 4 and report.deliveries == {1: 1}


def test_enqueueing_a_source_twice_and_concurrently_adds_each_part_once(
    r, keys, redis_url, image_host, fleets, tmp_path
):
    source = write_parquet(tmp_path / "urls.parquet", paced_rows(image_host, 9, failures=False))
    enqueue = ("enqueue", str(source), "--part-size", "3", "--name", "src")
    runs = {}
    for case, n, at_once in (("twice", 2, False), ("concurrently", 4, True)):
        ckeys, shard_dir = bus.Keys(f"{keys.namespace}-{case}"), tmp_path / case / "shards"
        fleet = fleets(redis_url, ckeys, shard_dir, name=f"{case}-logs")
        for _ in range(n):
            proc = fleet.start(*enqueue[1:], command="enqueue")
            if not at_once:
                assert timing.wait(proc, 60) == 0, fleet.tail(proc)
        fleet.wait_all(60)
        messages = [fleet.tail(p) for p in fleet.procs]
        assert sum("enqueued source src: 9 rows in 3 parts" in m for m in messages) == 1, messages
        assert sum("already enqueued" in m for m in messages) == n - 1, messages
        queue = read_part_queue(r, ckeys, problems := [])
        assert not problems and {pid: len(ids) for pid, ids in queue.entries.items()} == {
            f"src:{i}": 1 for i in range(3)
        }
        assert r.xlen(ckeys.parts) == 3 and r.hlen(ckeys.sources) == 1
        fleet.start("--exit-when-empty")
        runs[case] = (ckeys, shard_dir, fleet)
    for case, (ckeys, shard_dir, fleet) in runs.items():
        fleet.wait_all(60)
        report = final_audit(r, ckeys, shard_dir)
        assert report.parts["done"] == 3 and report.samples == 9 and report.deliveries == {1: 3}, case
