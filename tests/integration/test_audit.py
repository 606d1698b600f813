"""`streamcap audit` and the shard tools: each kind of broken state is found and named."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from streamcap import bus
from streamcap.cli import app
from streamcap.entrypoint import run_app
from streamcap.shardwriter.audit import TEMP_STALE_S, audit
from streamcap.shardwriter.registry import registered_shards
from streamcap.shardwriter.tempfiles import TempOwner, temp_path
from tests.support.parts import claim_part, enqueue_source, process_part


@pytest.fixture
def pipeline(r, keys, tmp_path):
    """Three parts of 10 rows: two committed, one still pending."""
    enqueue_source(r, keys, tmp_path, "src", rows=30, part_size=10)
    for _ in range(2):
        assert process_part(r, keys, tmp_path, "w1").applied
    return [s for _, s in registered_shards(r, keys)]


def cli(capsys, keys, tmp_path, redis_url, *args):
    code = run_app(app, [*args, "--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", str(tmp_path)])
    return code, capsys.readouterr()


def test_a_consistent_pipeline_passes(r, keys, tmp_path, pipeline):
    report = audit(r, keys, tmp_path)
    assert report.ok and report.discrepancies == []
    assert report.parts == {"pending": 1, "in_flight": 0, "done": 2, "dead": 0}
    assert (report.rows_enqueued, report.unfinished_rows, report.samples, report.failures) == (30, 10, 17, 3)
    assert not audit(r, keys, tmp_path, expect_done=True).ok
    claim_part(r, keys, "w9")
    assert audit(r, keys, tmp_path).parts["in_flight"] == 1


def test_missing_shard_is_lost_rows(r, keys, tmp_path, pipeline):
    (tmp_path / pipeline[0].name).unlink()
    report = audit(r, keys, tmp_path)
    assert report.lost == pipeline[0].samples
    assert any(f"registered shard {pipeline[0].name} does not exist" in d for d in report.discrepancies)


def test_duplicate_registration_and_duplicate_keys(r, keys, tmp_path, pipeline):
    r.xadd(keys.shards, bus.encode(pipeline[0].to_message()))
    copy = pipeline[1].name.replace("-0001.tar", "-0009.tar")
    shutil.copy(tmp_path / pipeline[1].name, tmp_path / copy)
    r.xadd(keys.shards, bus.encode({**pipeline[1].to_message(), "name": copy}))
    report = audit(r, keys, tmp_path)
    assert report.duplicates == pipeline[0].samples + pipeline[1].samples
    assert any("is registered 2 times" in d for d in report.discrepancies)
    assert any(f"is in {pipeline[1].name} and {copy}" in d for d in report.discrepancies)


def test_lost_part_temp_file_orphan_and_counters(r, keys, tmp_path, pipeline):
    [(entry_id, _)] = r.xreadgroup(bus.GROUP_DOWNLOADERS, "w1", {keys.parts: ">"}, count=1)[0][1]
    r.xack(keys.parts, bus.GROUP_DOWNLOADERS, entry_id)  # acknowledged without a commit: lost
    dead = TempOwner(TempOwner.me().host, 2**22 + 7, "1")
    temp_path(tmp_path, "src-000000-0000.tar", dead).write_bytes(b"x")
    (tmp_path / "src-000001-0007.tar").write_bytes((tmp_path / pipeline[0].name).read_bytes())
    r.hincrby(keys.stats, bus.STAT_SAMPLES, 1)
    report = audit(r, keys, tmp_path)
    text = "\n".join(report.discrepancies)
    assert report.lost == 10 and "part src:2 (rows 20-29) is in no state" in text
    assert "temporary file .tmp~" in text and "its writer is gone" in text
    assert "shard file src-000001-0007.tar is not registered (part src:1 is done)" in text
    assert "stats counter samples is 18, the done parts' stats files sum to 17" in text


def test_stats_file_gone_and_tampered_failures(r, keys, tmp_path, pipeline):
    (tmp_path / "src-000000.stats.json").unlink()
    stats_path = tmp_path / "src-000001.stats.json"
    saved = json.loads(stats_path.read_text())
    saved["failures"] = saved["failures"][:-1]  # one failed row forgotten
    stats_path.write_text(json.dumps(saved))
    report = audit(r, keys, tmp_path)
    assert report.lost == 10 + 1
    assert any("part src:0 is done but has no stats file" in d for d in report.discrepancies)
    assert any("part src:1: 1 of 10 rows are neither a sample nor a failure" in d for d in report.discrepancies)


def test_cli_audit_ls_and_verify(r, keys, tmp_path, redis_url, pipeline, capsys):
    code, out = cli(capsys, keys, tmp_path, redis_url, "audit", "--json")
    assert code == 0 and json.loads(out.out)["lost"] == 0
    code, out = cli(capsys, keys, tmp_path, redis_url, "audit", "--expect-done")
    assert code == 1 and "every part should be done or dead" in out.out
    r.hincrby(keys.shard_reads("run1"), pipeline[0].name, 3)
    r.hset(keys.runs, "run1", json.dumps({"state": "running"}))
    code, out = cli(capsys, keys, tmp_path, redis_url, "shards", "ls", "--json")
    listing = json.loads(out.out)
    assert code == 0 and [row["name"] for row in listing] == [s.name for s in pipeline]
    assert listing[0]["reads"] == 3 and listing[0]["samples"] == pipeline[0].samples
    code, out = cli(capsys, keys, tmp_path, redis_url, "shards", "ls")
    assert code == 0 and pipeline[0].name in out.out
    code, out = cli(capsys, keys, tmp_path, redis_url, "shards", "verify")
    assert code == 0 and f"verify: {len(pipeline)} shards" in out.out


def test_verify_quarantines_and_unregisters_a_bad_shard(r, keys, tmp_path, redis_url, pipeline, capsys):
    bad = tmp_path / pipeline[0].name
    bad.write_bytes(bad.read_bytes()[:1000])
    code, out = cli(capsys, keys, tmp_path, redis_url, "shards", "verify", str(bad), "--quarantine")
    assert code == 1 and f"BAD {bad}" in out.out and "truncated" in out.out
    assert not bad.exists() and (tmp_path / "quarantine" / bad.name).exists()
    assert bad.name not in [s.name for _, s in registered_shards(r, keys)]
    assert r.sismember(keys.shards_deleted, bad.name)
    report = audit(r, keys, tmp_path)  # its samples are missing (not gc'd): never fine (issue 15)
    assert report.lost == 0 and report.missing == pipeline[0].samples and not report.ok
    assert any(f"shard {bad.name}" in d and "was quarantined" in d for d in report.discrepancies)


def test_tools_without_redis_say_so_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert run_app(app, ["audit", "--shard-dir", str(tmp_path)]) == 1
    assert "REDIS_URL is not set" in capsys.readouterr().err
    assert run_app(app, ["shards", "gc", "--max-disk-bytes", "lots"]) == 1
    assert "--max-disk-bytes / STREAMCAP_MAX_DISK_BYTES: expected a byte size" in capsys.readouterr().err


def test_cli_gc_and_reconcile(r, keys, tmp_path, redis_url, pipeline, capsys):
    r.hset(keys.runs, "run1", json.dumps({"state": "running"}))
    for shard in pipeline:
        r.hincrby(keys.shard_reads("run1"), shard.name, 1)
    code, out = cli(capsys, keys, tmp_path, redis_url, "shards", "gc", "--max-disk-bytes", "1", "--dry-run", "--json")
    plan = json.loads(out.out)
    assert code == 0 and plan["deleted"] == [s.name for s in pipeline] and plan["dry_run"]
    assert all((tmp_path / s.name).exists() for s in pipeline)
    code, out = cli(capsys, keys, tmp_path, redis_url, "shards", "gc", "--max-disk-bytes", "1")
    assert code == 0 and f"gc: deleted {len(pipeline)} shards" in out.out
    assert not list(tmp_path.glob("*.tar")) and audit(r, keys, tmp_path).ok  # deleted, not lost
    code, out = cli(capsys, keys, tmp_path, redis_url, "shards", "reconcile")
    assert code == 0 and "reconcile: 0 parts restored" in out.out and "0 parts re-enqueued" in out.out


def test_reconcile_registers_what_a_done_part_lost(r, keys, tmp_path, pipeline):
    from streamcap.shardwriter.reconcile import reconcile

    entry_id = next(i for i, s in registered_shards(r, keys) if s.name == pipeline[1].name)
    r.xdel(keys.shards, entry_id)  # as a torn AOF tail might leave it
    report = audit(r, keys, tmp_path)
    assert report.lost == pipeline[1].samples
    assert any(
        f"shard {pipeline[1].name} of done part src:0 is in its stats file but not registered" in d
        for d in report.discrepancies
    )
    assert reconcile(r, keys, tmp_path).shards_registered == [pipeline[1].name]
    assert audit(r, keys, tmp_path).ok


def test_a_live_writers_temp_file_is_work_in_progress_not_a_discrepancy(r, keys, tmp_path, pipeline, capsys, redis_url):
    """A healthy running pipeline audits clean (exit 0): the file a running writer is writing is a
    note. A dead writer's file, or another host's file untouched past the sweeper's bound, is not."""
    temp_path(tmp_path, "src-000002-0000.tar", TempOwner.me()).write_bytes(b"being written")
    report = audit(r, keys, tmp_path)
    assert not any("temporary file" in d for d in report.discrepancies), report.discrepancies
    assert any("is being written (its writer is running)" in n for n in report.notes), report.notes
    code, out = cli(capsys, keys, tmp_path, redis_url, "audit")  # a monitoring script's view
    assert code == 0, out.out + out.err

    elsewhere = temp_path(tmp_path, "src-000002-0001.tar", TempOwner("another-host", 4242, "1"))
    elsewhere.write_bytes(b"x")
    assert not any("temporary file" in d for d in audit(r, keys, tmp_path).discrepancies)
    long_ago = time.time() - TEMP_STALE_S - 60
    os.utime(elsewhere, (long_ago, long_ago))
    text = "\n".join(audit(r, keys, tmp_path).discrepancies)
    assert "written by another host, untouched for 3600 s" in text
