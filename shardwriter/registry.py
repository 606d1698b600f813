"""What the shard directory records about itself, so it can outlive Redis.

    save_source(shard_dir, source)         # `streamcap enqueue` calls this for every source
    load_sources(shard_dir)                # reconcile/audit read them back
    load_part_stats(shard_dir)             # every part's stats file: {part id: PartStats}
    registered_shards(r, keys)             # the `shards` stream as [(entry id, ShardRecord)]

Layout of a shard dir:

    <slug>-<part:06d>-<seq:04d>.tar        finalized shards
    <slug>-<part:06d>.stats.json           one per finished part (PartStats.to_json + owner)
    sources/<slug>.json                    source definitions (SourceRecord.to_message)
    quarantine/                            shards `shards verify --quarantine` moved away
    .tmp~...                               temporary files of writers (see tempfiles)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import redis

from streamcap import bus
from streamcap.formats.records import PartStats, ShardRecord, SourceRecord, source_slug
from streamcap.formats.shards import SHARD_SUFFIX, STATS_SUFFIX
from streamcap.shardwriter import tempfiles

log = logging.getLogger(__name__)

SOURCES_DIR = "sources"


def source_path(shard_dir: Path, source_id: str) -> Path:
    return Path(shard_dir) / SOURCES_DIR / f"{source_slug(source_id)}.json"


def save_source(shard_dir: Path, source: SourceRecord) -> None:
    """Record a source's definition in the shard dir (atomically), next to its data."""
    path = source_path(shard_dir, source.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tempfiles.write_json_atomic(path, source.to_message())


def load_source(shard_dir: Path, source_id: str) -> SourceRecord | None:
    path = source_path(shard_dir, source_id)
    try:
        return SourceRecord.from_message(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def load_sources(shard_dir: Path) -> list[SourceRecord]:
    """Every source recorded in the shard dir, by id; unreadable files are logged and skipped."""
    found = []
    for path in sorted((Path(shard_dir) / SOURCES_DIR).glob("*.json")):
        try:
            found.append(SourceRecord.from_message(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("skipping unreadable source definition %s: %s", path, e)
    return sorted(found, key=lambda s: s.id)


def redis_sources(r: redis.Redis, keys: bus.Keys) -> list[SourceRecord]:
    """The sources of the `sources` hash (messages that do not parse are skipped with a warning)."""
    found = []
    for source_id, raw in r.hgetall(keys.sources).items():
        try:
            found.append(SourceRecord.from_message(json.loads(raw)))
        except (ValueError, TypeError, KeyError) as e:
            log.warning("skipping unreadable source %s in Redis: %s", source_id, e)
    return sorted(found, key=lambda s: s.id)


def all_sources(r: redis.Redis, keys: bus.Keys, shard_dir: Path) -> list[SourceRecord]:
    """Sources known to Redis or to the shard dir (Redis wins where both define one)."""
    merged = {s.id: s for s in load_sources(shard_dir)}
    merged.update({s.id: s for s in redis_sources(r, keys)})
    return sorted(merged.values(), key=lambda s: s.id)


def shard_files(directory: Path) -> list[Path]:
    """Finalized shard files in `directory` (not recursive, no temporary files)."""
    try:
        return sorted(p for p in Path(directory).glob(f"*{SHARD_SUFFIX}") if not p.name.startswith("."))
    except FileNotFoundError:
        return []


def load_part_stats(shard_dir: Path, problems: list[str] | None = None) -> dict[str, PartStats]:
    """Every stats file in the shard dir, by part id; unreadable ones go to `problems`."""
    found = {}
    for path in sorted(Path(shard_dir).glob(f"*{STATS_SUFFIX}")):
        if path.name.startswith("."):
            continue
        stats = read_part_stats(path, problems)
        if stats is not None:
            found[stats.part_id] = stats
    return found


def read_part_stats(path: Path, problems: list[str] | None = None) -> PartStats | None:
    """One stats file; None when it is gone, or unreadable (said in `problems`)."""
    try:
        return PartStats.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as e:
        if problems is not None:
            problems.append(f"stats file {path.name} is unreadable: {e}")
        return None


def iter_registered(r: redis.Redis, keys: bus.Keys, batch: int = 1000) -> Iterator[tuple[str, ShardRecord]]:
    """The `shards` stream, oldest first, as (entry id, ShardRecord); foreign entries skipped."""
    for entries in bus.xrange_pages(r, keys.shards, batch):
        for entry_id, fields in entries:
            try:
                yield entry_id, ShardRecord.from_message(bus.decode(fields))
            except (bus.MessageError, TypeError, KeyError) as e:
                log.warning("skipping unreadable shards entry %s: %s", entry_id, e)


def registered_shards(r: redis.Redis, keys: bus.Keys) -> list[tuple[str, ShardRecord]]:
    return list(iter_registered(r, keys))
