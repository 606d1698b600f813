"""`streamcap status` over a pipeline state built from the real schema (real redis-server)."""

from __future__ import annotations

import dataclasses
import json
import time

from streamcap import bus
from streamcap.formats.heartbeats import HEARTBEAT_VERSION, DownloaderHeartbeat, GcHeartbeat, TrainerHeartbeat
from streamcap.formats.records import PartRecord
from streamcap.ops import status
from streamcap.ops.status_view import render
from tests.support.heartbeats import record
from tests.support.parts import enqueue_source


def test_parts_by_state_and_the_invariant(r, keys, tmp_path):
    enqueue_source(r, keys, tmp_path, "src", rows=450, part_size=100)  # 5 parts: 4 of 100 rows, 1 of 50
    delivered = r.xreadgroup(bus.GROUP_DOWNLOADERS, "w1", {keys.parts: ">"}, count=3)[0][1]
    done_id, dead_id, flight_id = (entry_id for entry_id, _ in delivered)
    r.xack(keys.parts, bus.GROUP_DOWNLOADERS, done_id)
    r.sadd(keys.parts_done, "src:0")
    r.xack(keys.parts, bus.GROUP_DOWNLOADERS, dead_id)
    r.xadd(keys.parts_dead, bus.encode(PartRecord("src", 1, 100, 200).to_message() | {"error": "boom"}))

    parts = status.part_summary(r, keys)
    assert (parts["enqueued"], parts["pending"], parts["in_flight"], parts["done"], parts["dead"]) == (5, 2, 1, 1, 1)
    assert parts["rows"] == {"pending": 150, "in_flight": 100, "done": 100, "dead": 100}
    assert parts["rows_enqueued"] == 450 and parts["consistent"] is True

    r.sadd(keys.parts_done, "src:2")  # done while still in flight: two states at once
    assert status.part_summary(r, keys)["consistent"] is False


