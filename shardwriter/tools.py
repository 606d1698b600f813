"""The shard tools behind `streamcap shards ...` and `streamcap audit`: each takes the resolved
settings, prints for people (or JSON for scripts) and returns the exit code.

    python -m streamcap.shardwriter ls --json
    python -m streamcap.shardwriter verify shards/ --quarantine
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streamcap import bus
from streamcap.common import namespaces
from streamcap.common.commands import print_json
from streamcap.common.store import ShardStore, open_store
from streamcap.formats.shards import SHARD_SUFFIX
from streamcap.shardwriter import registry
from streamcap.shardwriter.config import ShardWriterSettings, format_size
from streamcap.shardwriter.retention import gc as collect
from streamcap.shardwriter.retention import read_counts


def _connect(cfg: ShardWriterSettings):
    r = bus.connect(cfg.require_redis(), retries=2)
    bus.ping(r)
    return r


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def shard_listing(r, keys: bus.Keys, shard_dir: ShardStore | Path | str) -> list[dict]:
    """Every registered shard with its size, age, state and reads per training run."""
    runs = sorted(r.hkeys(keys.runs))
    reads = read_counts(r, keys, runs)
    deleted = r.smembers(keys.shards_deleted)
    stored = {info.name for info in open_store(shard_dir).list(suffix=SHARD_SUFFIX)}  # one listing, not a look-up each
    now = time.time()
    rows = []
    for entry_id, shard in registry.iter_registered(r, keys):
        state = "deleted" if shard.name in deleted else "ok" if shard.name in stored else "missing"
        per_run = {run: int(reads[run].get(shard.name, 0)) for run in runs}
        rows.append(
            {
                "name": shard.name,
                "part": shard.part_id,
                "samples": shard.samples,
                "bytes": shard.bytes,
                "age_s": round(now - int(entry_id.split("-")[0]) / 1000, 1),
                "state": state,
                "reads": sum(per_run.values()),
                "reads_by_run": per_run,
            }
        )
    return rows


def ls(cfg: ShardWriterSettings, as_json: bool) -> int:
    rows = shard_listing(_connect(cfg), bus.Keys(cfg.namespace), cfg.shard_dir)
    if as_json:
        print_json(rows)
        return 0
    table = Table(title=f"Shards in {cfg.shard_dir} ({len(rows)} registered)", title_justify="left")
    for col in ("name", "samples", "bytes", "age", "times read", "state"):
        table.add_column(col, justify="left" if col in ("name", "state") else "right")
    for row in rows:
        table.add_row(
            row["name"],
            str(row["samples"]),
            format_size(row["bytes"]),
            _age(row["age_s"]),
            str(row["reads"]),
            row["state"],
        )
    Console().print(table)
    return 0


def verify(cfg: ShardWriterSettings, paths: list[Path], quarantine: bool, as_json: bool) -> int:
    from streamcap.shardwriter.verify import check_stored, expand
    from streamcap.shardwriter.verify import quarantine as move_away

    if quarantine:  # it unregisters shards: only in the namespace the shard dir belongs to
        namespaces.check(cfg.shard_dir, cfg.namespace)
    found, missing = expand(paths or [cfg.shard_dir])
    r = _connect(cfg) if quarantine else None
    checks, moved = [], {}
    for store, name in found:
        check = check_stored(store, name)
        checks.append(check)
        if not check.ok and quarantine:
            prefix = _quarantine_prefix(cfg, store)
            moved[str(check.path)] = move_away(r, bus.Keys(cfg.namespace), store, name, prefix)
    bad = [c for c in checks if not c.ok]
    if as_json:
        print_json(
            {
                "ok": not bad and not missing,
                "shards": len(checks),
                "bad": len(bad),
                "missing": missing,
                "results": [c.to_json() | {"quarantined_to": moved.get(str(c.path))} for c in checks],
            }
        )
        return 1 if bad or missing else 0
    for line in missing:
        print(f"MISSING {line}")
    for check in bad:
        where = f" (moved to {moved[str(check.path)]})" if str(check.path) in moved else ""
        print(f"BAD {check.path}{where}")
        for problem in check.problems:
            print(f"    {problem}")
    print(f"verify: {len(checks)} shards, {sum(c.samples for c in checks)} samples read, {len(bad)} bad shards")
    return 1 if bad or missing else 0


def _quarantine_prefix(cfg: ShardWriterSettings, store: ShardStore) -> str:
    """Where in `store` bad shards go: a bucket's quarantine/ prefix, or the quarantine dir
    (default <shard-dir>/quarantine) named relative to the shard's directory."""
    if store.local_dir is None:
        return f"{registry.QUARANTINE_DIR}/"
    folder = cfg.quarantine_path or store.local_dir / registry.QUARANTINE_DIR
    return os.path.relpath(folder, store.local_dir) + "/"


def gc(cfg: ShardWriterSettings, dry_run: bool, as_json: bool) -> int:
    report = collect(
        _connect(cfg),
        bus.Keys(cfg.namespace),
        cfg.shard_dir,
        max_disk_bytes=cfg.max_disk_bytes,
        min_free_bytes=cfg.min_free_bytes,
        min_reads=cfg.min_reads,
        dry_run=dry_run,
    )
    if as_json:
        print_json(report.to_json() | {"dry_run": dry_run})
        return 0
    verb = "would delete" if dry_run else "deleted"
    for name in report.deleted:
        print(f"{verb} {name}")
    print(
        f"gc: {verb} {len(report.deleted)} shards ({format_size(report.freed_bytes)}); "
        f"{report.kept_unread} kept for runs {', '.join(report.runs) or '-'} (--min-reads {cfg.min_reads}); "
        f"{report.stopped_because}"
    )
    return 0


def reconcile(cfg: ShardWriterSettings, as_json: bool, requeue_missing: bool = False) -> int:
    from streamcap.shardwriter.reconcile import reconcile as rebuild

    report = rebuild(
        _connect(cfg),
        bus.Keys(cfg.namespace),
        cfg.shard_dir,
        temp_stale_s=cfg.temp_stale_seconds,
        requeue_missing=requeue_missing,
    )
    if as_json:
        print_json(report.to_json() | {"ok": report.ok})
    else:
        for line in report.waiting:
            print(f"note: {line}")
        for problem in report.problems:
            print(f"PROBLEM {problem}")
        print(report.summary())
    # Problems it could not fix need a person: a script running reconcile must not read "done".
    return 0 if report.ok else 1


def audit(cfg: ShardWriterSettings, as_json: bool, expect_done: bool) -> int:
    from streamcap.shardwriter.audit import audit as check

    report = check(_connect(cfg), bus.Keys(cfg.namespace), cfg.shard_dir, expect_done=expect_done)
    if as_json:
        print_json(report.to_json())
    else:
        for line in report.discrepancies:
            print(f"DISCREPANCY {line}")
        for line in report.notes:
            print(f"note: {line}")
        print(report.summary())
    return 0 if report.ok else 1
