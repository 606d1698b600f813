"""A worker SIGKILLed at each step of finalize + commit; redelivery repairs it exactly.

The worker is a real subprocess (`python -m tests.support.parts`) that kills itself with
SIGKILL through the documented STREAMCAP_FAULT hook; another worker (this test process) then
reclaims what is left and the audit must find zero lost and zero duplicate rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamcap import bus
from streamcap.shardwriter import faults
from streamcap.shardwriter.audit import audit
from streamcap.shardwriter.reconcile import reconcile
from tests.support import timing
from tests.support.parts import enqueue_source, process_part

ROOT = Path(__file__).resolve().parents[2]


def run_worker(redis_url: str, keys: bus.Keys, shard_dir: Path, consumer: str, fault: str | None = None):
    env = dict(os.environ)
    env.pop(faults.FAULT_ENV, None)
    if fault:
        env[faults.FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "tests.support.parts", redis_url, keys.namespace, str(shard_dir), consumer],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timing.scaled(60),
    )


def drain(r, keys, shard_dir, consumer="w2"):
    """Process parts until none is new and none is left idle by a dead worker."""
    while process_part(r, keys, shard_dir, consumer) is not None:
        pass


@pytest.mark.parametrize("window", faults.WRITER_POINTS)
def test_crash_at_each_window_then_redelivery_is_exact(r, redis_url, keys, tmp_path, window):
    enqueue_source(r, keys, tmp_path, "src", rows=24, part_size=12)  # 2 parts, 3 shards each
    crashed = run_worker(redis_url, keys, tmp_path, "w1", fault=window)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert f"SIGKILL at {window}" in crashed.stderr
    committed = window in ("during_commit", "after_commit")
    assert r.sismember(keys.parts_done, "src:0") == committed
    drain(r, keys, tmp_path)
    report = audit(r, keys, tmp_path, expect_done=True)
    assert report.discrepancies == [] and report.ok, report.discrepancies
    assert (report.lost, report.duplicates, report.parts["done"]) == (0, 0, 2)
    assert (report.samples, report.failures) == (20, 4)
    assert r.hget(keys.stats, bus.STAT_ROWS) == "24"


def test_crash_before_commit_then_redis_loses_everything(r, redis_url, keys, tmp_path):
    """The shard dir alone brings the registry back: the crashed part's finished output included."""
    enqueue_source(r, keys, tmp_path, "src", rows=36, part_size=12)
    assert process_part(r, keys, tmp_path, "w0").applied
    assert run_worker(redis_url, keys, tmp_path, "w1", fault="before_commit").returncode == -signal.SIGKILL
    assert run_worker(redis_url, keys, tmp_path, "w1", fault="after_temp_write").returncode == -signal.SIGKILL
    for key in r.scan_iter(match=f"{keys.namespace}:*"):  # as a FLUSHALL would, for this pipeline
        r.delete(key)
    assert not audit(r, keys, tmp_path).ok
    report = reconcile(r, keys, tmp_path)
    assert report.sources_restored == ["src"]
    assert report.parts_restored == ["src:0", "src:1"]  # src:1 was finished on disk, never committed
    assert report.parts_requeued == ["src:2"]
    assert report.temp_files_swept  # the writer killed after its temp write
    drain(r, keys, tmp_path)
    final = audit(r, keys, tmp_path, expect_done=True)
    assert final.ok, final.discrepancies
    assert (final.lost, final.duplicates, final.samples + final.failures) == (0, 0, 36)
