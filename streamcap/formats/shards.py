"""The shard format shared by the writer (shardwriter), the tools and the reader (trainer).

A shard is a plain tar in WebDataset layout: each sample is three consecutive members
`<key>.jpg` (or `.webp`), `<key>.txt` (the processed caption) and `<key>.json` (the metadata
below). Keys are `<source slug>_<row, 12 digits>`: unique across the dataset, free of dots
(WebDataset splits a member name at the first dot) and sorted in row order.

Reading is defensive: a member with an absolute path, `..`, a directory separator, a type other
than a regular file, or an absurd size is rejected with a reason and never loaded, and a
truncated or corrupt tar ends the shard with a reason instead of an exception.

    for sample in iter_samples(path, on_problem=lambda where, why: log.warning("%s: %s", where, why)):
        sample.key, sample.image, sample.caption, sample.meta
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcap.formats.records import source_slug

IMAGE_EXTS = ("jpg", "webp")
SAMPLE_EXTS = frozenset(IMAGE_EXTS + ("txt", "json"))
SHARD_SUFFIX = ".tar"
STATS_SUFFIX = ".stats.json"
# Images are stored resized (a few hundred KB at most); anything near this is not ours.
MAX_MEMBER_BYTES = 32 * 1024 * 1024

# Metadata fields of <key>.json, written by the shardwriter:
#   url, caption_raw (as in the source), caption (processed, == <key>.txt),
#   captions (extra caption columns kept raw: {column: text}, may be empty),
#   width, height (stored image), orig_width, orig_height, sha256 (downloaded bytes),
#   source, row, image_crc32 (CRC-32 of the stored image member: verification catches flipped bytes)


def sample_key(source: str, row: int) -> str:
    return f"{source_slug(source)}_{row:012d}"


def part_prefix(source: str, part: int) -> str:
    """What every file name of one part starts with: `<source slug>-<part, 6 digits>`."""
    return f"{source_slug(source)}-{part:06d}"


def shard_name(source: str, part: int, seq: int) -> str:
    """Deterministic name: a redelivered part overwrites its own shards instead of adding more."""
    return f"{part_prefix(source, part)}-{seq:04d}{SHARD_SUFFIX}"


def stats_name(source: str, part: int) -> str:
    return f"{part_prefix(source, part)}{STATS_SUFFIX}"


def member_problem(info: tarfile.TarInfo, max_bytes: int = MAX_MEMBER_BYTES) -> str | None:
    """Why a tar member must not be loaded, or None when it is a plain sample file."""
    name = info.name
    if not info.isreg():
        kind = (
            "symlink"
            if info.issym()
            else "hard link"
            if info.islnk()
            else "directory"
            if info.isdir()
            else "special file"
        )
        return f"member {name!r} is a {kind}, not a regular file"
    if name.startswith("/") or name.startswith("\\"):
        return f"member {name!r} has an absolute path"
    if ".." in name.split("/") or ".." in name.split("\\") or name.startswith(".."):
        return f"member {name!r} escapes the archive with '..'"
    if "/" in name or "\\" in name:
        return f"member {name!r} contains a directory separator"
    if info.size > max_bytes:
        return f"member {name!r} declares {info.size} bytes (limit {max_bytes})"
    key, _, ext = name.partition(".")
    if not key or ext not in SAMPLE_EXTS:
        return f"member {name!r} is not <key>.{{jpg,webp,txt,json}}"
    return None


@dataclass
class Sample:
    key: str
    image: bytes
    image_ext: str
    caption: str
    meta: dict[str, Any]


ProblemHandler = Callable[[str, str], None]  # (where: "shard" or "shard/key", why)


def iter_samples(
    path: Path | str, on_problem: ProblemHandler | None = None, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[Sample]:
    """Complete, safe samples of one shard, in order; everything else goes to `on_problem`.

    Reads the tar as a stream (no seeking, one member in memory at a time). Never raises for
    bad content: a missing file, an unreadable or truncated tar reports and stops.
    """
    report = on_problem or (lambda where, why: None)
    name = Path(path).name
    try:
        archive = tarfile.open(path, mode="r|")
    except FileNotFoundError:
        report(name, "shard file does not exist")
        return
    except (tarfile.TarError, OSError, EOFError) as e:
        report(name, f"not a readable tar: {e}")
        return
    current: dict[str, bytes] = {}
    current_key: str | None = None
    try:
        with archive:
            for info in archive:
                problem = member_problem(info, max_member_bytes)
                if problem:
                    report(name, problem)
                    continue
                key, _, ext = info.name.partition(".")
                if key != current_key:
                    if current_key is not None:
                        yield from _complete(name, current_key, current, report)
                    current_key, current = key, {}
                if ext in current:
                    report(f"{name}/{key}", f"duplicate member {info.name!r}")
                    continue
                handle = archive.extractfile(info)
                data = handle.read() if handle is not None else b""
                if len(data) != info.size:
                    raise EOFError(f"member {info.name!r} is cut short")
                current[ext] = data
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        report(name, f"truncated or corrupt tar: {e}")
        return
    # tarfile ends quietly at a header cut short; only the end-of-archive marker (two zero
    # blocks) tells a complete shard from one whose tail is missing.
    if not _has_end_marker(Path(path), archive.offset):
        report(name, f"truncated or corrupt tar: no end-of-archive marker after byte {archive.offset}")
        return
    if current_key is not None:
        yield from _complete(name, current_key, current, report)


def _has_end_marker(path: Path, offset: int) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            marker = f.read(2 * tarfile.BLOCKSIZE)
    except OSError:
        return False
    return len(marker) == 2 * tarfile.BLOCKSIZE and not marker.strip(b"\0")


def _complete(shard: str, key: str, members: dict[str, bytes], report: ProblemHandler) -> Iterator[Sample]:
    where = f"{shard}/{key}"
    image_ext = next((ext for ext in IMAGE_EXTS if ext in members), None)
    missing = [ext for ext in ("txt", "json") if ext not in members] + ([] if image_ext else ["jpg|webp"])
    if missing:
        report(where, "sample lacks " + ", ".join(missing))
        return
    try:
        caption = members["txt"].decode("utf-8")
        meta = json.loads(members["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        report(where, f"unreadable caption or json: {e}")
        return
    if not isinstance(meta, dict):
        report(where, "json is not an object")
        return
    yield Sample(key=key, image=members[image_ext], image_ext=image_ext, caption=caption, meta=meta)
