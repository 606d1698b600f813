"""`streamcap parts retry`: dead parts and failed rows come back, and the accounting stays exact.

Issue 15, finding 4: a download without --allow-private leaves every loopback row
`blocked_address`, and before `parts retry` nothing could fetch them again.
"""

from __future__ import annotations

import json
import signal
import socket

from streamcap import bus
from streamcap.cli import app
from streamcap.downloader.claims import PartClaimer
from streamcap.entrypoint import run_app
from streamcap.shardwriter import tempfiles
from streamcap.shardwriter.audit import audit
from tests.support import timing
from tests.support.fleet import download, fault_env, lease
from tests.support.pipeline import enqueue_rows, failure_counters, final_audit, outcomes, paced_rows, part_stats


def streamcap(capsys, redis_url, keys, shard_dir, *args):
    """(exit code, stdout) of an in-process `streamcap ARGS` against this pipeline."""
    capsys.readouterr()  # what the test printed before
    argv = [*args, "--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", str(shard_dir)]
    code = run_app(app, argv)
    return code, capsys.readouterr().out


def last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def refused_url() -> str:
    """A loopback URL whose port refuses connections (nothing listens there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.jpg"


def test_blocked_rows_are_fetched_again_after_the_flag_is_fixed(r, keys, redis_url, image_host, tmp_path, capsys):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 30, failures=False), part_size=10)
    ran = download(redis_url, keys, shard_dir, tmp_path / "first.log")  # --allow-private forgotten
    assert ran.returncode == 0, ran.log
    assert failure_counters(r, keys) == {"blocked_address": 30}

    code, out = streamcap(capsys, redis_url, keys, shard_dir, "parts", "retry", "--reason", "blocked_address")
    assert code == 0 and last_line(out) == "retry: 0 dead parts requeued, 30 failed rows requeued"
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "parts", "retry", "--reason", "blocked_address")
    assert code == 0 and last_line(out) == "retry: 0 dead parts requeued, 0 failed rows requeued"  # already queued
    assert audit(r, keys, shard_dir).retries_open == 3  # the retries are visible while queued

    ran = download(redis_url, keys, shard_dir, tmp_path / "second.log", "--allow-private")
    assert ran.returncode == 0, ran.log
    assert set(outcomes(shard_dir).values()) == {("sample", "")} and len(outcomes(shard_dir)) == 30
    report = final_audit(r, keys, shard_dir)
    assert (report.samples, report.failures, report.retried_rows, report.retried_samples) == (30, 0, 30, 30)
    stats = r.hgetall(keys.stats)
    assert failure_counters(r, keys) == {} and int(stats[bus.STAT_ROWS]) == 30
    assert int(stats[bus.STAT_RETRIED_ROWS]) == 30 and int(stats[bus.STAT_SAMPLES]) == 30
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "status", "--json")
    assert code == 0 and json.loads(out)["urls"]["retried_rows"] == 30


def test_dead_parts_are_requeued_once(r, keys, redis_url, image_host, tmp_path, capsys):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 20, failures=False), part_size=10)
    claimer = PartClaimer(r, keys, "w1", lease_ms=60_000)
    claimer.ensure_group()
    claimed = claimer.claim(block_ms=100)
    assert claimer.dead_letter(claimed, claimed.part(), "delivered 6 times; last error: disk_full")
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "parts", "retry", "--dead")
    assert code == 0 and last_line(out) == "retry: 1 dead parts requeued, 0 failed rows requeued"
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "parts", "retry", "--dead")
    assert code == 0 and last_line(out) == "retry: 0 dead parts requeued, 0 failed rows requeued"

    ran = download(redis_url, keys, shard_dir, tmp_path / "dl.log", "--allow-private")
    assert ran.returncode == 0, ran.log
    report = final_audit(r, keys, shard_dir)
    assert report.parts == {"pending": 0, "in_flight": 0, "done": 2, "dead": 0} and report.samples == 20
    assert int(r.hget(keys.stats, bus.STAT_PARTS_REQUEUED)) == 1


def test_no_option_retries_dead_parts_and_transient_failures_only(r, keys, redis_url, image_host, tmp_path, capsys):
    shard_dir = tmp_path / "shards"
    gone = refused_url()
    rows = [(f"{gone}?i={i}" if i % 3 == 0 else image_host.url(f"/status/404?i={i}"), "A dog.") for i in range(12)]
    enqueue_rows(r, keys, shard_dir, rows, part_size=6)
    ran = download(redis_url, keys, shard_dir, tmp_path / "first.log", "--allow-private")
    assert ran.returncode == 0, ran.log
    assert failure_counters(r, keys) == {"connect_error": 4, "http_status": 8}

    code, out = streamcap(capsys, redis_url, keys, shard_dir, "parts", "retry", "--reason", "no_such_reason")
    assert code == 1  # one line naming the reasons there are
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "parts", "retry")
    assert code == 0 and last_line(out) == "retry: 0 dead parts requeued, 4 failed rows requeued"  # not the 404s

    ran = download(redis_url, keys, shard_dir, tmp_path / "second.log", "--allow-private")
    assert ran.returncode == 0, ran.log
    report = final_audit(r, keys, shard_dir)  # each row once, with its latest outcome
    assert (report.failures, report.retried_rows, report.retried_samples) == (12, 4, 0)
    assert failure_counters(r, keys) == {"connect_error": 4, "http_status": 8}


def test_a_retry_killed_before_its_commit_is_redone_once(r, keys, redis_url, image_host, fleets, tmp_path, capsys):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 8, failures=False), part_size=4)
    assert download(redis_url, keys, shard_dir, tmp_path / "first.log").returncode == 0
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "parts", "retry", "--reason", "blocked_address")
    assert last_line(out) == "retry: 0 dead parts requeued, 8 failed rows requeued"
    retry_of_0 = f"src:0~{r.hget(keys.parts_retries, 'src:0')}"

    fleet = fleets(redis_url, keys, shard_dir)
    [victim] = [
        fleet.start("--lease-seconds", "1", "--parts-in-flight", "1", env=fault_env("before_commit", retry_of_0))
    ]
    assert timing.wait(victim, 90) == -signal.SIGKILL, fleet.tail(victim)
    fleet.killed.add(victim.pid)
    merged = part_stats(shard_dir)[0]
    assert list(merged.retries) == [retry_of_0.split("~")[1]] and not r.sismember(keys.parts_done, retry_of_0)
    # The victim may have died writing the retry of src:1 as well (claimed once src:0's rows were
    # all on the network: how far it got depends on the machine's speed). Its temporary files are
    # what the next downloader sweeps when it starts, the writer being gone; sweep them the same way.
    swept = tempfiles.sweep(shard_dir, stale_s=3600)
    assert all(tempfiles.parse_temp_name(p.name)[0].pid == victim.pid for p in swept), swept
    mid = audit(r, keys, shard_dir)  # merged on disk, not committed: the audit counts the committed outcome
    assert mid.lost == 0 and mid.discrepancies == [] and mid.retries_open >= 1

    fleet.start("--exit-when-empty", *lease())
    fleet.wait_all(90)
    report = final_audit(r, keys, shard_dir)
    assert (report.samples, report.failures, report.retried_rows, report.retried_samples) == (8, 0, 8, 8)
    assert r.hget(keys.stats, bus.STAT_PARTS_COMMITTED) == "2" and r.hlen(keys.parts_retries) == 0
