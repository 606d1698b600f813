"""`streamcap enqueue SOURCE`: split a URL list into parts on the `parts` stream, once.

    streamcap enqueue relaion-pop/ --part-size 1000            # a directory of parquet files
    streamcap enqueue 'data/*.parquet' --name pop --limit 50000
    streamcap enqueue urls.csv --url-col image --caption-col text

The source's definition goes into the `sources` hash and the parts into the stream in one
transaction that first checks the source is not there yet: enqueueing the same source again,
also from several processes at the same moment, adds nothing and says so. The definition pins
the files the parts cover (size, mtime, sha256: downloader.pin): enqueueing a source whose
files changed since is refused, naming the file, and so is downloading its parts. Rows that
repeat an earlier row's URL and caption exactly are counted and warned about. The definition is
also written to the shard directory (`sources/<id>.json`), where `streamcap shards reconcile`
finds it after Redis lost its data. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from streamcap import bus
from streamcap.common import namespaces
from streamcap.common.progress import Progress
from streamcap.common.settings import ConfigError
from streamcap.downloader.config import EnqueueSettings
from streamcap.downloader.pin import compare, pin_files
from streamcap.downloader.sources import Source, SourceError, open_source
from streamcap.formats.records import SourceRecord, source_slug
from streamcap.shardwriter.registry import save_source
from streamcap.text.captions import CAPTION_COLUMNS

log = logging.getLogger(__name__)

REDIS_WAIT_S = 30.0


@dataclass(frozen=True)
class EnqueueResult:
    source: SourceRecord
    added: bool  # False: the source was already enqueued, nothing was added
    caption_note: str  # how the caption column was chosen
    duplicates: int = 0  # rows repeating an earlier row's url and caption exactly

    def warning(self) -> str | None:
        if not self.duplicates:
            return None
        return (
            f"warning: {self.duplicates} of {self.source.rows} rows repeat an earlier row's url and caption "
            "exactly: each downloads again into an identical sample (dedupe the source to save the fetches)"
        )

    def message(self) -> str:
        s = self.source
        if not self.added:
            return f"source {s.id} is already enqueued ({s.rows} rows in {s.parts} parts): nothing added"
        return (
            f"enqueued source {s.id}: {s.rows} rows in {s.parts} parts of {s.part_size} "
            f"(url column {s.url_col!r}, caption column {self.caption_note})"
        )


def pick_caption_column(columns: list[str], given: str | None) -> tuple[str, tuple[str, ...], str]:
    """(caption column, other caption columns kept raw, a note saying how it was chosen)."""
    present = [c for c in CAPTION_COLUMNS if c in columns]
    if given:
        return given, tuple(c for c in present if c != given), repr(given)
    if not present:
        raise SourceError(
            f"no caption column: none of {', '.join(CAPTION_COLUMNS)} exists (pass --caption-col); "
            f"its columns: {', '.join(columns)}"
        )
    chosen, others = present[0], tuple(present[1:])
    note = f"{chosen!r} (picked automatically, the first present of {', '.join(CAPTION_COLUMNS)}"
    note += f"; also kept raw: {', '.join(others)})" if others else ")"
    return chosen, others, note


def describe_source(cfg: EnqueueSettings, uri: str) -> tuple[SourceRecord, str]:
    """Read the source's schema and size, pin its files, and build its definition."""
    source = open_source(uri)
    caption_col, extras, note = pick_caption_column(source.columns, cfg.caption_col)
    source.require_columns({cfg.url_col: "--url-col", caption_col: "--caption-col"})
    extras = tuple(c for c in extras if _holds_text(source, c))  # kept raw only where they are text
    file_rows = source.file_rows()
    total = sum(file_rows)
    rows = min(total, cfg.limit) if cfg.limit else total
    if rows == 0:
        raise SourceError(f"{uri}: the source has no rows")
    record = SourceRecord(
        id=source_id(cfg.name, uri),
        uri=_absolute(uri, source),
        format=source.format,
        url_col=cfg.url_col,
        caption_col=caption_col,
        rows=rows,
        part_size=cfg.part_size,
        extra_caption_cols=extras,
        created=time.time(),
        files=pin_files(source.files, file_rows, rows),
    )
    return record, note


def count_duplicates(record: SourceRecord, progress: Progress | None = None) -> int:
    """Rows of the source whose url and caption equal an earlier row's; `progress` gets the rows read."""
    columns = [record.url_col, record.caption_col]
    seen: set[bytes] = set()
    duplicates = read = 0
    for batch in open_source(record.uri).scan(columns, record.rows):
        for values in zip(*(batch[c] for c in columns)):
            text = "\x00".join("" if v is None else str(v) for v in values)
            key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if key in seen:
                duplicates += 1
            else:
                seen.add(key)
        read += len(batch[record.url_col])
        if progress is not None:
            progress.update(read, note=f"{duplicates} duplicates")
    return duplicates


