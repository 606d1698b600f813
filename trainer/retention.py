"""Checkpoint retention: keep the newest `--keep-checkpoints` checkpoints and whatever the evaluator needs.

    protected = evaluator_needs(r, keys)               # paths; None when Redis cannot say
    freed, removed = prune(run_dir, keep=3, protected=protected | owed)

Kept, always: the newest N checkpoints (latest.json names the newest, what `--resume` loads),
the checkpoint `evals:best` names (the evaluator's best; best.pt is a hard link to it, but a copy
on another file system is not), and every checkpoint an evaluator is working on: entries of the
`checkpoints` stream delivered to the `evaluators` group and not yet acknowledged, and the
`checkpoint` field of live evaluator heartbeats. When Redis cannot be read nothing is deleted:
a checkpoint removed under a running evaluation would fail it. A checkpoint announced but not yet
taken by any evaluator is not protected: an evaluator more than N checkpoints behind records it
as missing and moves on, rather than letting the disk fill.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import redis

from streamcap import bus
from streamcap.common.logs import first_line

log = logging.getLogger("streamcap.trainer")

_MODEL = re.compile(r"step-(\d{8})\.pt")
PENDING_PAGE = 1000


def _resolved(path: str | Path) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):
        return str(path)


def evaluator_needs(r: redis.Redis, keys: bus.Keys) -> set[str] | None:
    """Resolved paths of checkpoints the evaluator marked best or is evaluating; None if Redis is down."""
    try:
        needed = set()
        best = r.hget(keys.evals_best, "checkpoint")
        if best:
            needed.add(best)
        try:
            pending = r.xpending_range(keys.checkpoints, bus.GROUP_EVALUATORS, "-", "+", PENDING_PAGE)
        except redis.ResponseError:  # no evaluator group yet: nothing is being evaluated
            pending = []
        for p in pending:
            for _, fields in r.xrange(keys.checkpoints, p["message_id"], p["message_id"]):
                try:
                    needed.add(str(bus.decode(fields)["path"]))
                except (bus.MessageError, KeyError):
                    continue
        for beat in bus.read_heartbeats(r, keys, bus.ROLE_EVALUATOR):
            if beat.record is None:  # another streamcap's evaluator: what it reads is unknown
                log.warning("checkpoint retention: evaluator %s: %s; deleting nothing", beat.id, beat.problem)
                return None
            if beat.record.checkpoint:
                needed.add(str(beat.record.checkpoint))
    except (*bus.REDIS_DOWN, redis.ResponseError) as e:
        log.warning("checkpoint retention: cannot read what the evaluator needs (%s); deleting nothing", first_line(e))
        return None
    return {_resolved(p) for p in needed}


def prune(run_dir: Path, keep: int, protected: set[str]) -> tuple[int, list[int]]:
    """Delete checkpoints (model + training state) older than the newest `keep`, except `protected`
    paths; returns (bytes freed, steps removed)."""
    steps = sorted(int(m.group(1)) for p in run_dir.glob("step-*.pt") if (m := _MODEL.fullmatch(p.name)))
    freed, removed = 0, []
    for step in steps[: max(len(steps) - keep, 0)]:
        model = run_dir / f"step-{step:08d}.pt"
        if _resolved(model) in protected:
            continue
        for path in (model, run_dir / f"step-{step:08d}.train.pt"):
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            freed += size
        removed.append(step)
    return freed, removed
