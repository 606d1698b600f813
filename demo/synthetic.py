"""Parts made on the spot from the demo world, for checks that must run without downloading:
the GPU check (`benchmarks/gpu_train.sh`), the loader benchmark and the trainer's tests.

    samples = demo_samples(seed=1, start=0, count=256, image_size=256)
    stats = add_part(r, keys, shard_dir, "demo", part=0, samples=samples)   # claim, write, commit
    stats.shards[0].name                                                     # demo-000000-0000.tar
    tokenizer = demo_tokenizer(samples)                                      # a WordPiece vocab of their captions

The shards are exactly what a downloader writes: the part goes onto the `parts` stream and is
claimed in the downloaders' group, `PartWriter` writes its samples (one shard per part, a
stats file beside it) and `commit_part` registers them. Writing and committing also come
apart, for shards written in other processes:

    stats = write_part(shard_dir, "demo", part=0, samples=samples)          # no Redis needed
    commit_written(r, keys, stats)

`register_shard` commits a shard file that is already on disk (one a test damaged on purpose)
as a part of its own. Synthetic parts need a namespace of their own: nothing else may add
parts to its `parts` stream meanwhile.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import redis

from streamcap import bus
from streamcap.demo.world import Scene
from streamcap.formats.records import PartRecord, PartStats, ShardRecord
from streamcap.formats.shards import sample_key
from streamcap.shardwriter.commit import COMMITTED, PartClaim, commit_part
from streamcap.shardwriter.writer import PartWriter
from streamcap.text.captions import process_caption
from streamcap.text.tokenizer import WordPieceTokenizer
from streamcap.text.vocab import count_words, train_vocab

CONSUMER = "synthetic"
_NO_BYTE_LIMIT = 1 << 40  # one shard per part, however large its images


@dataclass(frozen=True)
class RawSample:
    key: str
    jpeg: bytes
    caption: str
    meta: dict


def demo_samples(
    seed: int, start: int, count: int, image_size: int = 256, source: str = "demo", quality: int = 90
) -> list[RawSample]:
    """Rows start..start+count-1 of the demo world: JPEG, short caption, json with the raw paragraph."""
    out = []
    for row in range(start, start + count):
        scene = Scene.for_index(seed, row)
        buf = io.BytesIO()
        scene.render(image_size).save(buf, format="JPEG", quality=quality)
        raw = scene.llava_caption()
        caption = process_caption(raw, sentences=1)
        meta = {
            "url": f"http://demo.invalid/img/{row}.jpg",
            "caption_raw": raw,
            "caption": caption,
            "captions": {"alt_txt": scene.alt_text()},
            "width": image_size,
            "height": image_size,
            "orig_width": image_size,
            "orig_height": image_size,
            "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
            "source": source,
            "row": row,
        }
        out.append(RawSample(key=sample_key(source, row), jpeg=buf.getvalue(), caption=caption, meta=meta))
    return out


def demo_tokenizer(samples: list[RawSample], size: int = 400) -> WordPieceTokenizer:
    """A small WordPiece vocabulary trained on the samples' captions."""
    return WordPieceTokenizer.from_vocab(train_vocab(count_words(s.caption for s in samples), size, min_frequency=1))


def part_of(source: str, part: int, samples: list[RawSample]) -> PartRecord:
    """The part whose rows are exactly those of `samples`."""
    rows = [s.meta["row"] for s in samples]
    return PartRecord(source=source, part=part, start=min(rows), end=max(rows) + 1)


def write_part(
    shard_dir: Path, source: str, part: int, samples: list[RawSample], claim: PartClaim | None = None
) -> PartStats:
    """The samples as one part with `PartWriter`: one shard and its stats file in `shard_dir`."""
    with PartWriter(
        shard_dir,
        part_of(source, part, samples),
        max_samples=max(1, len(samples)),
        max_bytes=_NO_BYTE_LIMIT,
        owner=CONSUMER,
        claim=claim,
    ) as writer:
        for s in samples:
            writer.add(row=s.meta["row"], image=s.jpeg, image_ext="jpg", caption=s.caption, meta=s.meta)
        return writer.finish(bytes_downloaded=sum(len(s.jpeg) for s in samples))


def add_part(
    r: redis.Redis, keys: bus.Keys, shard_dir: Path, source: str, part: int, samples: list[RawSample]
) -> PartStats:
    """Claim a new part, write the samples into it and commit it, as a downloader does."""
    claim = claim_new_part(r, keys, part_of(source, part, samples))
    stats = write_part(shard_dir, source, part, samples, claim=claim)
    _commit(claim, stats)
    return stats


def commit_written(r: redis.Redis, keys: bus.Keys, stats: PartStats) -> None:
    """Claim and commit a part `write_part` wrote without a claim (in another process, say)."""
    claim = claim_new_part(r, keys, PartRecord(stats.source, stats.part, stats.start, stats.end))
    _commit(claim, stats)


def register_shard(
    r: redis.Redis, keys: bus.Keys, shard_dir: Path, name: str, source: str, part: int, samples: int
) -> None:
    """Commit a shard file already in `shard_dir` (written by hand) as part `part` of `source`."""
    record = ShardRecord(
        name=name, source=source, part=part, seq=0, samples=samples, bytes=(Path(shard_dir) / name).stat().st_size
    )
    claim = claim_new_part(r, keys, PartRecord(source, part, 0, samples))
    _commit(claim, PartStats(source=source, part=part, start=0, end=samples, samples=samples, shards=[record]))


def claim_new_part(r: redis.Redis, keys: bus.Keys, part: PartRecord) -> PartClaim:
    """Add the part to the `parts` stream, as enqueue does, and claim it in the downloaders' group."""
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    entry_id = r.xadd(keys.parts, bus.encode(part.to_message()))
    reply = r.xreadgroup(bus.GROUP_DOWNLOADERS, CONSUMER, {keys.parts: ">"}, count=1)
    claimed = reply[0][1][0][0] if reply and reply[0][1] else None
    if claimed != entry_id:
        raise RuntimeError(
            f"claimed parts entry {claimed} instead of {entry_id} ({part.part_id}): "
            f"another producer adds parts in namespace {keys.namespace!r}"
        )
    return PartClaim(r, keys, entry_id, CONSUMER)


def _commit(claim: PartClaim, stats: PartStats) -> None:
    result = commit_part(claim.r, claim.keys, stats, claim.entry_id, consumer=claim.consumer)
    if result.status != COMMITTED:
        raise RuntimeError(f"synthetic part {stats.part_id} was not committed: {result.status}")
