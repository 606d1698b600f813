"""`streamcap enqueue` against a real redis-server: parts once, whatever happens."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamcap import bus
from streamcap.downloader.config import EnqueueSettings
from streamcap.downloader.enqueue import describe_source, enqueue
from streamcap.formats.records import PartRecord
from tests.support import timing

STREAMCAP = [sys.executable, "-m", "streamcap"]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "pop.parquet"
    pq.write_table(
        pa.table(
            {
                "url": [f"http://x/{i}.jpg" for i in range(2500)],
                "cogvlm_caption": [f"cog {i}" for i in range(2500)],
                "llava_caption": [f"llava {i}" for i in range(2500)],
            }
        ),
        path,
        row_group_size=700,
    )
    return path


class Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys, redis_url, keys):
    """`streamcap ARGS` run in this process (the same typer app and error handling as the command)."""
    from streamcap.cli import app
    from streamcap.entrypoint import run_app

    def run(*args: str, shard_dir) -> Ran:
        capsys.readouterr()
        rc = run_app(
            app, [*args, "--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", str(shard_dir)]
        )
        out = capsys.readouterr()
        return Ran(rc, out.out, out.err)

    return run


def parts(r, keys) -> list[PartRecord]:
    return [PartRecord.from_message(bus.decode(fields)) for _, fields in r.xrange(keys.parts)]


def test_enqueue_then_enqueue_again_adds_nothing(r, keys, cli, source, tmp_path):
    shard_dir = tmp_path / "shards"
    first = cli("enqueue", str(source), "--part-size", "1000", shard_dir=shard_dir)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("enqueued source pop: 2500 rows in 3 parts of 1000")
    assert "caption column 'llava_caption' (picked automatically" in first.stdout
    assert "also kept raw: cogvlm_caption" in first.stdout
    assert [(p.part, p.start, p.end) for p in parts(r, keys)] == [(0, 0, 1000), (1, 1000, 2000), (2, 2000, 2500)]
    definition = json.loads(r.hget(keys.sources, "pop"))
    assert definition["caption_col"] == "llava_caption" and definition["extra_caption_cols"] == ["cogvlm_caption"]
    assert json.loads((shard_dir / "sources" / "pop.json").read_text())["rows"] == 2500
    assert bus.group_info(r, keys.parts, bus.GROUP_DOWNLOADERS) is not None

    again = cli("enqueue", str(source), "--part-size", "1000", shard_dir=shard_dir)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "source pop is already enqueued (2500 rows in 3 parts): nothing added"
    assert len(parts(r, keys)) == 3


def test_concurrent_enqueues_of_one_source_add_each_part_once(r, keys, redis_url, source, tmp_path):
    shard_dir = tmp_path / "shards"
    procs = [
        subprocess.Popen(
            [
                *STREAMCAP,
                "enqueue",
                str(source),
                "--part-size",
                "100",
                "--redis-url",
                redis_url,
                "--namespace",
                keys.namespace,
                "--shard-dir",
                str(shard_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=timing.scaled(60)) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    added = [out for out, _ in outs if out.startswith("enqueued source pop: 2500 rows in 25 parts")]
    already = [out for out, _ in outs if out.startswith("source pop is already enqueued")]
    assert (len(added), len(already)) == (1, 3), outs
    assert [p.part for p in parts(r, keys)] == list(range(25))
    record, _ = describe_source(EnqueueSettings(part_size=100), str(source))
    assert enqueue(r, keys, shard_dir, record).added is False


def test_limit_name_and_explicit_columns(r, keys, cli, source, tmp_path):
    out = cli(
        "enqueue",
        str(source),
        "--limit",
        "250",
        "--part-size",
        "100",
        "--name",
        "Pop Sample",
        "--caption-col",
        "cogvlm_caption",
        shard_dir=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("enqueued source pop-sample: 250 rows in 3 parts of 100")
    assert [(p.source, p.start, p.end) for p in parts(r, keys)][-1] == ("pop-sample", 200, 250)


def test_a_missing_column_is_one_line_listing_the_columns(cli, source, tmp_path):
    out = cli("enqueue", str(source), "--url-col", "image_url", shard_dir=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"streamcap: error: {source} has no column 'image_url' (--url-col); "
        "its columns: url, cogvlm_caption, llava_caption"
    ]


def test_the_same_name_with_another_definition_is_refused(r, keys, cli, source, tmp_path):
    assert cli("enqueue", str(source), shard_dir=tmp_path).returncode == 0
    out = cli("enqueue", str(source), "--part-size", "10", shard_dir=tmp_path)
    assert out.returncode == 1
    assert "source pop is already enqueued with a different definition: part_size 1000 (now 10)" in out.stderr
    assert len(parts(r, keys)) == 3


def test_an_unreadable_source_is_one_line(cli, tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 but not really")
    out = cli("enqueue", str(bad), shard_dir=tmp_path)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "not a readable parquet file" in out.stderr and "Traceback" not in out.stderr