def _holds_text(source: Source, column: str) -> bool:
    try:
        source.require_text([column])
    except SourceError as e:
        log.warning("not keeping column %r in the samples: %s", column, e)
        return False
    return True


def source_id(name: str | None, uri: str) -> str:
    """--name, else the file's stem, the directory's name, or a glob's directory name."""
    if name:
        return source_slug(name)
    path = Path(uri.rstrip("/")).expanduser()
    if any(ch in path.name for ch in "*?["):
        path = path.parent
    return source_slug(path.stem if path.suffix else path.name)


def _absolute(uri: str, source: Source) -> str:
    if len(source.files) == 1 and Path(uri).expanduser().is_file():
        return str(source.files[0].resolve())
    path = Path(uri).expanduser()
    return str(path.resolve() if path.is_dir() else path.absolute())


def enqueue(r: redis.Redis, keys: bus.Keys, shard_dir: Path, record: SourceRecord, note: str = "") -> EnqueueResult:
    """Add the source and its parts unless a source with this id exists (atomic). The shard dir
    becomes this namespace's (streamcap.common.namespaces), or the enqueue is refused."""
    namespaces.claim(shard_dir, keys.namespace)
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    existing = _existing(r, keys, record)
    if existing is not None:
        save_source(shard_dir, existing)  # the shard dir may be new (e.g. another volume)
        return EnqueueResult(existing, added=False, caption_note=note)
    save_source(shard_dir, record)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.sources)
                if pipe.hexists(keys.sources, record.id):
                    pipe.unwatch()
                    break
                pipe.multi()
                pipe.hset(keys.sources, record.id, _to_json_text(record))
                for index in range(record.parts):
                    pipe.xadd(keys.parts, bus.encode(record.part(index).to_message()))
                pipe.execute()
                return EnqueueResult(record, added=True, caption_note=note)
            except redis.WatchError:
                continue  # another enqueue changed the sources hash meanwhile: look again
    winner = _existing(r, keys, record)  # a concurrent enqueue of the same source won
    assert winner is not None
    save_source(shard_dir, winner)
    return EnqueueResult(winner, added=False, caption_note=note)


def _existing(r: redis.Redis, keys: bus.Keys, record: SourceRecord) -> SourceRecord | None:
    """The enqueued definition with this id; ConfigError if it differs from `record`."""
    raw = r.hget(keys.sources, record.id)
    if raw is None:
        return None
    existing = SourceRecord.from_message(json.loads(raw))
    mine = {k: v for k, v in record.to_message().items() if k not in ("created", "files")}
    theirs = {k: v for k, v in existing.to_message().items() if k not in ("created", "files")}
    if mine != theirs:
        diff = ", ".join(f"{k} {theirs.get(k)!r} (now {v!r})" for k, v in mine.items() if theirs.get(k) != v)
        raise ConfigError(
            f"source {record.id} is already enqueued with a different definition: {diff}; "
            "pass --name to enqueue it as another source"
        )
    change = compare(existing.files, record.files)
    if change:
        raise ConfigError(
            f"source {record.id} changed since it was enqueued: {change}; its parts would read the new rows "
            "under the old row ranges. Restore the enqueued file, or pass --name to enqueue it as another source"
        )
    return existing


def _to_json_text(record: SourceRecord) -> str:
    return json.dumps(record.to_message(), sort_keys=True)


def run(cfg: EnqueueSettings, uri: str) -> int:
    """The `streamcap enqueue` command: prints one line saying what was (not) added."""
    try:
        record, note = describe_source(cfg, uri)
        # Reading every row (the duplicate count) is what takes long on a source of millions.
        with Progress("enqueue", unit="rows", total=record.rows, every=cfg.progress_every) as progress:
            duplicates = count_duplicates(record, progress)
    except SourceError as e:
        raise ConfigError(str(e)) from None
    r = bus.connect(cfg.require_redis())
    bus.wait_for_redis(r, timeout_s=REDIS_WAIT_S)
    result = enqueue(r, bus.Keys(cfg.namespace), cfg.shard_dir, record, note)
    result = dataclasses.replace(result, duplicates=duplicates)
    print(result.message(), flush=True)
    if result.warning():
        print(result.warning(), file=sys.stderr, flush=True)
    return 0
