"""Helpers of the shardwriter tests: real JPEG bytes, parts written end to end, a worker process.

`python -m tests.shardwriter_support REDIS_URL NAMESPACE SHARD_DIR CONSUMER` claims one part of the
`parts` stream (a fresh one, else one left idle by a dead worker), writes it with PartWriter and
commits it: the subprocess that the crash tests kill through STREAMCAP_FAULT.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from PIL import Image

from streamcap.shardwriter.commit import PartClaim, commit_part
from streamcap.shardwriter.registry import save_source
from streamcap.shardwriter.writer import PartWriter
from streamcap import bus
from streamcap.formats.records import PartRecord, SourceRecord

FAIL_EVERY = 7  # rows r with r % FAIL_EVERY == 0 fail (timeout): parts mix samples and failures


def jpeg(seed: int = 0, size: int = 24) -> bytes:
    img = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, 120))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def write_rows(writer: PartWriter, part: PartRecord, image: bytes | None = None) -> None:
    """Every row of `part`: a sample, or a timeout failure for every FAIL_EVERY-th row."""
    for row in range(part.start, part.end):
        if row % FAIL_EVERY == 0:
            writer.fail(row, f"http://127.0.0.1/{row}.jpg", "timeout")
        else:
            writer.add(row=row, image=image or jpeg(row), image_ext="jpg", caption=f"caption {row}",
                       meta={"url": f"http://127.0.0.1/{row}.jpg", "caption_raw": f"Caption {row}."})


def enqueue(r, keys: bus.Keys, shard_dir: Path, source_id: str, rows: int, part_size: int) -> SourceRecord:
    """What `streamcap enqueue` leaves behind: the source in Redis and the shard dir, its parts."""
    source = SourceRecord(id=source_id, uri=f"/data/{source_id}.parquet", format="parquet", url_col="url",
                          caption_col="caption", rows=rows, part_size=part_size, created=1.0)
    r.hset(keys.sources, source.id, json.dumps(source.to_message()))
    save_source(shard_dir, source)
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    for index in range(source.parts):
        r.xadd(keys.parts, bus.encode(source.part(index).to_message()))
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


def process_part(r, keys: bus.Keys, shard_dir: Path, consumer: str, max_samples: int = 4):
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
