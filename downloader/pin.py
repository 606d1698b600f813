"""A source pinned at enqueue: its parts' row ranges are valid for the enqueued content only.

    files = pin_files(source.files, source.file_rows(), rows)   # at enqueue: size, mtime, sha256
    change = compare(enqueued.files, files)                     # a re-enqueue: None, or what changed
    checker = PinChecker(); checker.verify(record)              # a downloader, before a part's rows

A part is a row range. A file edited in place (same row count) would have its new rows
downloaded under the old ranges, mixed with parts done earlier from the old content; a
reordered re-export would duplicate some rows and drop others, all silently. So the files the
parts cover are pinned by size and content hash, and both a re-enqueue and the downloader
refuse a source whose pinned content changed, naming the file. A downloader that finds a
change fails the part for the environment (`failures.SOURCE_CHANGED`): the part is released
uncounted, never consumed or dead-lettered, and waits for the file to be restored.

Hashing reads the whole file; the downloader hashes again only when a file's size or mtime
differs from the pin (once per new size and mtime), so a source left alone costs a stat per part.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from streamcap.downloader.sources import SourceChanged, SourceUnavailable, resolve_files
from streamcap.formats.records import SourceFile, SourceRecord

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise SourceUnavailable(f"{path}: cannot read ({e.strerror or e})") from None
    return digest.hexdigest()


def pin_files(files: list[Path], file_rows: list[int], rows: int) -> tuple[SourceFile, ...]:
    """The pins of the files holding rows [0, rows): the first files, in the source's order."""
    pins, covered = [], 0
    for path, n in zip(files, file_rows):
        if covered >= rows:
            break
        stat = path.stat()
        pins.append(SourceFile(str(path), stat.st_size, stat.st_mtime_ns, sha256_of(path)))
        covered += n
    return tuple(pins)


def compare(enqueued: tuple[SourceFile, ...], now: tuple[SourceFile, ...]) -> str | None:
    """What differs between two pins of one source (by path, size and content), or None."""
    if not enqueued:
        return None  # enqueued before sources were pinned: nothing to hold it to
    for old, new in zip(enqueued, now):
        if old.path != new.path:
            return f"its files changed: {old.path} is now {new.path}"
        if (old.size, old.sha256) != (new.size, new.sha256):
            return f"{old.path} changed ({_describe(old)}, now {_describe(new)})"
    if len(now) < len(enqueued):
        return f"{enqueued[len(now)].path} no longer holds rows the parts cover"
    return None


class PinChecker:
    """The downloader's check, with a cache of content hashes by (path, size, mtime)."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[str, int, int], str] = {}

    def verify(self, source: SourceRecord) -> None:
        """SourceChanged unless every pinned file of `source` still has its enqueued content."""
        if not source.files:
            return
        _, files = resolve_files(source.uri)  # SourceUnavailable when the file is gone
        paths = [str(p) for p in files]
        for i, pin in enumerate(source.files):
            if i >= len(paths) or paths[i] != pin.path:
                now = paths[i] if i < len(paths) else "nothing"
                raise SourceChanged(self._line(source, f"its files changed: {pin.path} is now {now}"))
            try:
                stat = Path(pin.path).stat()
            except OSError as e:
                raise SourceUnavailable(f"{pin.path}: cannot read ({e.strerror or e})") from None
            if (stat.st_size, stat.st_mtime_ns) == (pin.size, pin.mtime_ns):
                continue
            key = (pin.path, stat.st_size, stat.st_mtime_ns)
            if key not in self._hashes:
                self._hashes[key] = sha256_of(Path(pin.path))
            now = SourceFile(pin.path, stat.st_size, stat.st_mtime_ns, self._hashes[key])
            if (now.size, now.sha256) != (pin.size, pin.sha256):
                raise SourceChanged(self._line(source, f"{pin.path} changed ({_describe(pin)}, now {_describe(now)})"))

    @staticmethod
    def _line(source: SourceRecord, change: str) -> str:
        return (
            f"source {source.id} changed since it was enqueued: {change}; restore the enqueued file, "
            "or enqueue the new one as another source (--name)"
        )


def _describe(pin: SourceFile) -> str:
    return f"{pin.size} bytes, sha256 {pin.sha256[:12]}"
