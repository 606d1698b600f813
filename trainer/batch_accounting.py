"""What one rank has consumed: data counters, the shards it finished, its loader workers' states.

    tracker = BatchAccounting(ledger, run_dir / f"reads-rank{rank}.jsonl", totals=saved_totals)
    tracker.consume(batch, step, waited_s)   # for every batch the loop trains on
    tracker.totals                           # samples, fresh, replay, fresh_wait_s, bad_samples
    tracker.window("log")                    # the same since the last call with that name, plus rates

A resumed rank first cuts its reads log back to the checkpoint (`cut_reads_log`). Consuming a
batch hands the ledger the shards whose last sample it carries (recorded in Redis
at the next checkpoint), appends them to the rank's reads log, and keeps the producing worker's
state for the next checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from streamcap.common.files import keep_jsonl_steps
from streamcap.trainer.dataset import Batch
from streamcap.trainer.shardqueue import FinishedShard, ReadLedger

COUNTERS = ("samples", "fresh", "replay", "fresh_wait_s", "bad_samples")
WINDOWS = ("log", "heartbeat")


class BatchAccounting:
    def __init__(self, ledger: ReadLedger, reads_log: Path | None, totals: dict[str, float] | None = None) -> None:
        self.ledger = ledger
        self.totals: dict[str, float] = {name: 0.0 for name in COUNTERS} | dict(totals or {})
        self.worker_states: dict[int, dict[str, Any]] = {}
        self.aug_level_seen = 0.0
        self._reads = open(reads_log, "a", encoding="utf-8") if reads_log else None
        now = time.perf_counter()
        self._windows: dict[str, dict[str, float]] = {name: _empty_window(now) for name in WINDOWS}

    def consume(self, batch: Batch, step: int, waited_s: float) -> None:
        stats = batch.stats
        delta = {
            "samples": float(batch.tokens.shape[0]),
            "fresh": stats["fresh"],
            "replay": stats["replay"],
            "fresh_wait_s": stats["fresh_wait_s"],
            "bad_samples": stats["problems"],
            "data_wait_s": waited_s,
        }
        for name in COUNTERS:
            self.totals[name] += delta[name]
        for window in self._windows.values():
            for name, value in delta.items():
                window[name] += value
        self.aug_level_seen = float(stats["aug_level"])
        self.worker_states[batch.worker] = batch.state
        finished = batch.finished_shards()
        if finished:
            self.ledger.finished(finished)
            self._log_reads(step, batch.worker, finished)
        if self.ledger.behind:
            self.ledger.retry()  # what an outage kept a checkpoint from recording

    def window(self, name: str) -> dict[str, float]:
        """Counters since the last call with this `name` (one per reader: logs, heartbeats),
        with the elapsed time, samples/s, data-wait % and fresh ratio."""
        now = time.perf_counter()
        out = self._windows.get(name) or _empty_window(now)
        self._windows[name] = _empty_window(now)
        elapsed = max(now - out.pop("start"), 1e-9)
        out["elapsed_s"] = elapsed
        out["samples_per_s"] = out["samples"] / elapsed
        out["data_wait_pct"] = 100.0 * min(out["data_wait_s"] / elapsed, 1.0)
        seen = out["fresh"] + out["replay"]
        out["fresh_ratio"] = out["fresh"] / seen if seen else 0.0
        return out

    def _log_reads(self, step: int, worker: int, finished: list[FinishedShard]) -> None:
        if self._reads is None:
            return
        for shard in finished:
            self._reads.write(
                json.dumps(
                    {
                        "step": step,
                        "shard": shard.claim.name,
                        "fresh": shard.claim.fresh,
                        "samples": shard.samples,
                        "worker": worker,
                        "missing": shard.missing,
                    }
                )
                + "\n"
            )
        self._reads.flush()

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
            self._reads = None


def cut_reads_log(path: Path, step: int) -> None:
    """Keep the reads a resume's checkpoint of `step` covers: those logged at steps below it (a
    batch consumed for step k+1 is logged with step k). The ones after are read again and logged
    again, so the log counts each read once, as `shards:reads:<run>` does."""
    keep_jsonl_steps(path, lambda logged: logged < step)


def _empty_window(now: float) -> dict[str, float]:
    return {name: 0.0 for name in COUNTERS} | {"data_wait_s": 0.0, "start": now}
