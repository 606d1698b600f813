"""Long commands show progress: plain lines in a pipe (compose logs, CI), a rich bar on a terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamcap import bus
from tests.support import timing
from tests.support.http import ImageServer
from tests.support.pipeline import enqueue_rows, paced_rows, stock

STREAMCAP = [sys.executable, "-m", "streamcap"]
CONTROL = re.compile(r"[\r\x1b]")  # carriage returns and escape sequences: what fills a log with junk
ENQUEUE_LINE = re.compile(
    r"^enqueue: \d+/5000 rows \(\d+\.\d %\), [\d.]+ rows/s(, ETA \w+)?; \d+ duplicates(; took \w+)?$"
)
DOWNLOAD_LINE = re.compile(
    r"^download: \d+(/\d+)? rows( \(\d+\.\d %\))?, [\d.]+ rows/s(, ETA \w+)?; ok \d+, failed \d+, \d+ worker\(s\)$"
)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "big.parquet"
    n = 5000
    table = pa.table({"url": [f"http://x/{i}.jpg" for i in range(n)], "caption": [f"c {i}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=500)
    return path


def env_for(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return env | {"REDIS_URL": redis_url, "NO_ALBUMENTATIONS_UPDATE": "1"} | extra


def test_enqueue_in_a_pipe_writes_plain_progress_lines(redis_url, keys, source, tmp_path):
    out = subprocess.run(
        [*STREAMCAP, "enqueue", str(source), "--namespace", keys.namespace, "--shard-dir", str(tmp_path / "shards")],
        capture_output=True,
        text=True,
        env=env_for(redis_url, STREAMCAP_PROGRESS_EVERY="0.1"),
        timeout=timing.scaled(120),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("enqueued source big: 5000 rows")  # stdout stays the result
    lines = [line for line in out.stderr.splitlines() if line.startswith("enqueue:")]
    assert lines and all(ENQUEUE_LINE.match(line) for line in lines), out.stderr
    assert lines[-1].startswith("enqueue: 5000/5000 rows (100.0 %)") and "; took " in lines[-1]
    assert not CONTROL.search(out.stdout + out.stderr)


def test_enqueue_on_a_terminal_draws_a_rich_bar(redis_url, keys, source, tmp_path):
    master, slave = os.openpty()
    cmd = [*STREAMCAP, "enqueue", str(source), "--namespace", keys.namespace, "--shard-dir", str(tmp_path / "shards")]
    env = env_for(redis_url, TERM="xterm-256color", COLUMNS="120")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    try:
        while chunk := _read(master):
            seen += chunk
    finally:
        os.close(master)
    assert timing.wait(proc, timing.scaled(60)) == 0, seen.decode(errors="replace")[-2000:]
    text = seen.decode(errors="replace")
    assert "\x1b[" in text and "━" in text  # a drawn, coloured bar ...
    assert "5000/5000" in text and "rows/s" in text  # ... with the counts and the rate
    assert "enqueue: 5000/5000 rows (" not in text  # and not the plain lines meant for logs


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the command closed the terminal
        return b""


def test_download_in_a_pipe_writes_plain_progress_lines(r, redis_url, keys, tmp_path):
    shard_dir = tmp_path / "shards"
    with stock(ImageServer()) as server:
        # Slow images and one part at a time per worker: one worker alone would take 4 x 2 s, so
        # both work, and long enough for the parent's progress reads, whatever the CPU.
        enqueue_rows(r, keys, shard_dir, paced_rows(server, 40, delay_s=2.0), part_size=10)
        cmd = [*STREAMCAP, "download", "--namespace", keys.namespace, "--shard-dir", str(shard_dir)]
        cmd += ["--allow-private", "--exit-when-empty", "--processes", "2", "--image-workers", "1"]
        cmd += ["--parts-in-flight", "1"]
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env_for(redis_url, STREAMCAP_PROGRESS_EVERY="0.2"),
            timeout=timing.scaled(240),
        )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("download:")]
    assert lines and all(DOWNLOAD_LINE.match(line) for line in lines), out.stderr[-3000:]
    assert any(line.endswith("2 worker(s)") for line in lines)  # both --processes workers counted
    assert not CONTROL.search(out.stdout + out.stderr)
    assert int(r.hget(keys.stats, bus.STAT_ROWS)) == 40
