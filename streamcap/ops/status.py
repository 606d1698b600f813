"""`streamcap status`: one view of the whole pipeline, gathered from Redis (and the shard dir).

    report = collect(r, keys, shard_dir=Path("shards"))   # plain data: what --json prints
    console.print(status_view.render(report))              # rich tables for people

Sections (and --json objects): `redis`, `parts` (the queue), `urls` (downloads), `workers`
(heartbeats), `shards`, `trainer`, `eval`, and `hints` — short advice where the numbers call
for it ("the trainer waited for data 30 % of the time: add downloaders").

Heartbeats are read as their records (streamcap.formats.heartbeats), never by field name here;
one no record reads (another streamcap version) is listed in `workers` as `unreadable`, with
the reason, and left out of every sum.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, TypeVar

import redis

from streamcap import bus
from streamcap.bus.partqueue import read_part_queue
from streamcap.common.store import ShardStore, StoreUnavailable, open_store
from streamcap.formats.heartbeats import (
    DOWNLOADER_PAUSED,
    DOWNLOADER_PAUSED_FOR_DISK,
    ENDED_STATES,
    TRAINER_FAILED,
    TRAINER_WAITING_FOR_DATA,
    DownloaderHeartbeat,
    EvaluatorHeartbeat,
    GcHeartbeat,
    HeartbeatRecord,
    TrainerHeartbeat,
)
from streamcap.formats.records import SourceRecord, is_retry_id
from streamcap.formats.shards import SHARD_SUFFIX
from streamcap.ops import attention
from streamcap.ops.hosts import host_report

_SIZE_COMMANDS = {"stream": "xlen", "hash": "hlen", "set": "scard", "string": "strlen", "list": "llen", "zset": "zcard"}
DATA_WAIT_HINT_PCT = 20.0
STATUS_TOP_HOSTS = 5  # the worst failing hosts status lists (`streamcap hosts --top N` lists more)
R = TypeVar("R", bound=HeartbeatRecord)


def live_records(beats: list[bus.Heartbeat], record_type: type[R]) -> list[R]:
    """The records of the heartbeats that are fresh and readable as `record_type`."""
    return [b.record for b in beats if not b.stale and isinstance(b.record, record_type)]


def redis_info(r: redis.Redis, keys: bus.Keys) -> dict[str, Any]:
    """Version, memory, persistence mode, and the last outage a service waited out."""
    info = r.info()
    aof = bool(int(info.get("aof_enabled", 0)))
    try:
        rdb = bool(r.config_get("save").get("save"))
    except redis.ResponseError:  # CONFIG disabled (managed Redis)
        rdb = None
    outage = r.hget(keys.control, bus.CONTROL_LAST_OUTAGE)
    return {
        "version": info.get("redis_version"),
        "uptime_s": info.get("uptime_in_seconds"),
        "used_memory": info.get("used_memory"),
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory": info.get("maxmemory"),
        "persistence": "aof" if aof else ("rdb" if rdb else "none" if rdb is not None else "unknown"),
        "aof_last_write_status": info.get("aof_last_write_status"),
        "connected_clients": info.get("connected_clients"),
        "reconnects": int(r.hget(keys.stats, bus.STAT_REDIS_RECONNECTS) or 0),
        "last_outage": json.loads(outage) if outage else None,
    }


def key_sizes(r: redis.Redis, keys: bus.Keys) -> dict[str, dict[str, Any]]:
    """Size of every fixed key of the schema (entries, fields or members); 0 when absent."""
    schema = keys.schema()
    pipe = r.pipeline(transaction=False)
    for key, _type in schema.values():
        pipe.type(key)
    actual_types = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for (key, expected), actual in zip(schema.values(), actual_types):
        getattr(pipe, _SIZE_COMMANDS.get(actual if actual != "none" else expected))(key)
    sizes = pipe.execute()
    return {
        name: {"key": key, "type": expected, "size": int(size or 0), "wrong_type": actual not in ("none", expected)}
        for (name, (key, expected)), actual, size in zip(schema.items(), actual_types, sizes)
    }


def part_summary(r: redis.Redis, keys: bus.Keys) -> dict[str, Any]:
    """Parts and rows by state; `consistent` is the queue half of the accounting invariant."""
    problems: list[str] = []
    queue = read_part_queue(r, keys, problems)
    sources = {}
    for raw in r.hvals(keys.sources):
        source = SourceRecord.from_message(json.loads(raw))
        sources[source.id] = source
    counts = dict.fromkeys(bus.PART_STATES, 0)
    rows = dict.fromkeys(bus.PART_STATES, 0)
    inconsistent = 0
    for part_id in {i for i in queue.entries if not is_retry_id(i)} | queue.done | queue.dead:
        states = queue.states(part_id)
        if len(states) != 1:
            inconsistent += 1
        if not states:
            continue
        counts[states[0]] += 1
        rows[states[0]] += _part_rows(sources, part_id)
    enqueued = sum(s.parts for s in sources.values())
    return {
        "enqueued": enqueued,
        **counts,
        "rows": rows,
        "rows_enqueued": sum(s.rows for s in sources.values()),
        "sources": sorted(sources),
        "retries_open": len(queue.retries_open),  # retry parts queued or in flight
        "consistent": inconsistent == 0 and sum(counts.values()) == enqueued,
        "problems": problems,
    }


def _part_rows(sources: dict[str, SourceRecord], part_id: str) -> int:
    source_id, _, index = part_id.rpartition(":")
    source = sources.get(source_id)
    return source.part(int(index)).rows if source and index.isdigit() else 0


def url_summary(stats: dict[str, str], downloaders: list[bus.Heartbeat]) -> dict[str, Any]:
    """Live rates from downloader heartbeats; totals of committed parts from `stats`."""
    live = live_records(downloaders, DownloaderHeartbeat)
    rate = {
        "urls_per_s": round(sum(b.urls_per_s for b in live), 3),
        "images_per_s": round(sum(b.images_per_s for b in live), 3),
        "mb_per_s": round(sum(b.mb_per_s for b in live), 3),
    }
    recent: dict[str, int] = {}
    for beat in live:
        for reason, n in beat.failures.items():
            recent[reason] = recent.get(reason, 0) + int(n)
    rows_live = sum(b.urls for b in live)  # rows the live downloaders finished since they started
    by_reason = {k[len(bus.STAT_FAIL_PREFIX) :]: int(v) for k, v in stats.items() if k.startswith(bus.STAT_FAIL_PREFIX)}
    rows, samples = int(stats.get(bus.STAT_ROWS, 0)), int(stats.get(bus.STAT_SAMPLES, 0))
    return {
        **rate,
        "success_pct": round(100 * rate["images_per_s"] / rate["urls_per_s"], 1) if rate["urls_per_s"] else None,
        "downloaders_live": len(live),
        "top_failures_live": sorted(recent.items(), key=lambda kv: -kv[1])[:5],
        "rows_live": rows_live,
        "dns_lookups": sum(b.dns_lookups for b in live),
        "dns_cache_hits": sum(b.dns_cache_hits for b in live),
        "failures_live": recent,
        "rows": rows,
        "samples": samples,
        "failures": int(stats.get(bus.STAT_FAILURES, 0)),
        "failures_by_reason": by_reason,
        "success_pct_total": round(100 * samples / rows, 1) if rows else None,
        "bytes_downloaded": int(stats.get(bus.STAT_BYTES_DOWNLOADED, 0)),
        "retried_rows": int(stats.get(bus.STAT_RETRIED_ROWS, 0)),
        "retried_samples": int(stats.get(bus.STAT_RETRIED_SAMPLES, 0)),
        "paused_for_disk": sum(1 for b in live if b.state == DOWNLOADER_PAUSED_FOR_DISK),
        "paused": sum(1 for b in live if b.state == DOWNLOADER_PAUSED),
    }


def shard_summary(
    r: redis.Redis, keys: bus.Keys, stats: dict[str, str], shard_dir: ShardStore | Path | str | None
) -> dict[str, Any]:
    control = r.hgetall(keys.control)
    summary: dict[str, Any] = {
        "count": int(stats.get(bus.STAT_SHARDS, 0)),
        "samples": int(stats.get(bus.STAT_SAMPLES, 0)),
        "bytes": int(stats.get(bus.STAT_SHARD_BYTES, 0)),
        "collected": int(r.scard(keys.shards_deleted)),
        "paused_for_disk": control.get(bus.CONTROL_DISK_PAUSED) or None,
        "paused_since": float(control[bus.CONTROL_DISK_PAUSED_SINCE])
        if control.get(bus.CONTROL_DISK_PAUSED_SINCE)
        else None,
        "disk": None,
        "gc": gc_summary(bus.read_heartbeats(r, keys, bus.ROLE_GC)),
    }
    if shard_dir is not None:
        summary["disk"] = storage_summary(open_store(shard_dir))
    return summary


def storage_summary(store: ShardStore) -> dict[str, Any] | None:
    """Where the shards are and how much they take: a directory's disk (free of total), or a
    bucket's bytes of shards (what --max-disk-bytes counts there); an unreachable bucket says why."""
    if store.local_dir is not None:
        if not store.local_dir.is_dir():
            return None
        free, total = store.space() or (0, 0)
        return {"path": str(store.local_dir), "free": free, "total": total}
    try:
        listing = store.list(suffix=SHARD_SUFFIX)
    except StoreUnavailable as e:
        return {"path": store.url, "free": None, "total": None, "error": str(e)}
    return {
        "path": store.url,
        "free": None,
        "total": None,
        "used": sum(i.size for i in listing),
        "objects": len(listing),
    }


