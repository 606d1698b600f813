"""Settings of the shard writer and the shard tools (defaults < env var < CLI flag).

    cfg = ShardWriterSettings(shard_max_samples=1000, shard_max_bytes="256MiB", max_disk_bytes="200G")
    cfg.max_disk_bytes       # 200_000_000_000

Byte sizes accept a plain integer or a number with a unit (K, M, G, T = powers of 1000;
KiB, MiB, GiB, TiB = powers of 1024), so `--max-disk-bytes 200G` reads as people write it.
The downloader writes the shards, so its settings derive from these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from streamcap.common.settings import Check, CommonSettings, at_least, between, directory_path, fail, optional, setting
from streamcap.common.store import is_store_url

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
SIZE_FIELDS = ("shard_max_bytes", "max_disk_bytes", "min_free_bytes")

# Upper bounds: a larger value is a slip of the keyboard, not a plan.
MAX_SHARD_SAMPLES = 1_000_000
# A shard is one file a loader worker reads from start to end, and a replay reads again whole;
# webdataset shards are usually well under a few GB.
MAX_SHARD_BYTES = 64 * 2**30
# More than any shard volume holds ("P" is not even a unit here).
MAX_DISK_BYTES = 1000 * 10**12
MAX_READS = 1000


def parse_size(value: object) -> int | None:
    """Bytes from 123, '123', '1.5G', '256MiB'; None when the text is no size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(str(value))
    if not match or match.group(2).lower() not in _UNITS:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def byte_size(lo: int, hi: int) -> Check:
    """A check: a byte count from `lo` to `hi`, said in the units people type."""

    def check(v: object) -> str | None:
        ok = isinstance(v, int) and lo <= v <= hi
        return None if ok else f"a byte size from {_in_units(lo)} to {_in_units(hi)}"

    return check


def _in_units(n: int) -> str:
    """4096 -> '4KiB', 200_000_000_000 -> '200G': the largest unit that divides it exactly."""
    for unit in ("TiB", "T", "GiB", "G", "MiB", "M", "KiB", "K"):
        if n and n % _UNITS[unit.lower()] == 0:
            return f"{n // _UNITS[unit.lower()]}{unit}"
    return str(n)


def format_size(n: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True, kw_only=True)
class ShardWriterSettings(CommonSettings):
    """Shard roll-over, the disk budget and the shard tools' knobs."""

    size_fields: ClassVar[tuple[str, ...]] = SIZE_FIELDS  # byte sizes, read as "200G" too (a subclass adds its own)
    shard_max_samples: int = setting(1000, check=between(1, MAX_SHARD_SAMPLES))
    """A shard rolls over to the next one after this many samples."""
    shard_max_bytes: int = setting(256 * 2**20, check=byte_size(4096, MAX_SHARD_BYTES))
    """A shard rolls over before it would grow past this size (e.g. 256MiB)."""
    max_disk_bytes: int = setting(0, check=byte_size(0, MAX_DISK_BYTES))
    """Disk budget for shards (e.g. 200G): downloaders pause above it, gc deletes read shards; 0 = none."""
    min_free_bytes: int = setting(0, check=byte_size(0, MAX_DISK_BYTES))
    """Free-space floor of the shard filesystem (e.g. 5G): downloaders pause below it; 0 = none."""
    min_reads: int = setting(1, check=between(1, MAX_READS))
    """gc deletes a shard only once every running training run has read it this many times."""
    quarantine_dir: Path | None = setting(None, check=optional(directory_path))
    """Where `shards verify --quarantine` moves bad shards (default: <shard-dir>/quarantine)."""
    temp_stale_seconds: float = setting(3600.0, check=optional(at_least(1)))
    """A temporary shard file of a writer on another host is swept after this long untouched."""

    def __post_init__(self) -> None:
        for name in self.size_fields:
            raw = getattr(self, name)
            size = parse_size(raw)
            if size is None:
                fail(self, name, "a byte size like 1000000, 500M or 2GiB", raw)
            object.__setattr__(self, name, size)
        super().__post_init__()

    @property
    def quarantine_path(self) -> Path | None:
        """None with a bucket and no --quarantine-dir: bad shards then move to its quarantine/ prefix."""
        if self.quarantine_dir is not None:
            return self.quarantine_dir
        return None if is_store_url(self.shard_dir) else Path(self.shard_dir) / "quarantine"

    @property
    def has_disk_budget(self) -> bool:
        return bool(self.max_disk_bytes or self.min_free_bytes)
