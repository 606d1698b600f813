"""Fault injection for the trainer's tests: a chosen step gets a NaN loss or a CUDA out-of-memory error.

    STREAMCAP_FAULT=nan_loss STREAMCAP_FAULT_STEPS=3 streamcap train ...        # step 3's loss is NaN
    STREAMCAP_FAULT=cuda_oom STREAMCAP_FAULT_STEPS=2-4 streamcap train ...      # steps 2 to 4 run out of memory
    STREAMCAP_FAULT=nan_loss,cuda_oom STREAMCAP_FAULT_STEPS=5 STREAMCAP_FAULT_RANK=1 ...   # on rank 1 only

Points (the same variable as the shard writer's crash points, `shardwriter.faults`):

- `nan_loss`  the loss of the step is multiplied by NaN before backward, so its gradients are NaN
              too, as a real divergence makes them
- `cuda_oom`  the forward pass raises `torch.cuda.OutOfMemoryError`, as a batch too big for the
              GPU does (also on CPU, so the handling is tested without a GPU)

`STREAMCAP_FAULT_STEPS` lists steps (the step being computed, counting from 1) and ranges
(`2-4`), comma-separated; every step when unset. A fault fires once per step of a process: a
step retried after a skipped batch runs clean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

FAULT_ENV = "STREAMCAP_FAULT"
STEPS_ENV = "STREAMCAP_FAULT_STEPS"
RANK_ENV = "STREAMCAP_FAULT_RANK"
NAN_LOSS, CUDA_OOM = "nan_loss", "cuda_oom"


def _steps(text: str) -> set[int] | None:
    if not text.strip():
        return None
    steps: set[int] = set()
    for item in text.split(","):
        lo, _, hi = item.strip().partition("-")
        steps.update(range(int(lo), int(hi or lo) + 1))
    return steps


@dataclass
class TrainerFaults:
    points: frozenset[str] = frozenset()
    steps: set[int] | None = None  # None: every step
    rank: int | None = None
    fired: set[tuple[str, int]] = field(default_factory=set)

    @classmethod
    def from_env(cls) -> TrainerFaults:
        points = frozenset(p.strip().partition(":")[0] for p in os.environ.get(FAULT_ENV, "").split(","))
        points &= {NAN_LOSS, CUDA_OOM}
        if not points:  # the production case
            return cls()
        rank = os.environ.get(RANK_ENV, "").strip()
        return cls(points, _steps(os.environ.get(STEPS_ENV, "")), int(rank) if rank else None)

    def fire(self, point: str, step: int, rank: int) -> bool:
        """Whether `point` should fail now, for the step being computed; once per (point, step)."""
        if point not in self.points or (self.rank is not None and rank != self.rank):
            return False
        if (self.steps is not None and step not in self.steps) or (point, step) in self.fired:
            return False
        self.fired.add((point, step))
        return True