def gc_summary(beats: list[bus.Heartbeat]) -> dict[str, Any] | None:
    """The `shards gc --watch` loop's heartbeat (None when none runs): what it freed, what it found."""
    watchers = [b.record for b in beats if isinstance(b.record, GcHeartbeat)]
    if not watchers:
        return None
    latest = max(watchers, key=lambda w: w.last_round_ts)
    return {
        "watchers": len(watchers),
        "deleted": sum(w.deleted for w in watchers),
        "freed_bytes": sum(w.freed_bytes for w in watchers),
        "last_result": latest.last_result or None,
        "last_round_age_s": round(time.time() - latest.last_round_ts, 1) if latest.last_round_ts else None,
    }


def trainer_summary(r: redis.Redis, keys: bus.Keys, ranks: list[bus.Heartbeat]) -> dict[str, Any]:
    runs = {run: json.loads(raw) for run, raw in r.hgetall(keys.runs).items()}
    live = live_records(ranks, TrainerHeartbeat)
    fresh, replay = sum(b.fresh for b in live), sum(b.replay for b in live)
    waits = [b.data_wait_pct for b in live]
    pending = [b.fresh_shards_pending for b in live if b.fresh_shards_pending >= 0]
    # A run that stopped itself (non-finite steps, out of memory) says why until its beat expires.
    failed = [b.record for b in ranks if isinstance(b.record, TrainerHeartbeat) and b.record.state == TRAINER_FAILED]
    return {
        "runs": runs,
        "ranks": len(live),
        "stale_ranks": sum(1 for b in ranks if b.stale),
        "step": max((b.step for b in live), default=None),
        "max_steps": max((b.max_steps for b in live), default=None),
        "samples_per_s": round(sum(b.samples_per_s for b in live), 2) if live else None,
        "data_wait_pct": round(sum(waits) / len(waits), 1) if waits else None,
        "fresh": fresh,
        "replay": replay,
        "fresh_ratio": round(fresh / (fresh + replay), 3) if fresh + replay else None,
        "fresh_shards_unread": max(pending) if pending else None,
        "loss": min((b.loss for b in live if not math.isnan(b.loss)), default=None),  # NaN: no step logged yet
        "nonfinite_steps": max((b.nonfinite_steps for b in live), default=None),
        "oom_steps": max((b.oom_steps for b in live), default=None),
        "checkpoints_freed_bytes": sum(b.checkpoints_freed_bytes for b in live) if live else None,
        "failed": sorted({f"{b.run}: {b.error}" for b in failed}),
        # What a waiting rank found keeping shards away, with its own --shard-dir (ops.data_wait).
        "waiting": sorted({b.waiting_reason for b in live if b.state == TRAINER_WAITING_FOR_DATA and b.waiting_reason}),
    }


