"""Steps that must not reach the weights, and runs that must stop rather than go on silently.

    guard = StepGuard(max_bad_steps=5, total=resumed_total)
    guard.record(step, "loss nan", keys)      # a skipped step: counted, logged with its batch's keys
    guard.record(step, None, [])              # a good step ends the streak
    guard.check()                             # RunFailed at 5 in a row
    bad = nonfinite_tensor(model, optimizer)  # before a checkpoint: None, or the first bad tensor's name

A step whose loss or gradient norm is not finite (any rank's: the ranks agree before stepping)
is skipped: no optimizer or schedule step, its gradients dropped. One such step is noise (a bad
batch, an overflow); several in a row mean the weights or the learning rate are broken, and
training on would only write garbage checkpoints for the evaluator, so the run stops with one
line naming the cause and a non-zero exit, leaving the last good checkpoint to resume from.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger("streamcap.trainer")

MAX_LOGGED_KEYS = 256  # a batch of a few hundred keys fits one line; more say "and N more"


class RunFailed(Exception):
    """The run cannot go on; the message is the one line that says why and what to do."""


class StepGuard:
    """Counts skipped steps; `check()` fails the run at `max_bad_steps` in a row."""

    def __init__(self, max_bad_steps: int, total: int = 0, what: str = "non-finite", advice: str = "") -> None:
        self.max_bad_steps, self.total, self.what, self.advice = max_bad_steps, total, what, advice
        self.in_a_row = 0
        self.last_bad_step = 0
        self.last_cause = ""

    def record(self, step: int, cause: str | None, keys: list[str]) -> None:
        """Count and log a skipped step (`cause` says why), or end a streak (`cause` None)."""
        if cause is None:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        self.last_bad_step, self.last_cause = step, cause
        shown = ", ".join(keys[:MAX_LOGGED_KEYS])
        more = f" and {len(keys) - MAX_LOGGED_KEYS} more" if len(keys) > MAX_LOGGED_KEYS else ""
        log.warning(
            "step %d skipped (%s; %d in a row, %d in this run): no optimizer step; batch: %s%s",
            step,
            cause,
            self.in_a_row,
            self.total,
            shown or "-",
            more,
        )

    def check(self) -> None:
        """RunFailed, with the one line to show, once the streak reaches `max_bad_steps`."""
        if self.in_a_row >= self.max_bad_steps:
            raise RunFailed(
                f"stopping: {self.in_a_row} {self.what} steps in a row "
                f"({self.last_cause} at step {self.last_bad_step}): {self.advice}"
            )

    def fields(self, prefix: str) -> dict[str, int]:
        """Counters for metrics and the heartbeat: <prefix>_steps (total), <prefix>_in_a_row."""
        return {f"{prefix}_steps": self.total, f"{prefix}_in_a_row": self.in_a_row}


def describe_nonfinite(loss: float, grad_norm: float) -> str:
    """'loss nan', 'grad norm inf', or both: what made a step non-finite."""
    parts = [
        f"loss {loss}" if not math.isfinite(loss) else "",
        f"grad norm {grad_norm}" if not math.isfinite(grad_norm) else "",
    ]
    return ", ".join(p for p in parts if p) or "another rank's loss or grad norm"


def nonfinite_tensor(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str | None:
    """The name of the first parameter, buffer or optimizer-state tensor holding NaN or inf, else None."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for p, slots in optimizer.state.items():
            for slot, value in slots.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                    and not bool(torch.isfinite(value).all())
                ):
                    return f"optimizer {slot} of {names.get(id(p), '?')}"
    return None
