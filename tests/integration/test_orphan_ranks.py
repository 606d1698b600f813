"""No orphan training ranks (docs/testing.md, "Launchers that die"): when the `torchrun` launcher is
SIGKILLed (the OOM killer, a lost SSH session), every rank and every loader worker exits
instead of training on, writing checkpoints and consuming fresh shards."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from streamcap import bus
from tests.integration.test_trainer_runs import make_shards, start, train_args, vocab
from tests.support.fleet import heartbeat_records
from tests.support.pipeline import wait_until


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (every thread's list)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkilled_torchrun_takes_its_ranks_and_workers_along(redis_url, keys, r, tmp_path):
    make_shards(r, keys, tmp_path / "shards", [8, 8, 8, 8])
    vocab(tmp_path / "vocab.txt")
    log = tmp_path / "train.log"
    # No step limit: once the shards are read, both ranks wait for fresh ones, as in production.
    proc = start(train_args(redis_url, keys, tmp_path, run_id="orphans", loader_workers=1), log, torchrun=2)
    ranks: list[int] = []
    workers: list[int] = []

    def training() -> bool:
        beats = heartbeat_records(r, keys, bus.ROLE_TRAINER)
        return len(beats) == 2 and all(b.step >= 1 for b in beats)

    try:
        wait_until(training, timeout=150, what="both ranks training", proc=proc, log=log)
        ranks = children(proc.pid)
        workers = [w for rank in ranks for w in children(rank)]
        assert len(ranks) == 2 and len(workers) >= 2, (ranks, workers, log.read_text()[-3000:])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_until(lambda: not any(alive(p) for p in ranks + workers), timeout=60, what="ranks and workers gone")
    finally:
        for pid in [proc.pid, *ranks, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
