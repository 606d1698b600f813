"""Learning-rate schedule: linear warmup, then inverse-square-root decay (as the original).

    scale = warmup_inverse_sqrt(step, warmup_steps=1000)
    # 0.001 at step 1, 1.0 at step 1000, 0.5 at step 4000, 0.1 at step 100_000

    scheduler = make_scheduler(optimizer, warmup_steps=1000)   # LambdaLR: every group's lr * scale
    scheduler.step()                                           # after each optimizer step

The scale multiplies each optimizer group's own peak rate, so the encoder keeps its separate
learning rate. Steps count from 1 (the first optimizer step already learns a little).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_inverse_sqrt(step: int, warmup_steps: int) -> float:
    """min(step / warmup, sqrt(warmup / step)) for step >= 1; 1/sqrt(step) without warmup."""
    step = max(step, 1)
    if warmup_steps <= 0:
        return 1.0 / math.sqrt(step)
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


def _scale_for_scheduler_step(scheduler_step: int, warmup_steps: int) -> float:
    # LambdaLR's counter is 0 before the first optimizer step; that step uses step 1's rate.
    return warmup_inverse_sqrt(scheduler_step + 1, warmup_steps)


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """A LambdaLR (state_dict/load_state_dict for exact resume) applying the schedule."""
    return LambdaLR(optimizer, partial(_scale_for_scheduler_step, warmup_steps=warmup_steps))
