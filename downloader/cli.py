"""`streamcap enqueue` and `streamcap download`: build the settings, call the service.

    streamcap enqueue relaion-pop/ --part-size 1000 --limit 100000
    streamcap download --processes 2 --concurrency 128 --exit-when-empty

Only typer and the settings are imported here; the service loads inside the command body.
The options are the settings' fields (`settings_command`): a new setting needs no edit here.
"""

from __future__ import annotations

from typing import Annotated

import typer

from streamcap.common.commands import settings_command
from streamcap.downloader.config import DownloaderSettings, EnqueueSettings
from streamcap.shardwriter.cli import SIZES_AS_TEXT


@settings_command(EnqueueSettings)
def enqueue_command(
    source: Annotated[
        str, typer.Argument(help="A parquet file, a directory or a glob of them; or a .csv/.tsv/.jsonl file.")
    ],
    cfg: EnqueueSettings,
) -> int:
    """Split a URL list into parts for the downloaders (once: enqueueing it again adds nothing)."""
    from streamcap.downloader import enqueue

    return enqueue.run(cfg, source)


# Not options of `download`, as before: gc's read count, verify's quarantine dir, and the age
# after which temp files are swept (the downloader uses its default).
@settings_command(
    DownloaderSettings,
    exclude=("min_reads", "quarantine_dir", "temp_stale_seconds"),
    read_as={**SIZES_AS_TEXT, "spool_max_bytes": str},
)
def download_command(cfg: DownloaderSettings) -> int:
    """Run the downloader service: claim parts, fetch and process their images, write shards."""
    from streamcap.downloader import service

    return service.run(cfg)


def register(app: typer.Typer) -> None:
    from streamcap.downloader import hosts_cli, parts_cli

    app.command("enqueue")(enqueue_command)
    app.command("download")(download_command)
    parts_cli.register(app)
    hosts_cli.register(app)
