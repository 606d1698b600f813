"""Reading shards safely: every kind of bad tar is reported, never raised or extracted."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from streamcap.formats.shards import iter_samples, sample_key, shard_name, stats_name


def add(tar: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data))


def sample_members(key: str, caption: str = "a cat") -> list[tuple[str, bytes]]:
    meta = {"url": "http://x/" + key, "caption": caption, "caption_raw": caption}
    return [
        (f"{key}.jpg", b"\xff\xd8fakejpeg"),
        (f"{key}.txt", caption.encode()),
        (f"{key}.json", json.dumps(meta).encode()),
    ]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            add(tar, name, data)
    return path


def read(path: Path):
    problems: list[tuple[str, str]] = []
    samples = list(iter_samples(path, on_problem=lambda w, why: problems.append((w, why))))
    return samples, problems


def test_keys_sort_in_row_order_and_have_no_dots():
    keys = [sample_key("RELAION.pop v2", row) for row in (0, 9, 10, 1_000_000)]
    assert keys == sorted(keys)
    assert all("." not in k for k in keys)
    assert keys[0] == "relaion-pop-v2_000000000000"


def test_names_are_deterministic():
    assert shard_name("relaion", 3, 1) == shard_name("relaion", 3, 1) == "relaion-000003-0001.tar"
    assert stats_name("relaion", 3) == "relaion-000003.stats.json"


def test_good_shard_reads_every_sample(tmp_path):
    path = write_tar(tmp_path / "s.tar", sample_members("a_000000000001") + sample_members("a_000000000002", "a dog"))
    samples, problems = read(path)
    assert problems == []
    assert [(s.key, s.caption, s.image_ext) for s in samples] == [
        ("a_000000000001", "a cat", "jpg"),
        ("a_000000000002", "a dog", "jpg"),
    ]


@pytest.mark.parametrize(
    "bad_name, reason",
    [
        ("../evil.txt", "escapes"),
        ("/etc/passwd.txt", "absolute path"),
        ("dir/x.txt", "directory separator"),
        ("x.exe", "not <key>"),
    ],
)
def test_unsafe_member_names_are_rejected(tmp_path, bad_name, reason):
    path = write_tar(tmp_path / "s.tar", [(bad_name, b"x")] + sample_members("a_000000000001"))
    samples, problems = read(path)
    assert [s.key for s in samples] == ["a_000000000001"]
    assert len(problems) == 1 and reason in problems[0][1]


def test_symlink_and_huge_declared_size_are_rejected(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("a_000000000001.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        for name, data in sample_members("a_000000000002"):
            add(tar, name, data)
    samples, problems = read(path)
    assert [s.key for s in samples] == ["a_000000000002"]
    assert "symlink" in problems[0][1]
    samples, problems = list(iter_samples(path, max_member_bytes=4)), None
    assert samples == []


def test_sample_missing_caption_and_garbage_json(tmp_path):
    members = [m for m in sample_members("a_000000000001") if not m[0].endswith(".txt")]
    members += [("a_000000000002.jpg", b"x"), ("a_000000000002.txt", b"c"), ("a_000000000002.json", b"{garbage")]
    members += sample_members("a_000000000003")
    samples, problems = read(write_tar(tmp_path / "s.tar", members))
    assert [s.key for s in samples] == ["a_000000000003"]
    assert [w for w, _ in problems] == ["s.tar/a_000000000001", "s.tar/a_000000000002"]
    assert "lacks txt" in problems[0][1] and "json" in problems[1][1]


def test_truncated_tar_reports_and_stops(tmp_path):
    path = write_tar(tmp_path / "s.tar", sample_members("a_000000000001") + sample_members("a_000000000002"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    samples, problems = read(path)
    assert len(samples) <= 1
    assert problems and "truncated" in problems[-1][1]


def test_missing_and_non_tar_files(tmp_path):
    assert read(tmp_path / "nope.tar")[1] == [("nope.tar", "shard file does not exist")]
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 10)
    samples, problems = read(tmp_path / "junk.tar")
    assert samples == [] and problems
