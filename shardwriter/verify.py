"""Shard verification: read every member of a tar safely and say what is wrong with it.

    check = check_shard(Path("shards/relaion-000003-0000.tar"))
    check.ok, check.samples, check.problems      # problems: ['relaion_000000003007: sample lacks txt', ...]
    found, missing = expand([Path("shards")])   # [(store, name)]: a directory's or a bucket's shards
    check = check_stored(store, name)           # a bucket's shard: checked in a temporary copy
    quarantine(r, keys, store, name, "quarantine/")   # move away (a prefix of the store) + unregister

Reading goes through `streamcap.formats.shards.iter_samples` (the trainer's reader), which rejects
unsafe member names, links and absurd sizes without extracting anything; on top of that every
image must decode (JPEG at reduced scale, which still reads the whole stream) and match the
checksum its json carries (`image_crc32`, so flipped bytes are caught even where a decoder
would not notice), the txt must equal the json's caption, and every key must be a sample key
matching its json's row.
"""

from __future__ import annotations

import io
import logging
import re
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import redis
from PIL import Image

from streamcap import bus
from streamcap.common.logs import first_line
from streamcap.common.store import ShardStore, StoreCorrupt, is_store_url, open_store
from streamcap.formats.shards import SHARD_SUFFIX, iter_samples, sample_key
from streamcap.shardwriter import registry

log = logging.getLogger(__name__)

_KEY = re.compile(r"[a-z0-9_-]+_\d{12}")
_DRAFT_SIZE = (64, 64)


@dataclass
class ShardCheck:
    path: Path | str  # a file, or an object's URL (ShardStore.locate)
    samples: int = 0
    keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"path": str(self.path), "ok": self.ok, "samples": self.samples, "problems": self.problems}


def image_problem(data: bytes) -> str | None:
    """Why image bytes do not decode, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.format == "JPEG":
                    im.draft("RGB", _DRAFT_SIZE)
                im.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, warnings-as-errors, ...
        return f"image does not decode: {type(e).__name__}: {first_line(e, default='')}".rstrip(": ")
    return None


def check_shard(path: Path, *, decode_images: bool = True) -> ShardCheck:
    """Read a whole shard; never raises for bad content."""
    check = ShardCheck(Path(path))
    seen: set[str] = set()

    def problem(where: str, why: str) -> None:
        check.problems.append(f"{where}: {why}")

    for sample in iter_samples(path, on_problem=problem):
        where = f"{Path(path).name}/{sample.key}"
        if not _KEY.fullmatch(sample.key):
            problem(where, "key is not <source>_<12-digit row>")
        row, source = sample.meta.get("row"), sample.meta.get("source")
        if isinstance(row, int) and isinstance(source, str) and sample_key(source, row) != sample.key:
            problem(where, f"json says source {source!r} row {row}, which is another key")
        checksum = sample.meta.get("image_crc32")
        if isinstance(checksum, int) and zlib.crc32(sample.image) != checksum:
            problem(where, "image bytes do not match their image_crc32 (corrupted)")
        if "caption" in sample.meta and sample.meta["caption"] != sample.caption:
            problem(where, "txt differs from the caption in its json (corrupted)")
        if sample.key in seen:
            problem(where, "key appears twice in the shard")
        if decode_images:
            bad = image_problem(sample.image)
            if bad:
                problem(where, bad)
        seen.add(sample.key)
        check.keys.append(sample.key)
        check.samples += 1
    return check


def expand(paths: list[Path | str]) -> tuple[list[tuple[ShardStore, str]], list[str]]:
    """The shards `paths` name, as (store, name): a directory or bucket prefix contributes its
    top-level *.tar, a file or object itself; and the paths that name nothing."""
    found, missing = [], []
    for p in paths:
        if is_store_url(p) and str(p).endswith(SHARD_SUFFIX):  # one object, in the prefix above it
            parent, _, name = open_store(str(p)).url.rpartition("/")
            store = open_store(parent)
            if store.head(name) is not None:
                found.append((store, name))
            else:
                missing.append(f"{p}: no such object")
        elif is_store_url(p):
            store = open_store(str(p))
            found += [(store, info.name) for info in store.list(suffix=SHARD_SUFFIX)]
        elif Path(p).is_dir():
            store = open_store(Path(p))
            found += [(store, info.name) for info in store.list(suffix=SHARD_SUFFIX)]
        elif Path(p).is_file():
            found.append((open_store(Path(p).parent), Path(p).name))
        else:
            missing.append(f"{p}: no such file or directory")
    return found, missing


def check_stored(store: ShardStore, name: str, *, decode_images: bool = True) -> ShardCheck:
    """check_shard on a stored shard (a bucket's through a temporary local copy); an object
    gone or changed behind its stored checksum is a bad shard, not a crash."""
    where = store.locate(name)
    try:
        with store.local_copy(name) as path:
            if path is None:
                return ShardCheck(where, problems=[f"{name}: vanished while being verified"])
            check = check_shard(path, decode_images=decode_images)
    except StoreCorrupt as e:
        return ShardCheck(where, problems=[f"{name}: {e}"])
    check.path = where if store.remote else path
    return check


def unregister(r: redis.Redis, keys: bus.Keys, name: str) -> int:
    """Remove every registration of shard `name` and mark it deleted and lost; returns entries removed."""
    ids = [entry_id for entry_id, shard in registry.iter_registered(r, keys) if shard.name == name]
    pipe = r.pipeline(transaction=True)
    pipe.sadd(keys.shards_deleted, name)  # trainers stop replaying it
    # Not gc's deliberate deletion: its rows are missing until a retry fetches them again.
    pipe.sadd(keys.shards_lost, name)
    if ids:
        pipe.xdel(keys.shards, *ids)
    pipe.execute()
    return len(ids)


def quarantine(r: redis.Redis | None, keys: bus.Keys, store: ShardStore, name: str, prefix: str) -> str:
    """Move a bad shard to `prefix` in its store (never overwriting) and unregister it; returns
    where it went. In a directory `prefix` is a folder name relative to it ("../q/" works)."""
    target = prefix + Path(name).name
    if store.head(target) is not None:
        target = f"{prefix}{Path(name).stem}.{int(time.time() * 1000)}{SHARD_SUFFIX}"
    if r is not None:
        unregister(r, keys, Path(name).name)
    store.move(name, target)
    log.warning("quarantined %s -> %s", store.locate(name), store.locate(target))
    return store.locate(target)
