"""`streamcap enqueue` and `streamcap download`: build the settings, call the service.

    streamcap enqueue relaion-pop/ --part-size 1000 --limit 100000
    streamcap download --processes 2 --concurrency 128 --exit-when-empty

Only typer and the settings are imported here; the service loads inside the command body.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from streamcap.downloader.config import DownloaderSettings as D
from streamcap.downloader.config import EnqueueSettings as E
from streamcap.common.commands import LogLevel, Namespace, RedisUrl, ShardDir, option
from streamcap.common.settings import build


def enqueue_command(
    source: Annotated[str, typer.Argument(help="A parquet file, a directory or a glob of them; or a .csv/.tsv/.jsonl file.")],
    url_col: Annotated[Optional[str], option(E, "url_col")] = None,
    caption_col: Annotated[Optional[str], option(E, "caption_col")] = None,
    part_size: Annotated[Optional[int], option(E, "part_size")] = None,
    limit: Annotated[Optional[int], option(E, "limit")] = None,
    name: Annotated[Optional[str], option(E, "name")] = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    shard_dir: ShardDir = None,
    log_level: LogLevel = None,
) -> int:
    """Split a URL list into parts for the downloaders (once: enqueueing it again adds nothing)."""
    from streamcap.downloader import enqueue

    cfg = build(E, url_col=url_col, caption_col=caption_col, part_size=part_size, limit=limit, name=name,
                redis_url=redis_url, namespace=namespace, shard_dir=shard_dir, log_level=log_level)
    return enqueue.run(cfg, source)


def download_command(
    processes: Annotated[Optional[int], option(D, "processes")] = None,
    exit_when_empty: Annotated[Optional[bool], option(D, "exit_when_empty")] = None,
    concurrency: Annotated[Optional[int], option(D, "concurrency")] = None,
    per_host: Annotated[Optional[int], option(D, "per_host")] = None,
    parts_in_flight: Annotated[Optional[int], option(D, "parts_in_flight")] = None,
    lease_seconds: Annotated[Optional[float], option(D, "lease_seconds")] = None,
    max_deliveries: Annotated[Optional[int], option(D, "max_deliveries")] = None,
    grace_seconds: Annotated[Optional[float], option(D, "grace_seconds")] = None,
    connect_timeout: Annotated[Optional[float], option(D, "connect_timeout")] = None,
    read_timeout: Annotated[Optional[float], option(D, "read_timeout")] = None,
    total_timeout: Annotated[Optional[float], option(D, "total_timeout")] = None,
    retries: Annotated[Optional[int], option(D, "retries")] = None,
    retry_after_cap: Annotated[Optional[float], option(D, "retry_after_cap")] = None,
    max_bytes: Annotated[Optional[int], option(D, "max_bytes")] = None,
    user_agent: Annotated[Optional[str], option(D, "user_agent")] = None,
    opt_out_directives: Annotated[Optional[str], option(D, "opt_out_directives")] = None,
    allow_private: Annotated[Optional[bool], option(D, "allow_private")] = None,
    image_size: Annotated[Optional[int], option(D, "image_size")] = None,
    resize_mode: Annotated[Optional[str], option(D, "resize_mode")] = None,
    image_format: Annotated[Optional[str], option(D, "image_format")] = None,
    quality: Annotated[Optional[int], option(D, "quality")] = None,
    max_pixels: Annotated[Optional[int], option(D, "max_pixels")] = None,
    min_size: Annotated[Optional[int], option(D, "min_size")] = None,
    max_aspect_ratio: Annotated[Optional[float], option(D, "max_aspect_ratio")] = None,
    image_workers: Annotated[Optional[int], option(D, "image_workers")] = None,
    caption_sentences: Annotated[Optional[int], option(D, "caption_sentences")] = None,
    shard_max_samples: Annotated[Optional[int], option(D, "shard_max_samples")] = None,
    shard_max_bytes: Annotated[Optional[str], option(D, "shard_max_bytes")] = None,
    max_disk_bytes: Annotated[Optional[str], option(D, "max_disk_bytes")] = None,
    min_free_bytes: Annotated[Optional[str], option(D, "min_free_bytes")] = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    shard_dir: ShardDir = None,
    log_level: LogLevel = None,
) -> int:
    """Run the downloader service: claim parts, fetch and process their images, write shards."""
    cfg = build(D, **locals())
    from streamcap.downloader import service

    return service.run(cfg)


def register(app: typer.Typer) -> None:
    app.command("enqueue")(enqueue_command)
    app.command("download")(download_command)
