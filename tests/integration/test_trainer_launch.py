"""`python -m streamcap.trainer.launch` (what compose runs): a SIGTERM is a clean stop, exit 0 and no
traceback, also while the ranks wait for data; a run that reaches --max-steps exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streamcap.demo.synthetic import add_part, demo_samples, demo_tokenizer
from tests.support import timing

ROOT = Path(__file__).resolve().parents[2]
ENV = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def launch(redis_url: str, keys, tmp_path: Path, log: Path, *extra: str) -> subprocess.Popen:
    demo_tokenizer(demo_samples(1, 0, 200, image_size=8)).save(tmp_path / "vocab.txt")
    args = [
        "--redis-url",
        redis_url,
        "--namespace",
        keys.namespace,
        "--shard-dir",
        str(tmp_path / "shards"),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--tokenizer",
        str(tmp_path / "vocab.txt"),
        "--preset",
        "tiny",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--shuffle-buffer",
        "8",
        "--fresh-wait-ms",
        "300",
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--histogram-every",
        "0",
        "--loader-workers",
        "1",
        "--run-id",
        "r1",
        *extra,
    ]
    cmd = [sys.executable, "-m", "streamcap.trainer.launch", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=os.environ | ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = timing.Deadline(timeout)
    while not deadline.passed():
        if text in log.read_text():
            return
        assert proc.poll() is None, log.read_text()[-4000:]
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in the log after {deadline.describe()}:\n" + log.read_text()[-4000:])


def test_sigterm_while_the_ranks_wait_for_data_exits_0_without_a_traceback(redis_url, keys, tmp_path):
    (tmp_path / "shards").mkdir()
    log = tmp_path / "launch.log"
    proc = launch(redis_url, keys, tmp_path, log)
    try:
        wait_for_text(log, "waiting for", proc)  # both ranks are up and no shard exists
        proc.send_signal(signal.SIGTERM)
        rc = timing.wait(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "Traceback" not in text and "SignalException" not in text, text[-4000:]
    assert "torchrun exited 0" in text


def test_a_run_that_reaches_max_steps_exits_0(redis_url, r, keys, tmp_path):
    shard_dir = tmp_path / "shards"
    for part in range(2):
        add_part(r, keys, shard_dir, "demo", part, demo_samples(1, part * 1000, 16, image_size=40))
    log = tmp_path / "launch.log"
    proc = launch(redis_url, keys, tmp_path, log, "--max-steps", "3")
    try:
        rc = timing.wait(proc, 180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()[-4000:]
    assert (tmp_path / "ck" / "r1" / "step-00000003.pt").exists()
