"""`streamcap shards ls|verify|gc|reconcile` and `streamcap audit`.

    streamcap shards ls [--json]
    streamcap shards verify [PATH...] [--quarantine] [--json]
    streamcap shards gc --max-disk-bytes 200G --min-reads 2 [--dry-run]
    streamcap shards reconcile
    streamcap audit [--expect-done] [--json]

Imports only typer and the settings here; the tools load inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from streamcap.shardwriter.config import ShardWriterSettings
from streamcap.common.commands import JsonFlag, LogLevel, Namespace, RedisUrl, ShardDir, option
from streamcap.common.settings import build

S = ShardWriterSettings
MaxDisk = Annotated[Optional[str], option(S, "max_disk_bytes")]
MinFree = Annotated[Optional[str], option(S, "min_free_bytes")]
MinReads = Annotated[Optional[int], option(S, "min_reads")]
QuarantineDir = Annotated[Optional[Path], option(S, "quarantine_dir")]
TempStale = Annotated[Optional[float], option(S, "temp_stale_seconds")]

shards_app = typer.Typer(help="Inspect, verify, clean up and rebuild the shard registry.", no_args_is_help=True)


@shards_app.command("ls")
def ls_command(redis_url: RedisUrl = None, namespace: Namespace = None, shard_dir: ShardDir = None,
               log_level: LogLevel = None, as_json: JsonFlag = False) -> int:
    """List registered shards: name, samples, bytes, age, times read."""
    from streamcap.shardwriter import tools

    cfg = build(S, redis_url=redis_url, namespace=namespace, shard_dir=shard_dir, log_level=log_level)
    return tools.ls(cfg, as_json)


@shards_app.command("verify")
def verify_command(
    paths: Annotated[Optional[List[Path]], typer.Argument(help="Shard files or directories (default: the shard dir).")] = None,
    quarantine: Annotated[bool, typer.Option("--quarantine", help="Move bad shards to the quarantine dir and unregister them.")] = False,
    quarantine_dir: QuarantineDir = None,
    redis_url: RedisUrl = None, namespace: Namespace = None, shard_dir: ShardDir = None, log_level: LogLevel = None,
    as_json: JsonFlag = False,
) -> int:
    """Read every tar (registered or not); exit 1 naming each bad file and why."""
    from streamcap.shardwriter import tools

    cfg = build(S, redis_url=redis_url, namespace=namespace, shard_dir=shard_dir, log_level=log_level,
                quarantine_dir=quarantine_dir)
    return tools.verify(cfg, list(paths or []), quarantine, as_json)


@shards_app.command("gc")
def gc_command(
    max_disk_bytes: MaxDisk = None, min_free_bytes: MinFree = None, min_reads: MinReads = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be deleted, delete nothing.")] = False,
    redis_url: RedisUrl = None, namespace: Namespace = None, shard_dir: ShardDir = None, log_level: LogLevel = None,
    as_json: JsonFlag = False,
) -> int:
    """Delete read shards, oldest first, while the shard disk is over budget."""
    from streamcap.shardwriter import tools

    cfg = build(S, redis_url=redis_url, namespace=namespace, shard_dir=shard_dir, log_level=log_level,
                max_disk_bytes=max_disk_bytes, min_free_bytes=min_free_bytes, min_reads=min_reads)
    return tools.gc(cfg, dry_run, as_json)


@shards_app.command("reconcile")
def reconcile_command(
    temp_stale_seconds: TempStale = None,
    redis_url: RedisUrl = None, namespace: Namespace = None, shard_dir: ShardDir = None, log_level: LogLevel = None,
    as_json: JsonFlag = False,
) -> int:
    """Rebuild the registry from the shard dir after Redis lost data; re-enqueue unfinished parts."""
    from streamcap.shardwriter import tools

    cfg = build(S, redis_url=redis_url, namespace=namespace, shard_dir=shard_dir, log_level=log_level,
                temp_stale_seconds=temp_stale_seconds)
    return tools.reconcile(cfg, as_json)


def audit_command(
    expect_done: Annotated[bool, typer.Option("--expect-done", help="Also fail unless every part is done or dead.")] = False,
    redis_url: RedisUrl = None, namespace: Namespace = None, shard_dir: ShardDir = None, log_level: LogLevel = None,
    as_json: JsonFlag = False,
) -> int:
    """Check that every enqueued row is exactly one sample or one recorded failure; exit 1 listing discrepancies."""
    from streamcap.shardwriter import tools

    cfg = build(S, redis_url=redis_url, namespace=namespace, shard_dir=shard_dir, log_level=log_level)
    return tools.audit(cfg, as_json, expect_done)


def register(app: typer.Typer) -> None:
    app.add_typer(shards_app, name="shards")
    app.command("audit")(audit_command)
