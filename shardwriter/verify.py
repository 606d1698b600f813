"""Shard verification: read every member of a tar safely and say what is wrong with it.

    check = check_shard(Path("shards/relaion-000003-0000.tar"))
    check.ok, check.samples, check.problems      # problems: ['relaion_000000003007: sample lacks txt', ...]
    quarantine(r, keys, check.path, Path("shards/quarantine"))   # move away + unregister

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
import shutil
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import redis
from PIL import Image

from streamcap import bus
from streamcap.common.logs import first_line
from streamcap.formats.shards import iter_samples, sample_key
from streamcap.shardwriter import registry

log = logging.getLogger(__name__)

_KEY = re.compile(r"[a-z0-9_-]+_\d{12}")
_DRAFT_SIZE = (64, 64)


@dataclass
class ShardCheck:
    path: Path
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
        where = f"{check.path.name}/{sample.key}"
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


def expand(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Shard files named by `paths` (a directory contributes its top-level *.tar), and missing paths."""
    files, missing = [], []
    for p in paths:
        if p.is_dir():
            files += registry.shard_files(p)
        elif p.is_file():
            files.append(p)
        else:
            missing.append(f"{p}: no such file or directory")
    return files, missing


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


def quarantine(r: redis.Redis | None, keys: bus.Keys, path: Path, quarantine_dir: Path) -> Path:
    """Move a bad shard into `quarantine_dir` (never overwriting) and unregister it."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = quarantine_dir / path.name
    if target.exists():
        target = quarantine_dir / f"{path.stem}.{int(time.time() * 1000)}{path.suffix}"
    if r is not None:
        unregister(r, keys, path.name)
    shutil.move(str(path), target)
    log.warning("quarantined %s -> %s", path, target)
    return target