def eval_summary(r: redis.Redis, keys: bus.Keys, evaluators: list[bus.Heartbeat]) -> dict[str, Any]:
    latest = None
    for _entry_id, fields in r.xrevrange(keys.evals, count=1):
        try:
            latest = bus.decode(fields)
        except bus.MessageError:
            latest = None
    best = r.hgetall(keys.evals_best)
    if best.get("scores"):
        best["scores"] = json.loads(best["scores"])
    return {
        "latest": {k: latest.get(k) for k in ("step", "run", "status", "scores", "checkpoint", "report")}
        if latest
        else None,
        "best": best or None,
        "evaluators": [_evaluator(b) for b in evaluators],
    }


def _evaluator(beat: bus.Heartbeat) -> dict[str, Any]:
    record = beat.record if isinstance(beat.record, EvaluatorHeartbeat) else None
    return {
        "id": beat.id,
        "state": beat.state,
        "progress": record.progress if record else None,
        "checkpoint": record.checkpoint if record else None,
        "stale": beat.stale,
    }


def worker_row(beat: bus.Heartbeat) -> dict[str, Any]:
    """A heartbeat as a row of `workers`: who, doing what, why (a pause's reason, or what makes
    it unreadable), how fresh."""
    reason = beat.problem or (beat.record.reason if isinstance(beat.record, DownloaderHeartbeat) else "")
    return {
        "role": beat.role,
        "id": beat.id,
        "state": beat.state,
        "reason": reason,
        "age_s": beat.age_s,
        "stale": beat.stale,
    }


