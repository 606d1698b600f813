"""`python -m streamcap.trainer.launch` (what compose runs): a SIGTERM is a clean stop, exit 0 and no
traceback, also while the ranks wait for data; whatever kills the launcher (SIGTERM, SIGKILL,
Ctrl-C), the ranks checkpoint the step they reached; a run that reaches --max-steps exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamcap.demo.synthetic import add_part, demo_samples, demo_tokenizer
from streamcap.trainer.metrics_sink import read_metrics
from tests.support import timing
from tests.support.fleet import children
from tests.support.pipeline import wait_until

ROOT = Path(__file__).resolve().parents[2]
ENV = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def launch(
    redis_url: str, keys, tmp_path: Path, log: Path, *extra: str, run_id: str = "r1", ranks: int = 2
) -> subprocess.Popen:
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
        run_id,
        *extra,
    ]
    cmd = [sys.executable, "-m", "streamcap.trainer.launch", "--standalone", "--nproc-per-node", str(ranks), *args]
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


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# SIGKILL is the one torchrun used to answer by tearing the ranks' process groups down.
KILLS = [signal.SIGTERM, signal.SIGKILL, signal.SIGINT] * 3 + [signal.SIGKILL]


def kill_launcher(redis_url: str, keys, tmp_path: Path, run_id: str, sig: signal.Signals) -> tuple:
    """Kill a launcher two steps into its run; (step reached, step checkpointed, bad words, exit code)."""
    run_dir, log = tmp_path / "ck" / run_id, tmp_path / f"launch-{run_id}.log"
    metrics = run_dir / "metrics.jsonl"
    proc = launch(redis_url, keys, tmp_path, log, run_id=run_id, ranks=1)
    try:
        wait_until(lambda: len(read_metrics(metrics)) >= 2, 180, "two steps", proc, log)
        tree = descendants(proc.pid)  # torchrun, the rank, its loader worker
        proc.send_signal(sig)
        wait_until(lambda: proc.poll() is not None and all(gone(pid) for pid in tree), 120, "every process to end")
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    latest = run_dir / "latest.json"
    saved = json.loads(latest.read_text())["step"] if latest.exists() else 0
    bad = [word for word in ("Traceback", "Exception ignored", "killed by signal") if word in text]
    return read_metrics(metrics)[-1]["step"], saved, bad, proc.returncode, text


@pytest.mark.slow
def test_whatever_kills_the_launcher_the_ranks_checkpoint_the_step_reached(redis_url, r, keys, tmp_path):
    shard_dir = tmp_path / "shards"
    for part in range(3):
        add_part(r, keys, shard_dir, "demo", part, demo_samples(1, part * 1000, 8, image_size=40))
    outcomes = []
    for i, sig in enumerate(KILLS):
        reached, saved, bad, code, text = kill_launcher(redis_url, keys, tmp_path, f"k{i}", sig)
        outcomes.append((sig.name, reached, saved, bad, code))
        assert saved == reached and not bad, f"{outcomes[-1]}\n{text[-4000:]}"
    assert [code for name, *_, code in outcomes if name != "SIGKILL"] == [0] * 6, outcomes
