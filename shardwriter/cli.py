"""`streamcap shards ls|verify|gc|reconcile` and `streamcap audit`.

    streamcap shards ls [--json]
    streamcap shards verify [PATH...] [--quarantine] [--json]
    streamcap shards gc --max-disk-bytes 200G --min-reads 2 [--dry-run]
    streamcap shards gc --max-disk-bytes 200G --watch [--every 30]      # as a service
    streamcap shards reconcile [--requeue-missing]
    streamcap audit [--expect-done] [--json]

--shard-dir may be a directory or a bucket (s3://bucket/prefix): every command works on both.
Imports only typer and the settings here; the tools load inside the command bodies. Each
command's options are the ShardWriterSettings fields it names (`settings_command`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streamcap.common.commands import COMMON_FIELDS, JsonFlag, settings_command
from streamcap.shardwriter.config import SIZE_FIELDS, ShardWriterSettings

# Byte sizes are read as text ("200G"); the settings parse them.
SIZES_AS_TEXT = dict.fromkeys(SIZE_FIELDS, str)


shards_app = typer.Typer(help="Inspect, verify, clean up and rebuild the shard registry.", no_args_is_help=True)


@shards_app.command("ls")
@settings_command(ShardWriterSettings, only=COMMON_FIELDS)
def ls_command(cfg: ShardWriterSettings, as_json: JsonFlag = False) -> int:
    """List registered shards: name, samples, bytes, age, times read."""
    from streamcap.shardwriter import tools

    return tools.ls(cfg, as_json)


@shards_app.command("verify")
@settings_command(ShardWriterSettings, only=("quarantine_dir", *COMMON_FIELDS), owner_check=False)
def verify_command(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Shard files or directories (default: the shard dir).")
    ] = None,
    quarantine: Annotated[
        bool,
        typer.Option(
            "--quarantine",
            help="Move bad shards to the quarantine dir (a bucket's quarantine/ prefix) and unregister them.",
        ),
    ] = False,
    *,
    cfg: ShardWriterSettings,
    as_json: JsonFlag = False,
) -> int:
    """Read every tar (registered or not); exit 1 naming each bad file and why."""
    from streamcap.shardwriter import tools

    return tools.verify(cfg, list(paths or []), quarantine, as_json)


@shards_app.command("gc")
@settings_command(
    ShardWriterSettings, only=("max_disk_bytes", "min_free_bytes", "min_reads", *COMMON_FIELDS), read_as=SIZES_AS_TEXT
)
def gc_command(
    cfg: ShardWriterSettings,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be deleted, delete nothing.")] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Keep running: gc every --every seconds until SIGTERM (compose's gc service)."),
    ] = False,
    every: Annotated[float, typer.Option("--every", min=1.0, help="Seconds between rounds with --watch.")] = 30.0,
    as_json: JsonFlag = False,
) -> int:
    """Delete read shards, oldest first, while the shard dir (or bucket) is over budget."""
    from streamcap.shardwriter import tools

    if watch:
        if dry_run or as_json:
            raise typer.BadParameter("--watch deletes for real and logs: no --dry-run or --json with it")
        from streamcap.common.logs import setup_logging
        from streamcap.shardwriter.gc_watch import watch as gc_watch

        setup_logging("gc", cfg.log_level)
        return gc_watch(cfg, interval_s=every)
    return tools.gc(cfg, dry_run, as_json)


@shards_app.command("reconcile")
@settings_command(ShardWriterSettings, only=("temp_stale_seconds", *COMMON_FIELDS))
def reconcile_command(
    cfg: ShardWriterSettings,
    requeue_missing: Annotated[
        bool,
        typer.Option(
            "--requeue-missing", help="Also queue the rows of shards gone without gc (quarantined, deleted by hand)."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> int:
    """Rebuild the registry from the shard dir after Redis lost data; re-enqueue unfinished parts."""
    from streamcap.shardwriter import tools

    return tools.reconcile(cfg, as_json, requeue_missing)


@settings_command(ShardWriterSettings, only=COMMON_FIELDS)
def audit_command(
    expect_done: Annotated[
        bool, typer.Option("--expect-done", help="Also fail unless every part is done or dead.")
    ] = False,
    *,
    cfg: ShardWriterSettings,
    as_json: JsonFlag = False,
) -> int:
    """Check that every enqueued row is exactly one sample or one recorded failure; exit 1 listing discrepancies."""
    from streamcap.shardwriter import tools

    return tools.audit(cfg, as_json, expect_done)


def register(app: typer.Typer) -> None:
    app.add_typer(shards_app, name="shards")
    app.command("audit")(audit_command)
