"""A training run's files, and saving/restoring everything needed to continue it exactly.

    <checkpoint_dir>/<run>/
        config.json              resolved trainer settings, model config, world size (at start)
        step-00001000.pt         the model: self-contained (`streamcap.model.checkpoint`), what the evaluator loads
        step-00001000.train.pt   training state: optimizer, schedule, step, augmentation level, and
                                 per rank the RNG states, loader-worker states, data counters and a
                                 digest of its parameters (equal on every rank, or DDP is broken)
        latest.json              {"step", "model", "state"}: written last, so it names a complete pair
        metrics.jsonl, loss.png  metrics (trainer.metrics_sink)
        reads-rank<R>.jsonl      every shard rank R finished: {"step", "shard", "fresh", "samples", "worker"}

Each checkpoint is announced on the `checkpoints` stream (`CheckpointRecord`) for the evaluator;
an announcement Redis was down for is retried (`Announcer`) until it lands, oldest first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

from streamcap import bus
from streamcap.common.files import atomic_write_text, atomic_writer
from streamcap.common.logs import first_line
from streamcap.formats.records import CheckpointRecord

log = logging.getLogger(__name__)

STATE_VERSION = 1
ANNOUNCE_RETRY_S = 15.0
LATEST = "latest.json"
CONFIG = "config.json"


def model_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step-{step:08d}.pt"


def state_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step-{step:08d}.train.pt"


def write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def save_config(run_dir: Path, config: dict[str, Any]) -> Path:
    path = run_dir / CONFIG
    write_json_atomic(path, config)
    return path


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        torch.save({"version": STATE_VERSION, **state}, f)


def mark_latest(run_dir: Path, step: int) -> None:
    write_json_atomic(
        run_dir / LATEST,
        {
            "step": step,
            "model": model_path(run_dir, step).name,
            "state": state_path(run_dir, step).name,
            "saved": time.time(),
        },
    )


def find_latest(run_dir: Path) -> dict[str, Any] | None:
    """The latest complete checkpoint of a run, or None when it has none."""
    try:
        latest = json.loads((run_dir / LATEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not (run_dir / latest["model"]).is_file() or not (run_dir / latest["state"]).is_file():
        return None
    return latest


def load_train_state(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written above
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training state version {state.get('version')!r}, this trainer reads {STATE_VERSION}")
    return state


def publish(r: redis.Redis, keys: bus.Keys, path: Path, step: int, run: str) -> str:
    """Announce a checkpoint on the `checkpoints` stream; returns the entry id."""
    record = CheckpointRecord(path=str(path.resolve()), step=step, run=run, created=time.time())
    return r.xadd(keys.checkpoints, bus.encode(record.to_message()))


class Announcer:
    """Checkpoints to announce, in order; one Redis was down for is kept and retried.

    announcer.add(path, step)        # at each checkpoint: announces it (and any still owed)
    announcer.retry()                # from the loop: at most every ANNOUNCE_RETRY_S while owed
    """

    def __init__(self, r: redis.Redis, keys: bus.Keys, run: str) -> None:
        self.r, self.keys, self.run = r, keys, run
        self.owed: list[tuple[Path, int]] = []
        self._retry_at = 0.0

    def add(self, path: Path, step: int) -> None:
        self.owed.append((path, step))
        self.retry(force=True)

    def retry(self, force: bool = False) -> None:
        if not self.owed or (not force and time.monotonic() < self._retry_at):
            return
        while self.owed:
            path, step = self.owed[0]
            try:
                publish(self.r, self.keys, path, step, self.run)
            except redis.RedisError as e:  # down, or refusing writes: the evaluator must still hear of it
                self._retry_at = time.monotonic() + ANNOUNCE_RETRY_S
                log.warning("could not announce checkpoint %s (%s); will retry", path.name, first_line(e))
                return
            self.owed.pop(0)
            if not force or self.owed:
                log.info("announced checkpoint %s after Redis came back", path.name)


# --- randomness ----------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes: equal on every DDP rank when all is well.

    Buffers are left out: BatchNorm running statistics are each rank's own between the
    broadcasts DDP makes at every forward."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
