"""Shard verification on bad tars: every problem named, nothing raised, nothing extracted."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from streamcap.common.settings import ConfigError
from streamcap.formats.records import PartRecord
from streamcap.shardwriter.config import ShardWriterSettings, parse_size
from streamcap.shardwriter.verify import check_shard, expand
from streamcap.shardwriter.writer import PartWriter
from tests.support.images import jpeg_bytes
from tests.support.parts import write_rows


def good_shard(tmp_path):
    part = PartRecord("src", 0, 0, 6)
    with PartWriter(tmp_path, part, max_samples=100, max_bytes=1 << 20, owner="t") as w:
        write_rows(w, part)
        stats = w.finish()
    return tmp_path / stats.shards[0].name


def tar_of(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample(key, image=None, caption=b"a cat", meta=None):
    meta_bytes = meta if meta is not None else json.dumps({"url": "u", "row": int(key[-12:]), "source": "src"}).encode()
    return [(f"{key}.jpg", image or jpeg_bytes(24, 24)), (f"{key}.txt", caption), (f"{key}.json", meta_bytes)]


def test_a_written_shard_verifies(tmp_path):
    check = check_shard(good_shard(tmp_path))
    assert check.ok and check.samples == 5 and len(check.keys) == 5


def test_truncated_tar(tmp_path):
    path = good_shard(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    check = check_shard(path)
    assert not check.ok and any("truncated" in p for p in check.problems)


def test_member_escaping_with_dotdot(tmp_path):
    path = tar_of(tmp_path / "evil.tar", [("../evil.txt", b"pwned")] + sample("src_000000000001"))
    check = check_shard(path)
    assert check.samples == 1 and any("'../evil.txt' escapes" in p for p in check.problems)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_sample_missing_its_caption(tmp_path):
    members = [m for m in sample("src_000000000001") if not m[0].endswith(".txt")] + sample("src_000000000002")
    check = check_shard(tar_of(tmp_path / "s.tar", members))
    assert check.samples == 1 and check.problems == ["s.tar/src_000000000001: sample lacks txt"]


def test_garbage_json(tmp_path):
    check = check_shard(tar_of(tmp_path / "s.tar", sample("src_000000000001", meta=b"{not json")))
    assert check.samples == 0 and "unreadable caption or json" in check.problems[0]


def test_image_that_does_not_decode(tmp_path):
    cut = jpeg_bytes(64, 64)[:300]
    check = check_shard(tar_of(tmp_path / "s.tar", sample("src_000000000001", image=cut)))
    assert "image does not decode" in check.problems[0]
    html = check_shard(tar_of(tmp_path / "h.tar", sample("src_000000000001", image=b"<html>nope</html>")))
    assert "image does not decode" in html.problems[0]


def test_key_that_disagrees_with_its_json_and_repeated_keys(tmp_path):
    meta = json.dumps({"row": 7, "source": "src"}).encode()
    members = (
        sample("src_000000000001", meta=meta)
        + sample("src_000000000002")
        + sample("src_000000000002")[:1]
        + sample("src_000000000003")
        + sample("src_000000000002")
    )
    check = check_shard(tar_of(tmp_path / "s.tar", members))
    assert any("json says source 'src' row 7" in p for p in check.problems)
    assert any("appears twice" in p for p in check.problems)


def test_expand_directories_and_missing_paths(tmp_path):
    shard = good_shard(tmp_path)
    found, missing = expand([tmp_path, shard, tmp_path / "nope.tar"])
    assert [(store.local_dir, name) for store, name in found] == [(tmp_path, shard.name)] * 2
    assert missing == [f"{tmp_path / 'nope.tar'}: no such file or directory"]


@pytest.mark.parametrize(
    "text, size", [("1000", 1000), ("500M", 500_000_000), ("2GiB", 2 * 2**30), ("1.5k", 1500), (7, 7)]
)
def test_sizes_read_as_people_write_them(text, size):
    assert parse_size(text) == size


def test_bad_settings_fail_with_one_line_naming_the_setting():
    with pytest.raises(ConfigError, match="--max-disk-bytes / STREAMCAP_MAX_DISK_BYTES: expected a byte size"):
        ShardWriterSettings(max_disk_bytes="lots")
    with pytest.raises(ConfigError, match="--min-reads / STREAMCAP_MIN_READS"):
        ShardWriterSettings(min_reads=0)
    cfg = ShardWriterSettings(max_disk_bytes="1G", shard_dir="x")
    assert cfg.max_disk_bytes == 10**9 and str(cfg.quarantine_path) == "x/quarantine"
    assert ShardWriterSettings(shard_dir="s3://b/p").quarantine_path is None  # the bucket's quarantine/ prefix


def test_flipped_bytes_are_caught_by_the_checksum_or_the_tar_headers(tmp_path):
    path = good_shard(tmp_path)
    data = path.read_bytes()
    for offset, expected in ((100, "bad checksum"), (512 + 200, "do not match their image_crc32")):
        flipped = bytearray(data)
        for i in range(offset, offset + 16):
            flipped[i] ^= 0xFF
        target = tmp_path / f"flipped-{offset}.tar"
        target.write_bytes(bytes(flipped))
        check = check_shard(target)
        assert any(expected in p for p in check.problems), check.problems
