"""Parts worked the way a downloader works them, minus the downloading: for shardwriter tests.

    source = enqueue_source(r, keys, shard_dir, "src", rows=24, part_size=12)   # what `streamcap enqueue` leaves
    entry_id, part = claim_part(r, keys, "w1")          # a fresh part, else one idle in another's hands
    write_rows(writer, part)                            # samples, and a timeout for every FAIL_EVERY-th row
    process_part(r, keys, shard_dir, "w1")              # claim, write, finish and commit one part

`python -m tests.support.parts REDIS_URL NAMESPACE SHARD_DIR CONSUMER` runs `process_part` in a
process of its own: the worker the crash tests kill through STREAMCAP_FAULT.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamcap import bus
from streamcap.downloader.enqueue import enqueue
from streamcap.formats.records import PartRecord, SourceRecord
from streamcap.shardwriter.commit import CommitResult, PartClaim, commit_part
from streamcap.shardwriter.writer import PartWriter
from tests.support.images import jpeg_bytes

FAIL_EVERY = 7  # rows r with r % FAIL_EVERY == 0 fail (timeout): parts mix samples and failures


def write_rows(writer: PartWriter, part: PartRecord, image: bytes | None = None) -> None:
    """Every row of `part`: a sample, or a timeout failure for every FAIL_EVERY-th row."""
    for row in range(part.start, part.end):
        if row % FAIL_EVERY == 0:
            writer.fail(row, f"http://127.0.0.1/{row}.jpg", "timeout")
        else:
            writer.add(
                row=row,
                image=image or jpeg_bytes(24, 24, seed=row),
                image_ext="jpg",
                caption=f"caption {row}",
                meta={"url": f"http://127.0.0.1/{row}.jpg", "caption_raw": f"Caption {row}."},
            )


def enqueue_source(r, keys: bus.Keys, shard_dir: Path, source_id: str, rows: int, part_size: int) -> SourceRecord:
    """A source of `rows` rows enqueued by the real `enqueue` (its file is never read here)."""
    source = SourceRecord(
        id=source_id,
        uri=f"/data/{source_id}.parquet",
        format="parquet",
        url_col="url",
        caption_col="caption",
        rows=rows,
        part_size=part_size,
        created=1.0,
    )
    assert enqueue(r, keys, shard_dir, source).added
    return source


def claim_part(r, keys: bus.Keys, consumer: str, min_idle_ms: int = 0) -> tuple[str, PartRecord] | None:
    """A new part for `consumer`, else one idle for min_idle_ms in another consumer's hands."""
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    reply = r.xreadgroup(bus.GROUP_DOWNLOADERS, consumer, {keys.parts: ">"}, count=1)
    entries = reply[0][1] if reply else []
    if not entries:
        entries = bus.claim_stale(r, keys.parts, bus.GROUP_DOWNLOADERS, consumer, min_idle_ms)
    if not entries:
        return None
    entry_id, fields = entries[0]
    return entry_id, PartRecord.from_message(bus.decode(fields))


def process_part(r, keys: bus.Keys, shard_dir: Path, consumer: str, max_samples: int = 4) -> CommitResult | None:
    """Claim, write, finish and commit one part; None when there is nothing to claim."""
    claimed = claim_part(r, keys, consumer)
    if claimed is None:
        return None
    entry_id, part = claimed
    claim = PartClaim(r, keys, entry_id, consumer)
    with PartWriter(shard_dir, part, max_samples=max_samples, max_bytes=1 << 20, owner=consumer, claim=claim) as w:
        write_rows(w, part)
        stats = w.finish(bytes_downloaded=1000)
    return commit_part(r, keys, stats, entry_id, consumer=consumer)


def main(argv: list[str]) -> int:
    url, namespace, shard_dir, consumer = argv
    r = bus.connect(url)
    result = process_part(r, bus.Keys(namespace), Path(shard_dir), consumer)
    print(result.status if result else "empty")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
