"""Hostile shards (docs/testing.md, attack 20): `streamcap shards verify` rejects them, naming each file
and why; the trainer's dataset skips them with a counted warning and never raises.

One shard directory holds a tar for every kind of damage, each with intact samples mixed in
where the damage allows: members escaping with `..` (plain and in a PAX header), an absolute
path, a symlink, a hard link, a device file, a directory, a member declaring 2 GiB, a tar cut in
half, a tar missing its end-of-archive blocks, flipped bytes in a header, flipped bytes in an
image that still decodes, and a sound tar holding a decompression bomb. Nothing may be extracted anywhere, and no sample of a damaged part
may reach training. (`tests/unit/test_shardwriter_verify.py` and `tests/integration/
test_dataset_stream.py` check single cases of the reader; this is the whole set through the
command and through the DataLoader with 0 and 1 workers.)
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tarfile
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamcap import bus
from streamcap.formats.records import ShardRecord
from streamcap.formats.shards import sample_key
from streamcap.shardwriter.registry import registered_shards
from streamcap.text.tokenizer import WordPieceTokenizer
from streamcap.text.vocab import count_words, train_vocab
from streamcap.trainer.dataset import make_loader
from tests.support import timing
from tests.support.fleet import STREAMCAP
from tests.support.images import jpeg_bytes, png_claiming
from tests.support.loader import stream_dataset

OUTSIDE = f"evil-{uuid.uuid4().hex[:8]}"  # what an extracting reader would create outside the shard dir


def tar_member(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def sample_members(tar: tarfile.TarFile, key: str, image: bytes, caption: str, meta: dict) -> None:
    tar_member(tar, f"{key}.jpg", image)
    tar_member(tar, f"{key}.txt", caption.encode())
    tar_member(tar, f"{key}.json", json.dumps(meta).encode())


def write_tar(path: Path, build: Callable[[tarfile.TarFile], None], fmt: int = tarfile.GNU_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        build(tar)
    return path


def declare_size(path: Path, member_index: int, size: int) -> None:
    """Rewrite the size field of the n-th member header (with a valid header checksum)."""
    data = bytearray(path.read_bytes())
    offset = 0
    with tarfile.open(path, "r:") as tar:
        offset = tar.getmembers()[member_index].offset
    header = data[offset : offset + 512]
    header[124:136] = b"%011o\0" % size
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    data[offset : offset + 512] = header
    path.write_bytes(bytes(data))


def flip_bytes(path: Path, start: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def member_offset(path: Path, name: str) -> int:
    """Where the data of member `name` starts in the tar file."""
    with tarfile.open(path, "r:") as tar:
        return tar.getmember(name).offset_data


class Shards:
    """Builds the hostile shard directory; remembers which captions are intact and which are not."""

    def __init__(self, shard_dir: Path) -> None:
        self.dir, self.row = shard_dir, 0
        self.intact: set[str] = set()  # captions of samples that may be trained on
        self.damaged: set[str] = set()  # captions that must never reach training
        self.reasons: dict[str, str] = {}  # shard name -> what verify must say about it
        shard_dir.mkdir(parents=True, exist_ok=True)

    def sample(self, tar: tarfile.TarFile, label: str, intact: bool = True, image: bytes | None = None) -> None:
        image = image or jpeg_bytes(48, 48, seed=self.row)
        caption = f"{label} sample number {self.row}"
        key = sample_key("attack", self.row)
        meta = {
            "url": f"http://example.com/{self.row}.jpg",
            "caption_raw": caption,
            "caption": caption,
            "source": "attack",
            "row": self.row,
            "image_crc32": zlib.crc32(image),
        }
        sample_members(tar, key, image, caption, meta)
        (self.intact if intact else self.damaged).add(caption)
        self.row += 1

    def shard(self, name: str, reason: str, build, fmt: int = tarfile.GNU_FORMAT) -> Path:
        self.reasons[name] = reason
        return write_tar(self.dir / name, build, fmt)


def hostile_shards(shard_dir: Path) -> Shards:
    s = Shards(shard_dir)
    s.shard(
        "dotdot.tar",
        f"member '../{OUTSIDE}.txt' escapes the archive with '..'",
        lambda t: (tar_member(t, f"../{OUTSIDE}.txt", b"pwned"), s.sample(t, "dotdot")),
    )
    s.shard(
        "absolute.tar",
        f"member '/tmp/{OUTSIDE}.jpg' has an absolute path",
        lambda t: (s.sample(t, "absolute"), tar_member(t, f"/tmp/{OUTSIDE}.jpg", b"pwned")),
    )
    s.shard(
        "symlink.tar",
        "is a symlink, not a regular file",
        lambda t: (
            tar_member(t, "attack_999999999999.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
            s.sample(t, "symlink"),
        ),
    )
    s.shard(
        "hardlink.tar",
        "is a hard link, not a regular file",
        lambda t: (
            s.sample(t, "hardlink"),
            tar_member(t, "attack_999999999998.jpg", type=tarfile.LNKTYPE, linkname="/etc/shadow"),
        ),
    )
    s.shard(
        "device.tar",
        "is a special file, not a regular file",
        lambda t: (
            tar_member(t, "attack_999999999997.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
            s.sample(t, "device"),
        ),
    )
    s.shard(
        "directory.tar",
        "is a directory, not a regular file",
        lambda t: (tar_member(t, "sub", type=tarfile.DIRTYPE), s.sample(t, "directory")),
    )
    s.shard(
        "pax-dotdot.tar",
        "escapes the archive with '..'",  # the name only in a PAX extended header
        lambda t: (tar_member(t, f"../../{'x' * 120}/{OUTSIDE}.jpg", b"pwned"), s.sample(t, "pax")),
        fmt=tarfile.PAX_FORMAT,
    )
    s.shard("huge-member.tar", "declares 2147483648 bytes", lambda t: s.sample(t, "huge", intact=False))
    declare_size(s.dir / "huge-member.tar", 0, 2 * 2**30)
    s.shard(
        "truncated.tar",
        "truncated or corrupt tar",
        lambda t: [s.sample(t, "truncated", intact=i < 2) for i in range(4)],
    )
    cut_in_half(s.dir / "truncated.tar")
    s.shard(
        "no-tail.tar", "no end-of-archive marker", lambda t: [s.sample(t, "tailless", intact=i < 2) for i in range(3)]
    )
    whole = (s.dir / "no-tail.tar").read_bytes()
    (s.dir / "no-tail.tar").write_bytes(whole[: len(whole.rstrip(b"\0")) + 512 - len(whole.rstrip(b"\0")) % 512])
    s.shard("flipped-header.tar", "bad checksum", lambda t: s.sample(t, "flipped header", intact=False))
    flip_bytes(s.dir / "flipped-header.tar", 100)
    s.shard(
        "flipped-image.tar",
        "do not match their image_crc32",
        lambda t: (s.sample(t, "flipped image", intact=False), s.sample(t, "after the flip")),
    )
    flip_quantization_table(s.dir / "flipped-image.tar", "attack_%012d.jpg" % (s.row - 2))
    s.shard(
        "bomb.tar",
        "image does not decode: DecompressionBombError",  # a sound tar, a 2.5-gigapixel header
        lambda t: (s.sample(t, "bomb", intact=False, image=png_claiming(50_000, 50_000)), s.sample(t, "not a bomb")),
    )
    s.shard("good.tar", "", lambda t: [s.sample(t, "good") for _ in range(3)])
    return s


def cut_in_half(path: Path) -> None:
    """Keep the first two samples whole and cut the third in the middle of its image."""
    offset = member_offset(path, "attack_%012d.jpg" % _rows_in(path)[2])
    path.write_bytes(path.read_bytes()[: offset + 300])


def _rows_in(path: Path) -> list[int]:
    with tarfile.open(path, "r:") as tar:
        return sorted({int(m.name.split(".")[0][-12:]) for m in tar.getmembers()})


def flip_quantization_table(path: Path, member: str) -> None:
    """Flip bytes of the JPEG's first quantization table: the image still decodes, silently wrong."""
    start = member_offset(path, member)
    data = path.read_bytes()
    table = data.index(b"\xff\xdb", start) + 5  # marker, 2 length bytes, precision/id byte
    flip_bytes(path, table + 8, count=8)


