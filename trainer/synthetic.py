"""Shards made on the spot from the demo world, for checks that must run without downloading:
the GPU check (`benchmarks/gpu_train.sh`), the loader benchmark and the trainer's tests.

    samples = demo_samples(seed=1, start=0, count=256, image_size=256)
    name = write_shard(shard_dir, "demo", part=0, seq=0, samples=samples)   # WebDataset layout
    register_shard(r, keys, shard_dir, name, "demo", part=0, seq=0, samples=len(samples), first_row=0)
    tokenizer = demo_tokenizer(samples)                                      # a WordPiece vocab of their captions

The files have exactly the layout `streamcap.formats.shards` describes (jpg + txt + json per
sample, names from `shard_name`), written to a temporary name and renamed; registering adds
the `ShardRecord` to the `shards` stream as the shardwriter's commit does.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from streamcap import bus
from streamcap.common.files import atomic_writer
from streamcap.text.captions import process_caption
from streamcap.demo.world import Scene
from streamcap.formats.records import ShardRecord
from streamcap.formats.shards import sample_key, shard_name
from streamcap.text.tokenizer import WordPieceTokenizer
from streamcap.text.vocab import count_words, train_vocab


@dataclass(frozen=True)
class RawSample:
    key: str
    jpeg: bytes
    caption: str
    meta: dict


def demo_samples(seed: int, start: int, count: int, image_size: int = 256, source: str = "demo",
                 quality: int = 90) -> list[RawSample]:
    """Rows start..start+count-1 of the demo world: JPEG, short caption, json with the raw paragraph."""
    out = []
    for row in range(start, start + count):
        scene = Scene.for_index(seed, row)
        buf = io.BytesIO()
        scene.render(image_size).save(buf, format="JPEG", quality=quality)
        raw = scene.llava_caption()
        caption = process_caption(raw, sentences=1)
        meta = {
            "url": f"http://demo.invalid/img/{row}.jpg", "caption_raw": raw, "caption": caption,
            "captions": {"alt_txt": scene.alt_text()}, "width": image_size, "height": image_size,
            "orig_width": image_size, "orig_height": image_size,
            "sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "source": source, "row": row,
        }
        out.append(RawSample(key=sample_key(source, row), jpeg=buf.getvalue(), caption=caption, meta=meta))
    return out


def write_shard(shard_dir: Path, source: str, part: int, seq: int, samples: list[RawSample]) -> str:
    """Write one finished shard atomically; returns its name (relative to `shard_dir`)."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    name = shard_name(source, part, seq)
    with atomic_writer(shard_dir / name) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for ext, data in (("jpg", s.jpeg), ("txt", s.caption.encode()), ("json", json.dumps(s.meta).encode())):
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(data))
    return name


def register_shard(r: redis.Redis, keys: bus.Keys, shard_dir: Path, name: str, source: str, part: int, seq: int,
                   samples: int, first_row: int = -1) -> str:
    """Announce a written shard on the `shards` stream; returns the entry id."""
    record = ShardRecord(name=name, source=source, part=part, seq=seq, samples=samples,
                         bytes=(shard_dir / name).stat().st_size, first_row=first_row,
                         last_row=first_row + samples - 1 if first_row >= 0 else -1)
    return r.xadd(keys.shards, bus.encode(record.to_message()))


def demo_tokenizer(samples: list[RawSample], size: int = 400) -> WordPieceTokenizer:
    """A small WordPiece vocabulary trained on the samples' captions."""
    return WordPieceTokenizer.from_vocab(train_vocab(count_words(s.caption for s in samples), size, min_frequency=1))
