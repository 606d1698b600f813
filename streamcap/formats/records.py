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
    "dns_error",  # NXDOMAIN, SERVFAIL, no answer within --dns-timeout (the detail says which)
    "connect_error",  # refused, unreachable, reset, TLS (the detail says which)
    "timeout",
    "http_status",  # a 4xx/5xx after the allowed retries
    "throttled",  # 429/503 after the allowed retries, or its host paused past the row's time
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
# The reasons that speak of a row's host rather than of the row (a 404, a broken image do not):
# counted per host (`streamcap hosts`).
HOST_REASONS = ("dns_error", "connect_error", "timeout", "throttled", "blocked_address")

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
class SourceFile:
    """A file of a source as it was when enqueued: its parts' row ranges hold for this content only."""

    path: str
    size: int
    mtime_ns: int  # a changed mtime only prompts a look at the content (`sha256`)
    sha256: str

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> SourceFile:
        return cls(
            path=str(msg["path"]), size=int(msg["size"]), mtime_ns=int(msg["mtime_ns"]), sha256=str(msg["sha256"])
        )


@dataclass(frozen=True)
class SourceRecord:
    """One enqueued URL list; stored in the `sources` hash and as sources/<id>.json in the shard dir.

    `files` pins the files its parts cover (downloader.pin): a source enqueued before pins
    existed has none, and is read as it is.
    """

    id: str
    uri: str
    format: str  # parquet | csv | tsv | jsonl
    url_col: str
    caption_col: str
    rows: int
    part_size: int
    extra_caption_cols: tuple[str, ...] = ()  # kept raw in each sample's json for re-captioning
    created: float = 0.0
    files: tuple[SourceFile, ...] = ()

    @property
    def parts(self) -> int:
        return (self.rows + self.part_size - 1) // self.part_size

    def part(self, index: int) -> PartRecord:
        start = index * self.part_size
        return PartRecord(source=self.id, part=index, start=start, end=min(start + self.part_size, self.rows))

    def to_message(self) -> dict[str, Any]:
        msg = dataclasses.asdict(self) | {"extra_caption_cols": list(self.extra_caption_cols)}
        msg["files"] = [dataclasses.asdict(f) for f in self.files]
        return msg

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> SourceRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in msg.items() if k in fields}
        data["extra_caption_cols"] = tuple(data.get("extra_caption_cols", ()))
        data["files"] = tuple(SourceFile.from_message(f) for f in data.get("files", ()))
        return cls(**data)


class _PartIds:
    """The ids of a part's work, for records that carry `source`, `part` and `retry`."""

    source: str
    part: int
    retry: str

    @property
    def part_id(self) -> str:
        return part_id(self.source, self.part)

    @property
    def done_id(self) -> str:
        """The id `parts:done` records once this work is committed: the part's, or its retry's."""
        return retry_id(self.part_id, self.retry) if self.retry else self.part_id


@dataclass(frozen=True)
class PartRecord(_PartIds):
    """Rows [start, end) of a source: the unit of work a downloader claims and commits.

    A *retry part* (`retry` set, by `streamcap parts retry` or `shards reconcile
    --requeue-missing`) names a committed part and only the rows to fetch again (`row_list`);
    its new shards start at sequence `seq0`, and the shards in `drop` (gone from disk) leave
    the part's stats. Its commit replaces those rows' outcomes (records.PartStats.with_retry).
    """

    source: str
    part: int
    start: int
    end: int
    retry: str = ""  # retry id; '' for the part's own work
    row_list: tuple[int, ...] = ()
    seq0: int = 0
    drop: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return len(self.row_list) if self.retry else self.end - self.start

    @property
    def row_numbers(self) -> list[int]:
        """The source rows this work fetches, in order."""
        return sorted(self.row_list) if self.retry else list(range(self.start, self.end))

    def to_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"source": self.source, "part": self.part, "start": self.start, "end": self.end}
        if self.retry:
            msg |= {"retry": self.retry, "rows": list(self.row_list), "seq0": self.seq0, "drop": list(self.drop)}
        return msg

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> PartRecord:
        return cls(
            source=msg["source"],
            part=int(msg["part"]),
            start=int(msg["start"]),
            end=int(msg["end"]),
            retry=str(msg.get("retry", "")),
            row_list=tuple(int(r) for r in msg.get("rows", ())),
            seq0=int(msg.get("seq0", 0)),
            drop=tuple(str(n) for n in msg.get("drop", ())),
        )