def register(r, keys: bus.Keys, shards: Shards) -> None:
    for part, name in enumerate(sorted(shards.reasons)):
        record = ShardRecord(
            name=name, source="attack", part=part, seq=0, samples=1, bytes=(shards.dir / name).stat().st_size
        )
        r.xadd(keys.shards, bus.encode(record.to_message()))


def nothing_extracted(shard_dir: Path) -> bool:
    """No file of the hostile members exists where an extracting reader would have put it."""
    places = [Path("/tmp"), Path.cwd(), Path.cwd().parent, shard_dir, shard_dir.parent, shard_dir.parent.parent]
    return not [p for place in places for p in place.glob(f"{OUTSIDE}*")]


def test_verify_rejects_every_damaged_shard_naming_it_and_why(tmp_path):
    shards = hostile_shards(tmp_path / "shards")
    out = subprocess.run(
        [*STREAMCAP, "shards", "verify", str(shards.dir)], capture_output=True, text=True, timeout=timing.scaled(60)
    )
    assert out.returncode == 1, out.stdout + out.stderr
    bad = {line.split()[1].rsplit("/", 1)[-1] for line in out.stdout.splitlines() if line.startswith("BAD ")}
    assert bad == {name for name, reason in shards.reasons.items() if reason}
    for name, reason in shards.reasons.items():
        if reason:
            block = out.stdout.split(f"BAD {shards.dir / name}\n", 1)[1].split("BAD ", 1)[0]
            assert reason in block, (name, block)
    assert out.stdout.splitlines()[-1].startswith(f"verify: {len(shards.reasons)} shards, ")
    assert out.stdout.splitlines()[-1].endswith(f"{len(bad)} bad shards") and out.stderr == ""
    as_json = subprocess.run(
        [*STREAMCAP, "shards", "verify", "--json", str(shards.dir / "good.tar")],
        capture_output=True,
        text=True,
        timeout=timing.scaled(60),
    )
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["results"][0]["samples"] == 3
    assert nothing_extracted(shards.dir)


