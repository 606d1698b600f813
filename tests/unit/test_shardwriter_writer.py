"""PartWriter without Redis: roll-over, names, stats file, redelivery, temp files and the sweeper."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streamcap.formats.records import PartRecord, PartStats
from streamcap.formats.shards import iter_samples, sample_key, shard_name, stats_name
from streamcap.shardwriter import tempfiles
from streamcap.shardwriter.writer import PartWriter
from tests.support.images import jpeg_bytes
from tests.support.parts import write_rows

PART = PartRecord(source="Pop Set", part=3, start=30, end=50)


def read_keys(path):
    problems = []
    keys = [s.key for s in iter_samples(path, on_problem=lambda w, why: problems.append(why))]
    assert problems == []
    return keys


def write_part(shard_dir, part=PART, **kw):
    kw.setdefault("max_samples", 5)
    kw.setdefault("max_bytes", 1 << 20)
    with PartWriter(shard_dir, part, owner="test", **kw) as w:
        write_rows(w, part)
        return w.finish(bytes_downloaded=42)


def test_rolls_over_by_sample_count(tmp_path):
    stats = write_part(tmp_path, max_samples=5)
    # rows 30..49: 35 and 42 and 49 fail (multiples of 7) -> 17 samples -> 5 + 5 + 5 + 2
    assert [s.samples for s in stats.shards] == [5, 5, 5, 2]
    assert stats.samples == 17 and len(stats.failures) == 3
    keys = [k for s in stats.shards for k in read_keys(tmp_path / s.name)]
    assert keys == [sample_key("Pop Set", r) for r in range(30, 50) if r % 7]


def test_rolls_over_by_bytes_and_never_exceeds_the_limit(tmp_path):
    image = jpeg_bytes(64, 64, seed=1)
    per_sample = 3 * 512 + len(image) + 1024  # headers + image + small txt/json, padded
    limit = 3 * per_sample + 1024
    part = PartRecord("s", 0, 0, 12)
    with PartWriter(tmp_path, part, max_samples=1000, max_bytes=limit, owner="t") as w:
        for row in range(12):
            w.add(row=row, image=image, image_ext="jpg", caption="c", meta={})
        stats = w.finish()
    assert len(stats.shards) > 1
    assert all(s.bytes <= limit for s in stats.shards)
    assert all(s.bytes == (tmp_path / s.name).stat().st_size for s in stats.shards)
    assert sum(s.samples for s in stats.shards) == 12


def test_names_are_deterministic_and_stats_file_sits_next_to_shards(tmp_path):
    stats = write_part(tmp_path)
    assert [s.name for s in stats.shards] == [shard_name("Pop Set", 3, seq) for seq in range(4)]
    saved = json.loads((tmp_path / stats_name("Pop Set", 3)).read_text())
    assert PartStats.from_json(saved) == stats
    assert saved["failures_by_reason"] == {"timeout": 3}
    assert [f["row"] for f in saved["failures"]] == [35, 42, 49]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [s.name for s in stats.shards] + [stats_name("Pop Set", 3)]
    )


def test_sample_json_carries_the_row_and_source(tmp_path):
    stats = write_part(tmp_path)
    sample = next(iter_samples(tmp_path / stats.shards[0].name))
    assert sample.meta["row"] == 30 and sample.meta["source"] == "Pop Set"
    assert sample.caption == sample.meta["caption"] == "caption 30"
    assert sample.meta["url"] == "http://127.0.0.1/30.jpg"


def test_rows_in_any_order_but_each_once_and_inside_the_part(tmp_path):
    with PartWriter(tmp_path, PART, max_samples=100, max_bytes=1 << 20, owner="t") as w:
        w.add(row=40, image=jpeg_bytes(24, 24), image_ext="jpg", caption="c", meta={})
        w.add(row=31, image=jpeg_bytes(24, 24), image_ext="webp", caption="c", meta={})
        with pytest.raises(ValueError, match="already"):
            w.fail(40, "u", "timeout")
        with pytest.raises(ValueError, match="outside"):
            w.add(row=50, image=jpeg_bytes(24, 24), image_ext="jpg", caption="c", meta={})
        with pytest.raises(ValueError, match="unknown failure reason"):
            w.fail(32, "u", "bad luck")
        with pytest.raises(ValueError, match="image_ext"):
            w.add(row=33, image=jpeg_bytes(24, 24), image_ext="png", caption="c", meta={})
        stats = w.finish()
    assert (stats.shards[0].first_row, stats.shards[0].last_row) == (31, 40)


def test_redelivery_overwrites_and_drops_higher_sequence_leftovers(tmp_path):
    first = write_part(tmp_path, max_samples=3)
    assert len(first.shards) == 6
    second = write_part(tmp_path, max_samples=10)
    assert len(second.shards) == 2
    tars = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert tars == [s.name for s in second.shards]
    keys = [k for name in tars for k in read_keys(tmp_path / name)]
    assert len(keys) == len(set(keys)) == 17


def test_exception_aborts_and_leaves_no_temp_file(tmp_path):
    with pytest.raises(RuntimeError):
        with PartWriter(tmp_path, PART, max_samples=2, max_bytes=1 << 20, owner="t") as w:
            for row in range(30, 36):
                w.add(row=row, image=jpeg_bytes(24, 24), image_ext="jpg", caption="c", meta={})
            assert tempfiles.temp_files(tmp_path)
            raise RuntimeError("download loop broke")
    assert list(tmp_path.iterdir()) == []


def test_temp_files_are_hidden_and_name_their_owner(tmp_path):
    with PartWriter(tmp_path, PART, max_samples=10, max_bytes=1 << 20, owner="t") as w:
        w.add(row=30, image=jpeg_bytes(24, 24), image_ext="jpg", caption="c", meta={})
        [temp] = tempfiles.temp_files(tmp_path)
        owner, final = tempfiles.parse_temp_name(temp.name)
        assert temp.name.startswith(".") and final == shard_name("Pop Set", 3, 0)
        assert owner.pid == os.getpid() and owner.alive() is True
        assert tempfiles.sweep(tmp_path, stale_s=0) == []  # a live writer's file stays
        w.abort()


def test_sweeper_removes_files_of_dead_writers_only(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tempfiles.TempOwner(tempfiles.TempOwner.me().host, int(child.stdout), "12345")
    reused_pid = tempfiles.TempOwner(tempfiles.TempOwner.me().host, os.getpid(), "1")  # same pid, other start
    foreign = tempfiles.TempOwner("other-host", 1, "5")
    paths = {
        name: tempfiles.temp_path(tmp_path, "x-000001-0000.tar", owner)
        for name, owner in [
            ("dead", dead),
            ("reused", reused_pid),
            ("foreign", foreign),
            ("me", tempfiles.TempOwner.me()),
        ]
    }
    for p in paths.values():
        p.write_bytes(b"partial")
    assert set(tempfiles.sweep(tmp_path, stale_s=3600)) == {paths["dead"], paths["reused"]}
    os.utime(paths["foreign"], (1, 1))  # untouched for decades: its writer is long gone
    assert tempfiles.sweep(tmp_path, stale_s=3600) == [paths["foreign"]]
    assert [p.name for p in tmp_path.iterdir()] == [paths["me"].name]


def test_empty_part_writes_only_its_stats(tmp_path):
    part = PartRecord("s", 0, 0, 2)
    with PartWriter(tmp_path, part, max_samples=5, max_bytes=1 << 20, owner="t") as w:
        w.fail(0, "", "invalid_url")
        w.fail(1, "ftp://x", "invalid_url")
        stats = w.finish()
    assert stats.shards == [] and stats.samples == 0
    assert [p.name for p in tmp_path.iterdir()] == [stats_name("s", 0)]


def test_write_atomic_from_many_threads_never_tears_or_collides(tmp_path):
    import json
    from concurrent.futures import ThreadPoolExecutor

    from streamcap.shardwriter import tempfiles

    target = tmp_path / "source.json"

    def write(i: int) -> None:
        tempfiles.write_json_atomic(target, {"writer": i, "pad": "x" * 10_000})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(64)))
    assert json.loads(target.read_text())["writer"] in range(64)
    assert tempfiles.temp_files(tmp_path) == []


def test_webdataset_reads_the_shards_as_written(tmp_path):
    """The writer does not use webdataset (it would import torch into the downloader), so its
    output is checked against webdataset's own reader: same samples, keys and bytes."""
    import webdataset  # imports torch: only here, not at collection

    stats = write_part(tmp_path, max_samples=5)
    urls = [str(tmp_path / s.name) for s in stats.shards]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False))
    expected = [r for r in range(30, 50) if r % 7]
    assert [s["__key__"] for s in samples] == [sample_key("Pop Set", r) for r in expected]
    assert [s["txt"].decode() for s in samples] == [f"caption {r}" for r in expected]
    assert [s["jpg"] for s in samples] == [jpeg_bytes(24, 24, seed=r) for r in expected]
    assert [json.loads(s["json"])["url"] for s in samples] == [f"http://127.0.0.1/{r}.jpg" for r in expected]