RETRY_SEP = "~"


def retry_id(part: str, retry: str) -> str:
    """The `parts:done` id of a part's retry: '<part id>~<retry id>'."""
    return f"{part}{RETRY_SEP}{retry}"


def is_retry_id(done_id: str) -> bool:
    return RETRY_SEP in done_id


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
class RetryRecord:
    """What one committed retry changed in its part: enough to undo it (`PartStats.without_retry`)."""

    rows: list[int]
    seq0: int
    samples: int = 0  # of `rows`, how many became samples
    bytes_downloaded: int = 0
    replaced: list[FailedRow] = field(default_factory=list)  # the rows' failures before the retry
    dropped: list[ShardRecord] = field(default_factory=list)  # shards gone from disk, left out since

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "seq0": self.seq0,
            "samples": self.samples,
            "bytes_downloaded": self.bytes_downloaded,
            "replaced": [dataclasses.asdict(f) for f in self.replaced],
            "dropped": [s.to_message() for s in self.dropped],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RetryRecord:
        return cls(
            rows=[int(r) for r in d["rows"]],
            seq0=int(d["seq0"]),
            samples=int(d.get("samples", 0)),
            bytes_downloaded=int(d.get("bytes_downloaded", 0)),
            replaced=[FailedRow(**f) for f in d.get("replaced", [])],
            dropped=[ShardRecord.from_message(s) for s in d.get("dropped", [])],
        )


@dataclass
class PartStats(_PartIds):
    """Outcome of one part: written next to its shards as <slug>-<part>.stats.json, and the
    counters the commit adds to the `stats` hash.

    A part's retries are merged into it (`with_retry`): each retried row counts once, with its
    latest outcome, and `retries` says which rows each retry fetched again and how they ended.
    `retry` names the retry a commit of this object applies ('' for the part's own commit).
    """

    source: str
    part: int
    start: int
    end: int
    samples: int = 0
    bytes_downloaded: int = 0
    failures: list[FailedRow] = field(default_factory=list)
    shards: list[ShardRecord] = field(default_factory=list)
    retries: dict[str, RetryRecord] = field(default_factory=dict)
    retry: str = ""

    @property
    def retried_rows(self) -> int:
        return sum(len(r.rows) for r in self.retries.values())

    @property
    def retried_samples(self) -> int:
        return sum(r.samples for r in self.retries.values())

    def with_retry(self, rid: str, work: PartStats, rows: list[int], seq0: int, drop: tuple[str, ...]) -> PartStats:
        """This (committed) outcome with `rows` replaced by `work`, a retry's outcome of exactly those
        rows in new shards from `seq0` on, and the `drop` shards left out."""
        retried = set(rows)
        record = RetryRecord(
            rows=sorted(retried),
            seq0=seq0,
            samples=work.samples,
            bytes_downloaded=work.bytes_downloaded,
            replaced=[f for f in self.failures if f.row in retried],
            dropped=[s for s in self.shards if s.name in drop],
        )
        shards = [s for s in self.shards if s.name not in drop] + list(work.shards)
        return dataclasses.replace(
            self,
            samples=sum(s.samples for s in shards),
            bytes_downloaded=self.bytes_downloaded + work.bytes_downloaded,
            failures=sorted([f for f in self.failures if f.row not in retried] + list(work.failures), key=_row),
            shards=sorted(shards, key=lambda s: s.seq),
            retries={**self.retries, rid: record},
            retry=rid,
        )

    def without_retry(self, rid: str) -> PartStats:
        """The outcome before retry `rid` (the last one merged) was applied."""
        record = self.retries[rid]
        retried = set(record.rows)
        shards = [s for s in self.shards if s.seq < record.seq0] + record.dropped
        return dataclasses.replace(
            self,
            samples=sum(s.samples for s in shards),
            bytes_downloaded=self.bytes_downloaded - record.bytes_downloaded,
            failures=sorted([f for f in self.failures if f.row not in retried] + record.replaced, key=_row),
            shards=sorted(shards, key=lambda s: s.seq),
            retries={k: v for k, v in self.retries.items() if k != rid},
            retry="",
        )

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
            "retries": {rid: r.to_json() for rid, r in self.retries.items()},
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
            retries={rid: RetryRecord.from_json(r) for rid, r in d.get("retries", {}).items()},
        )


def _row(f: FailedRow) -> int:
    return f.row
