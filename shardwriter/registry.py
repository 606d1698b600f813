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

`shard_dir` may also be a bucket (`s3://bucket/prefix`, streamcap.common.store) with the same
layout under its prefix; writers' temporary files then stay on the writers' own disks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from streamcap import bus
from streamcap.common.store import LocalStore, ShardStore, is_store_url, open_store
from streamcap.formats.records import PartStats, ShardRecord, SourceRecord, source_slug
from streamcap.formats.shards import SHARD_SUFFIX, STATS_SUFFIX
from streamcap.shardwriter import tempfiles

log = logging.getLogger(__name__)

SOURCES_DIR = "sources"
QUARANTINE_DIR = "quarantine"  # a folder of the shard dir, or a prefix of the bucket


def source_path(shard_dir: Path, source_id: str) -> Path:
    return Path(shard_dir) / SOURCES_DIR / f"{source_slug(source_id)}.json"


def _remote(shard_dir: object) -> bool:
    return shard_dir.remote if isinstance(shard_dir, ShardStore) else is_store_url(shard_dir)


def _dir(shard_dir: object) -> Path:
    return shard_dir.root if isinstance(shard_dir, LocalStore) else Path(shard_dir)  # type: ignore[arg-type]


def _source_name(source_id: str) -> str:
    return f"{SOURCES_DIR}/{source_slug(source_id)}.json"


def save_source(shard_dir: Path, source: SourceRecord) -> None:
    """Record a source's definition in the shard dir (atomically), next to its data."""
    if _remote(shard_dir):
        open_store(shard_dir).write_bytes(_source_name(source.id), json.dumps(source.to_message(), indent=1).encode())
        return
    path = source_path(_dir(shard_dir), source.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tempfiles.write_json_atomic(path, source.to_message())


def load_source(shard_dir: Path, source_id: str) -> SourceRecord | None:
    if _remote(shard_dir):
        raw = open_store(shard_dir).read_bytes(_source_name(source_id))
        return None if raw is None else SourceRecord.from_message(json.loads(raw))
    path = source_path(_dir(shard_dir), source_id)
    try:
        return SourceRecord.from_message(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def load_sources(shard_dir: Path) -> list[SourceRecord]:
    """Every source recorded in the shard dir, by id; unreadable files are logged and skipped."""
    found = []
    for name, read in _files(shard_dir, f"{SOURCES_DIR}/", ".json"):
        try:
            found.append(SourceRecord.from_message(json.loads(read())))
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("skipping unreadable source definition %s: %s", name, e)
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
    if _remote(shard_dir):
        for name, read in _files(shard_dir, "", STATS_SUFFIX):
            stats = _parse_stats(name, read, problems)
            if stats is not None:
                found[stats.part_id] = stats
        return found
    for path in sorted(_dir(shard_dir).glob(f"*{STATS_SUFFIX}")):
        if path.name.startswith("."):
            continue
        stats = read_part_stats(path, problems)
        if stats is not None:
            found[stats.part_id] = stats
    return found


def _files(shard_dir: object, prefix: str, suffix: str) -> list[tuple[str, Callable[[], bytes]]]:
    """(name, reader) of the files directly under `prefix` ending in `suffix`, by name."""
    if _remote(shard_dir):
        store = open_store(shard_dir)

        def reader(name: str) -> Callable[[], bytes]:
            def read() -> bytes:
                data = store.read_bytes(name)
                if data is None:
                    raise FileNotFoundError(f"{store}/{name} vanished")
                return data

            return read

        return [(info.name, reader(info.name)) for info in store.list(prefix, suffix)]
    folder = _dir(shard_dir) / prefix if prefix else _dir(shard_dir)
    return [(p.name, p.read_bytes) for p in sorted(folder.glob(f"*{suffix}")) if not p.name.startswith(".")]


def _parse_stats(name: str, read: Callable[[], bytes], problems: list[str] | None) -> PartStats | None:
    try:
        return PartStats.from_json(json.loads(read()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as e:
        if problems is not None:
            problems.append(f"stats file {name} is unreadable: {e}")
        return None


def read_stored_stats(shard_dir: object, name: str, problems: list[str] | None = None) -> PartStats | None:
    """One stats file by name, from a directory or a bucket; None when gone or unreadable."""
    if not _remote(shard_dir):
        return read_part_stats(_dir(shard_dir) / name, problems)
    store = open_store(shard_dir)

    def read() -> bytes:
        data = store.read_bytes(name)
        if data is None:
            raise FileNotFoundError(name)
        return data

    return _parse_stats(name, read, problems)


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
