"""The whole pipeline through the CLI: local HTTP -> downloader -> shards -> trainer -> evaluator.

`streamcap demo` runs every service as its own process against an embedded Redis, exactly as
compose does; here at a reduced size, and it must still learn: the held-out CIDEr beats the
always-the-most-common-caption baseline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import timing

LAST_LINE = re.compile(r"^demo: CIDEr (\d+\.\d+) \(baseline (\d+\.\d+)\), BLEU-4 (\d+\.\d+), report (\S+)$")


def demo(workdir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "streamcap", "demo", "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timing.scaled(timeout),
    )


@pytest.mark.timeout(900)
def test_demo_learns_and_a_second_run_reuses_the_workdir(tmp_path):
    out = demo(tmp_path, "--rows", "600", "--steps", "160", "--eval-images", "30", "--checkpoints", "2", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    match = LAST_LINE.match(out.stdout.strip().splitlines()[-1])
    assert match, out.stdout[-2000:]
    cider, baseline, bleu4, report = float(match[1]), float(match[2]), float(match[3]), Path(match[4])
    assert cider > baseline and bleu4 > 0
    assert report.is_file() and "CIDEr" in report.read_text()
    results = [json.loads(line) for line in (tmp_path / "evals" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in results) == [80, 160]  # every published checkpoint evaluated once

    verify = subprocess.run(
        [sys.executable, "-m", "streamcap", "shards", "verify", "--shard-dir", str(tmp_path / "shards"), "--json"],
        capture_output=True,
        text=True,
        timeout=timing.scaled(120),
    )
    assert verify.returncode == 0, verify.stdout[-2000:]

    again = demo(tmp_path, "--rows", "300", "--steps", "20", "--eval-images", "30", "--checkpoints", "1", timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert LAST_LINE.match(again.stdout.strip().splitlines()[-1])
    results = [json.loads(line) for line in (tmp_path / "evals" / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in results] == [20]  # run state was reset, the eval set reused


@pytest.mark.timeout(600)
def test_demo_on_a_local_s3_server_shares_no_shard_folder(tmp_path):
    """`streamcap demo --s3` (issue 22): the shards reach the trainer only through the bucket."""
    out = demo(
        tmp_path, "--s3", "--rows", "300", "--steps", "20", "--eval-images", "10", "--checkpoints", "1", timeout=400
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "bucket: s3://demo/shards on a SeaweedFS S3 server at http://127.0.0.1:" in out.stdout
    assert LAST_LINE.match(out.stdout.strip().splitlines()[-1]), out.stdout[-2000:]
    results = [json.loads(line) for line in (tmp_path / "evals" / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in results] == [20]
    assert not (tmp_path / "shards").exists()  # no shard folder: downloader and trainer share the bucket
    assert not [p for p in (tmp_path / "s3" / "spool").rglob("*") if p.is_file()]  # uploaded, then removed
    assert list((tmp_path / "s3" / "shard-cache").glob("*.tar"))  # the trainer read through its cache
    assert "botocore" not in (tmp_path / "logs" / "downloader.log").read_text()  # its INFO chatter is kept out
