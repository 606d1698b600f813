"""W&B across a crash, read from the offline run files: a trainer SIGKILLed after its checkpoint
and resumed continues the same W&B run, and every step is in W&B's files exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamcap.trainer.checkpointing import load_train_state
from streamcap.trainer.wandb_files import history_steps, run_files
from tests.integration.test_trainer_runs import ROOT, finish, last_step, make_shards, train_args, vocab
from tests.support.fleet import children
from tests.support.pipeline import wait_until


def offline_env(tmp_path: Path) -> dict[str, str]:
    """W&B offline, its settings and caches in the test's folder: nothing phones home."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "OMP_NUM_THREADS": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamcap.trainer", *args],
        cwd=ROOT,
        env=os.environ | env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def committed(run_dir: Path) -> list[int]:
    """The steps W&B's files of the run hold so far."""
    return [step for path in run_dir.glob("wandb/offline-run-*/run-*.wandb") for step in history_steps(path)]


# W&B writes its file every x_transaction_log_flush_interval seconds (15 by default): a crash
# loses the steps since. Both ends of that are tried: W&B's file holding steps past the
# checkpoint (the resumed run computes them again; they must not be logged twice), and holding
# none of the checkpointed steps (they must still reach W&B, from metrics.jsonl).
@pytest.mark.parametrize(
    ("flush_interval", "killed_holds"),
    [("0.05", "steps past the checkpoint"), ("0", "no step of the checkpoint")],
)
def test_a_killed_and_resumed_run_logs_each_step_once_in_one_wandb_run(
    redis_url, keys, r, tmp_path, flush_interval, killed_holds
):
    make_shards(r, keys, tmp_path / "shards", [7, 9, 8])
    vocab(tmp_path / "vocab.txt")
    env = offline_env(tmp_path) | {"WANDB__TRANSACTION_LOG_FLUSH_INTERVAL": flush_interval}
    run_dir, first_log = tmp_path / "ck" / "wb", tmp_path / "first.log"
    args = dict(run_id="wb", checkpoint_every=5, loader_workers=1)
    proc = start(train_args(redis_url, keys, tmp_path, max_steps=100_000, **args), first_log, env)

    def checkpoint() -> int:
        latest = run_dir / "latest.json"
        return json.loads(latest.read_text())["step"] if latest.exists() else 0

    if flush_interval == "0":  # written only when a 32 KiB block fills: ~40 steps of this run
        wait_until(lambda: 0 < checkpoint() <= last_step(run_dir) - 4, 120, "steps past a checkpoint", proc, first_log)
    else:
        wait_until(lambda: 0 < checkpoint() < max(committed(run_dir), default=0), 120, "W&B past it", proc, first_log)
    helpers = children(proc.pid)  # the loader worker and the W&B process
    proc.send_signal(signal.SIGKILL)  # a crash: no checkpoint, no W&B finish
    proc.wait()
    wait_until(lambda: all(gone(pid) for pid in helpers), 60, "the killed trainer's helpers to end")
    at = checkpoint()
    wandb_id = load_train_state(run_dir / f"step-{at:08d}.train.pt")["wandb_id"]
    (killed,) = run_files(run_dir / "wandb", wandb_id)
    if flush_interval == "0":
        assert max(history_steps(killed), default=0) < at, killed_holds
    else:
        assert max(history_steps(killed)) > at, killed_holds

    final = at + 8
    log = tmp_path / "resumed.log"
    proc = start(train_args(redis_url, keys, tmp_path, max_steps=final, resume=True, **args), log, env)
    finish(proc, log, timeout=120)
    files = run_files(run_dir / "wandb", wandb_id)
    assert len(files) == 2 and files[0] == killed, files  # the resumed start continued the same run
    logged = [step for path in files for step in history_steps(path)]
    assert logged == list(range(1, final + 1)), logged  # each step once, in order, none missing
    assert f"id {wandb_id} (offline mode)" in log.read_text()