def hints(report: dict[str, Any]) -> list[str]:
    """Short advice where the numbers call for it."""
    out = []
    parts, trainer = report["parts"], report["trainer"]
    out += attention.trainer_failed(report)
    out += attention.trainer_waiting(report)
    # "Add downloaders" only while nothing else keeps the shards away.
    if (
        not trainer["waiting"]
        and trainer["data_wait_pct"] is not None
        and trainer["data_wait_pct"] >= DATA_WAIT_HINT_PCT
    ):
        out.append(
            f"the trainer waited for data {trainer['data_wait_pct']:.0f} % of the time: add downloaders "
            "(docker compose up -d --scale downloader=N, or --processes)"
        )
    if trainer["fresh_ratio"] is not None and trainer["fresh_ratio"] < 0.5 and parts["pending"]:
        out.append(f"only {100 * trainer['fresh_ratio']:.0f} % of trained samples are fresh: downloads lag training")
    out += attention.no_downloader(report)
    out += attention.disk(report)
    out += attention.paused(report)
    out += attention.dominant_failure(report)
    out += attention.nothing_enqueued(report)
    if parts["dead"]:
        out.append(f"{parts['dead']} parts dead-lettered after repeated failures: their last errors are in parts:dead")
    if not parts["consistent"]:
        out.append("part states do not add up to the parts enqueued: run `streamcap audit`")
    # A rank that finished or was stopped on purpose says so in its last heartbeat.
    stale = [w["id"] for w in report["workers"] if w["stale"] and w["state"] not in ENDED_STATES]
    if stale:
        out.append(f"{len(stale)} worker(s) stopped reporting: {', '.join(stale[:3])}")
    unreadable = [w for w in report["workers"] if w["state"] == bus.UNREADABLE]
    if unreadable:
        out.append(
            f"{len(unreadable)} heartbeat(s) this streamcap cannot read, left out of the numbers above "
            f"({unreadable[0]['role']} {unreadable[0]['id']}: {unreadable[0]['reason'][:200]})"
        )
    outage = report["redis"]["last_outage"]
    if outage and time.time() - outage["ended"] < 3600:
        out.append(
            f"Redis was unreachable for {outage['seconds']:.0f} s, "
            f"{(time.time() - outage['ended']) / 60:.0f} min ago; services reconnected"
        )
    return out


def collect(r: redis.Redis, keys: bus.Keys, shard_dir: Path | None = None) -> dict[str, Any]:
    """Everything `streamcap status` shows, as plain data."""
    bus.ping(r)
    beats = bus.read_heartbeats(r, keys)
    by_role = {
        role: [b for b in beats if b.role == role]
        for role in (bus.ROLE_DOWNLOADER, bus.ROLE_TRAINER, bus.ROLE_EVALUATOR)
    }
    stats = r.hgetall(keys.stats)
    report = {
        "namespace": keys.namespace,
        "time": time.time(),
        "redis": redis_info(r, keys),
        "keys": key_sizes(r, keys),
        "parts": part_summary(r, keys),
        "urls": url_summary(stats, by_role[bus.ROLE_DOWNLOADER]),
        "workers": [worker_row(b) for b in beats],
        "shards": shard_summary(r, keys, stats, shard_dir),
        "trainer": trainer_summary(r, keys, by_role[bus.ROLE_TRAINER]),
        "eval": eval_summary(r, keys, by_role[bus.ROLE_EVALUATOR]),
        "hosts": host_report(r, keys, top=STATUS_TOP_HOSTS),
    }
    report["hints"] = hints(report)
    report["attention"] = attention.attention(report)
    return report
