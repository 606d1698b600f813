"""The records services hand each other through Redis and the shard directory.

A *source* (a URL list) is split into *parts* (row ranges) that downloaders claim; a part is
written as one or more *shards* and committed with its stats. These dataclasses are the only
definition of those messages; every reader and writer goes through `to_message`/`from_message`.

    part = PartRecord(source="relaion", part=17, start=17_000, end=18_000)
    r.xadd(keys.parts, bus.encode(part.to_message()))
    PartRecord.from_message(bus.decode(fields)).part_id   # 'relaion:17'
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

# Every row that does not become a sample ends as exactly one of these reasons.
FAILURE_REASONS = (
    "invalid_url",  # empty, malformed, or not http(s)
    "blocked_address",  # resolves to loopback/private/link-local/... and --allow-private is off
    "dns_error",
    "connect_error",
    "timeout",
    "http_status",  # a 4xx/5xx after the allowed retries
    "too_many_redirects",
    "too_large",  # Content-Length or streamed body over --max-bytes
    "opted_out",  # X-Robots-Tag carries a configured directive
    "not_an_image",  # the bytes are no image format Pillow knows
    "decode_error",  # an image format, but broken (truncated, corrupt)
    "decompression_bomb",  # more pixels than --max-pixels
    "too_small",  # below --min-size
    "bad_aspect_ratio",  # beyond --max-aspect-ratio
    "empty_caption",
    "processing_crash",  # the image worker died on this row: the attempt fails and the part is
    # retried, then dead-lettered with it (never a committed row's outcome)
)

_SLUG = re.compile(r"[^a-z0-9_-]+")


def source_slug(name: str) -> str:
    """A source name as it appears in sample keys and file names: [a-z0-9_-], no dots."""
    slug = _SLUG.sub("-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"source name {name!r} has no letters or digits")
    return slug


def part_id(source: str, part: int) -> str:
    return f"{source}:{part}"


@dataclass(frozen=True)
class SourceRecord:
    """One enqueued URL list; stored in the `sources` hash and as sources/<id>.json in the shard dir."""

    id: str
    uri: str
    format: str  # parquet | csv | tsv | jsonl
    url_col: str
    caption_col: str
    rows: int
    part_size: int
    extra_caption_cols: tuple[str, ...] = ()  # kept raw in each sample's json for re-captioning
    created: float = 0.0

    @property
    def parts(self) -> int:
        return (self.rows + self.part_size - 1) // self.part_size

    def part(self, index: int) -> PartRecord:
        start = index * self.part_size
        return PartRecord(source=self.id, part=index, start=start, end=min(start + self.part_size, self.rows))

    def to_message(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"extra_caption_cols": list(self.extra_caption_cols)}

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> SourceRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in msg.items() if k in fields}
        data["extra_caption_cols"] = tuple(data.get("extra_caption_cols", ()))
        return cls(**data)


@dataclass(frozen=True)
class PartRecord:
    """Rows [start, end) of a source: the unit of work a downloader claims and commits."""

    source: str
    part: int
    start: int
    end: int

    @property
    def part_id(self) -> str:
        return part_id(self.source, self.part)

    @property
    def rows(self) -> int:
        return self.end - self.start

    def to_message(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> PartRecord:
        return cls(source=msg["source"], part=int(msg["part"]), start=int(msg["start"]), end=int(msg["end"]))


@dataclass(frozen=True)
class ShardRecord:
    """One finalized shard file, as registered in the `shards` stream.

    `name` is a file name relative to the shard dir; readers join it with their own shard dir,
    so the downloader and trainer containers may mount the volume at different paths.
    """

    name: str
    source: str
    part: int
    seq: int
    samples: int
    bytes: int
    first_row: int = -1
    last_row: int = -1

    @property
    def part_id(self) -> str:
        return part_id(self.source, self.part)

    def to_message(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> ShardRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in msg.items() if k in fields})


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint the trainer published on the `checkpoints` stream for the evaluator.

    `path` is as the trainer wrote it; compose mounts the checkpoint volume at the same path in
    the evaluator container.
    """

    path: str
    step: int
    run: str
    created: float = 0.0

    def to_message(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> CheckpointRecord:
        return cls(path=msg["path"], step=int(msg["step"]), run=msg["run"], created=float(msg.get("created", 0.0)))


@dataclass
class FailedRow:
    row: int
    url: str
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {self.reason!r}")


@dataclass
class PartStats:
    """Outcome of one part: written next to its shards as <slug>-<part>.stats.json, and the
    counters the commit adds to the `stats` hash."""

    source: str
    part: int
    start: int
    end: int
    samples: int = 0
    bytes_downloaded: int = 0
    failures: list[FailedRow] = field(default_factory=list)
    shards: list[ShardRecord] = field(default_factory=list)

    @property
    def part_id(self) -> str:
        return part_id(self.source, self.part)

    def failures_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f.reason] = counts.get(f.reason, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "source": self.source,
            "part": self.part,
            "start": self.start,
            "end": self.end,
            "rows": self.end - self.start,
            "samples": self.samples,
            "bytes_downloaded": self.bytes_downloaded,
            "failures_by_reason": self.failures_by_reason(),
            "failures": [dataclasses.asdict(f) for f in self.failures],
            "shards": [s.to_message() for s in self.shards],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartStats:
        return cls(
            source=d["source"],
            part=int(d["part"]),
            start=int(d["start"]),
            end=int(d["end"]),
            samples=int(d["samples"]),
            bytes_downloaded=int(d.get("bytes_downloaded", 0)),
            failures=[FailedRow(**f) for f in d.get("failures", [])],
            shards=[ShardRecord.from_message(s) for s in d.get("shards", [])],
        )