def test_verify_quarantine_moves_and_unregisters_the_damaged_shards(r, keys, redis_url, tmp_path):
    shards = hostile_shards(tmp_path / "shards")
    register(r, keys, shards)
    out = subprocess.run(
        [
            *STREAMCAP,
            "shards",
            "verify",
            "--quarantine",
            "--redis-url",
            redis_url,
            "--namespace",
            keys.namespace,
            "--shard-dir",
            str(shards.dir),
        ],
        capture_output=True,
        text=True,
        timeout=timing.scaled(60),
    )
    assert out.returncode == 1, out.stdout + out.stderr
    damaged = {name for name, reason in shards.reasons.items() if reason}
    assert {p.name for p in (shards.dir / "quarantine").iterdir()} == damaged
    assert {p.name for p in shards.dir.glob("*.tar")} == {"good.tar"}
    assert {s.name for _, s in registered_shards(r, keys)} == {"good.tar"}
    assert r.smembers(keys.shards_deleted) == damaged  # trainers stop replaying them


@pytest.mark.parametrize("workers", [0, 1])
def test_the_dataset_skips_damaged_data_counts_it_and_never_raises(redis_url, keys, r, tmp_path, caplog, workers):
    shards = hostile_shards(tmp_path / "shards")
    register(r, keys, shards)
    captions = shards.intact | shards.damaged
    tokenizer = WordPieceTokenizer.from_vocab(train_vocab(count_words(captions), 300, min_frequency=1))
    caplog.set_level(logging.WARNING, logger="streamcap.trainer")
    dataset = stream_dataset(
        redis_url, keys, shards.dir, tokenizer, run="attack", loader_workers=workers, shuffle_buffer=4, seed=1
    )
    batches = iter(make_loader(dataset))
    seen, problems = set(), 0
    for _ in range(12):  # every fresh shard, then replays of the readable ones; never an exception
        batch = next(batches)
        seen |= set(batch.captions)
        problems += batch.stats["problems"]
    del batches
    assert seen == shards.intact  # every intact sample trained on, not one damaged one
    damaged_shards = sum(1 for reason in shards.reasons.values() if reason)
    assert problems >= damaged_shards  # each damaged shard reported (and counted) at least once
    if workers == 0:  # same process: the warnings are here to read, one naming each damaged shard
        for name, reason in shards.reasons.items():
            if reason:
                assert f"skipping bad data in {name}" in caplog.text, name
        assert "image_crc32" in caplog.text
    assert nothing_extracted(shards.dir)