def test_full_report_with_every_role_and_hints(r, keys, tmp_path):
    enqueue_source(r, keys, tmp_path, "src", rows=300, part_size=100)
    r.hset(
        keys.stats,
        mapping={
            bus.STAT_ROWS: 100,
            bus.STAT_SAMPLES: 90,
            bus.STAT_FAILURES: 10,
            bus.STAT_FAIL_PREFIX + "timeout": 7,
            bus.STAT_FAIL_PREFIX + "not_an_image": 3,
            bus.STAT_SHARDS: 2,
            bus.STAT_SHARD_BYTES: 5_000_000,
        },
    )
    downloader = record(
        DownloaderHeartbeat,
        state="paused_for_disk",
        reason="shard bytes over budget",
        urls_per_s=10.0,
        images_per_s=8.0,
        mb_per_s=1.5,
        failures={"timeout": 2},
        dns_lookups=7,
        dns_cache_hits=93,
    )
    bus.write_heartbeat(r, keys, "d1", downloader)
    trainer = record(
        TrainerHeartbeat,
        state="training",
        run="run1",
        step=40,
        max_steps=100,
        samples_per_s=50.0,
        data_wait_pct=35.0,
        fresh=300,
        replay=700,
        fresh_shards_pending=3,
        loss=2.5,
    )
    bus.write_heartbeat(r, keys, "run1-rank0", trainer)
    # Rank 1 has logged no loss yet (NaN), and only rank 0 counts the shards not yet read (-1).
    rank1 = record(TrainerHeartbeat, state="training", run="run1", rank=1, step=39, data_wait_pct=35.0)
    bus.write_heartbeat(r, keys, "run1-rank1", dataclasses.replace(rank1, fresh_shards_pending=-1, loss=float("nan")))
    gc = record(GcHeartbeat, state="watching", deleted=4, last_result="nothing more to free", last_round_ts=time.time())
    bus.write_heartbeat(r, keys, "gc1", gc)
    r.hset(keys.runs, "run1", json.dumps({"started": time.time(), "last_seen": time.time(), "state": "running"}))
    r.hset(
        keys.control,
        mapping={
            bus.CONTROL_DISK_PAUSED: "shard bytes 5.0 GB over budget 4.0 GB",
            bus.CONTROL_DISK_PAUSED_SINCE: time.time(),
        },
    )
    r.xadd(keys.evals, bus.encode({"step": 40, "run": "run1", "status": "ok", "scores": {"CIDEr": 0.5, "BLEU-4": 0.1}}))
    r.hset(keys.evals_best, mapping={"metric": "CIDEr", "value": 0.5, "step": 40, "scores": json.dumps({"CIDEr": 0.5})})
    bus.record_outage(r, keys, 12.0, "downloader d1")

    report = status.collect(r, keys, shard_dir=tmp_path)
    assert {"parts", "urls", "shards", "trainer", "eval", "workers", "redis", "hints"} <= set(report)
    urls = report["urls"]
    assert (urls["urls_per_s"], urls["success_pct"], urls["success_pct_total"]) == (10.0, 80.0, 90.0)
    assert urls["failures_by_reason"] == {"timeout": 7, "not_an_image": 3}
    assert (urls["dns_lookups"], urls["dns_cache_hits"]) == (7, 93)
    assert report["hosts"] == {"backoff": [], "failing": [], "hosts_failing": 0}
    assert report["shards"]["paused_for_disk"].startswith("shard bytes") and report["shards"]["disk"]["free"] > 0
    trainer = report["trainer"]
    assert (trainer["step"], trainer["data_wait_pct"], trainer["fresh_ratio"], trainer["fresh_shards_unread"]) == (
        40,
        35.0,
        0.3,
        3,
    )
    assert (trainer["ranks"], trainer["loss"]) == (2, 2.5)
    assert report["shards"]["gc"]["deleted"] == 4 and report["shards"]["gc"]["last_result"] == "nothing more to free"
    assert report["urls"]["top_failures_live"] == [("timeout", 2)]
    workers = {w["id"]: w for w in report["workers"]}
    assert workers["d1"] == {
        "role": "downloader",
        "id": "d1",
        "state": "paused_for_disk",
        "reason": "shard bytes over budget",
        "age_s": workers["d1"]["age_s"],
        "stale": False,
    }
    assert workers["run1-rank0"]["state"] == "training" and workers["gc1"]["role"] == "gc"
    assert report["eval"]["best"]["scores"] == {"CIDEr": 0.5}
    assert report["redis"]["last_outage"]["who"] == "downloader d1" and report["redis"]["reconnects"] == 1
    hints = "\n".join(report["hints"])
    assert "waited for data 35 %" in hints and "add downloaders" in hints
    assert "paused for disk" in hints and "Redis was unreachable for 12 s" in hints
    assert "only 30 % of trained samples are fresh" in hints
    json.dumps(report)  # --json must be serialisable
    render(report)  # and the tables must build


def test_no_downloader_but_parts_waiting_is_a_hint(r, keys, tmp_path):
    enqueue_source(r, keys, tmp_path, "src", rows=10, part_size=5)
    report = status.collect(r, keys)
    assert any("no downloader is running" in h for h in report["hints"])
    assert report["trainer"]["step"] is None and report["eval"]["latest"] is None


def test_a_heartbeat_this_streamcap_cannot_read_is_shown_not_summed(r, keys):
    """A downloader of a newer streamcap (a higher heartbeat version) counts in no rate, and says why."""
    newer = HEARTBEAT_VERSION + 1
    fields = record(DownloaderHeartbeat, state="working", urls_per_s=99.0).to_fields() | {"v": str(newer)}
    r.hset(keys.heartbeat(bus.ROLE_DOWNLOADER, "d-new"), mapping=fields | {"ts": time.time()})
    bus.write_heartbeat(r, keys, "d-old", record(DownloaderHeartbeat, state="working", urls_per_s=5.0))
    report = status.collect(r, keys)
    assert (report["urls"]["urls_per_s"], report["urls"]["downloaders_live"]) == (5.0, 1)
    unreadable = next(w for w in report["workers"] if w["id"] == "d-new")
    assert (
        unreadable["state"] == "unreadable"
        and f"version {newer}, this streamcap reads {HEARTBEAT_VERSION}" in unreadable["reason"]
    )
    assert any("1 heartbeat(s) this streamcap cannot read" in h and "d-new" in h for h in report["hints"])
    json.dumps(report)
    render(report)
