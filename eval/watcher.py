"""`streamcap eval watch`: evaluate every checkpoint the trainer publishes, keep the best.

    watcher = Watcher(cfg, r, evalset, device)
    watcher.run()          # until SIGTERM, or until nothing is waiting with --exit-when-empty

Delivery: the `checkpoints` stream is read as the `evaluators` group, so each checkpoint goes to
one evaluator. The entry stays pending until its results are written (files, then one Redis
script that appends to `evals`, updates `evals:best` and acknowledges it), so a crash at
any point leaves the checkpoint to be evaluated again. While evaluating, the watcher re-claims
its own entry every few seconds (XCLAIM JUSTID), so its idle time stays near zero; only an
evaluator that stopped doing that for --reclaim-after-s loses the entry to another, which
takes it over with `bus.claim_stale`. A checkpoint delivered MAX_DELIVERIES times without
succeeding is recorded as failed instead of crashing evaluators forever.

Best: the highest --metric among results that may be best (`eval.outputs.may_be_best`): a
checkpoint whose captions are more than half empty (MAX_EMPTY_SHARE_FOR_BEST) is recorded but
never becomes `evals:best` / best.pt, whatever it scores.

Heartbeat (`hb:evaluator:<id>`, refreshed while idle and during an evaluation): an
`EvaluatorHeartbeat` (streamcap.formats.heartbeats): the state (idle | loading | captioning |
scoring | writing), the checkpoint being evaluated and the progress, the checkpoints finished,
the latest scores, and the best so far.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import redis

from streamcap import bus
from streamcap.common.logs import first_line, instance_id
from streamcap.eval.config import EvalSettings
from streamcap.eval.datasets import EvalSet, EvalSetError
from streamcap.eval.evaluate import evaluate_checkpoint
from streamcap.eval.outputs import MAX_EMPTY_SHARE_FOR_BEST, EvalResult, keep_best, may_be_best
from streamcap.eval.wandb_log import WandbLogger
from streamcap.formats.heartbeats import EvaluatorHeartbeat
from streamcap.formats.records import CheckpointRecord

log = logging.getLogger(__name__)

MAX_DELIVERIES = 3
REFRESH_EVERY_S = 5.0


class Watcher:
    def __init__(
        self, cfg: EvalSettings, r: redis.Redis, evalset: EvalSet, device: Any, consumer: str | None = None
    ) -> None:
        self.cfg, self.r, self.evalset, self.device = cfg, r, evalset, device
        self.keys = bus.Keys(cfg.namespace)
        self.consumer = consumer or instance_id()
        self.stop = False
        self.evaluated = 0
        self.latest: dict[str, Any] = {}
        self.wandb = WandbLogger(cfg)
        self._beat = EvaluatorHeartbeat(
            state="idle",
            checkpoint="",
            step=None,
            run="",
            progress="",
            evaluated=0,
            latest={},
            metric=cfg.metric,
            best_value=None,
            best_step=None,
            best_checkpoint="",
            dataset=evalset.name,
            device=str(device),
        )
        self._last_refresh = 0.0

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        bus.wait_for_redis(self.r, what="Redis")
        bus.ensure_group(self.r, self.keys.checkpoints, bus.GROUP_EVALUATORS)
        log.info(
            "watching %s as %s/%s; set %s (%d images), best by %s",
            self.keys.checkpoints,
            bus.GROUP_EVALUATORS,
            self.consumer,
            self.evalset.name,
            len(self.evalset),
            self.cfg.metric,
        )
        try:
            while not self.stop:
                try:
                    entry = self._next_entry()
                    if entry is not None:
                        self._process(*entry)
                    elif self.cfg.exit_when_empty:
                        break
                except bus.REDIS_DOWN as e:
                    # The entry in hand (if any) stays pending: it is evaluated again once Redis is back.
                    bus.wait_out_outage(self.r, e, what="watching checkpoints", stop=lambda: self.stop)
        finally:
            self.wandb.close()
            try:
                self.r.delete(self.keys.heartbeat(bus.ROLE_EVALUATOR, self.consumer))
            except bus.REDIS_DOWN:
                pass  # it expires on its own
        log.info("evaluator %s stopped after %d checkpoint(s)", self.consumer, self.evaluated)
        return 0

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: Any) -> None:
            log.info("signal %d: finishing the current checkpoint, then stopping", signum)
            self.stop = True

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _next_entry(self) -> tuple[str, dict[str, str]] | None:
        """A stale entry of a dead evaluator first, else a new one (blocking up to BLOCK_MS)."""
        self._set_state("idle")
        stale = bus.claim_stale(
            self.r, self.keys.checkpoints, bus.GROUP_EVALUATORS, self.consumer, int(self.cfg.reclaim_after_s * 1000)
        )
        if stale:
            log.info("took over checkpoint entry %s from a stopped evaluator", stale[0][0])
            return stale[0]
        reply = self.r.xreadgroup(
            bus.GROUP_EVALUATORS,
            self.consumer,
            {self.keys.checkpoints: ">"},
            count=1,
            block=None if self.cfg.exit_when_empty else bus.BLOCK_MS,
        )
        if not reply:
            return None
        _, entries = reply[0]
        return entries[0] if entries else None

    # --- one checkpoint -----------------------------------------------------------------------

    def _process(self, entry_id: str, fields: dict[str, str]) -> None:
        self._last_refresh = 0.0  # the first progress report of each checkpoint is published at once
        if self._already_recorded(entry_id):  # crashed after committing, before it could ack
            self.r.xack(self.keys.checkpoints, bus.GROUP_EVALUATORS, entry_id)
            return
        try:
            record = CheckpointRecord.from_message(bus.decode(fields))
        except (bus.MessageError, KeyError, TypeError, ValueError) as e:
            self._commit(
                EvalResult(
                    checkpoint="",
                    step=0,
                    run="",
                    status="failed",
                    error=f"bad message: {e}",
                    entry=entry_id,
                    evaluator=self.consumer,
                    created=time.time(),
                )
            )
            return
        deliveries = bus.delivery_count(self.r, self.keys.checkpoints, bus.GROUP_EVALUATORS, entry_id)
        if deliveries > MAX_DELIVERIES:
            self._fail(record, entry_id, f"gave up after {deliveries - 1} evaluations that did not finish")
            return
        self._beat = dataclasses.replace(self._beat, checkpoint=record.path, step=record.step, run=record.run)
        try:
            result = evaluate_checkpoint(
                self.cfg,
                Path(record.path),
                self.evalset,
                self.device,
                step=record.step,
                run=record.run,
                entry=entry_id,
                evaluator=self.consumer,
                on_stage=lambda stage, done, total: self._progress(entry_id, stage, done, total),
            )
        except (EvalSetError, ValueError, OSError) as e:  # CheckpointError is a ValueError
            self._fail(record, entry_id, first_line(e))
            return
        if self._commit(result):
            self.wandb.log(result)

    def _fail(self, record: CheckpointRecord, entry_id: str, reason: str) -> None:
        log.error("cannot evaluate %s: %s", record.path, reason)
        self._commit(
            EvalResult(
                checkpoint=record.path,
                step=record.step,
                run=record.run,
                status="failed",
                error=reason,
                entry=entry_id,
                evaluator=self.consumer,
                created=time.time(),
                metric=self.cfg.metric,
            )
        )

    def _progress(self, entry_id: str, stage: str, done: int, total: int) -> None:
        self._beat = dataclasses.replace(self._beat, state=stage, progress=f"{done}/{total}")
        now = time.monotonic()
        # Refresh well within --reclaim-after-s, so a live evaluation is never taken over.
        if now - self._last_refresh >= min(REFRESH_EVERY_S, self.cfg.reclaim_after_s / 4):
            self._last_refresh = now
            # Re-claiming our own entry resets its idle time: nobody takes over a live evaluation.
            self.r.xclaim(self.keys.checkpoints, bus.GROUP_EVALUATORS, self.consumer, 0, [entry_id], justid=True)
            self._heartbeat()

    def _already_recorded(self, entry_id: str) -> bool:
        for _, fields in self.r.xrevrange(self.keys.evals, count=1000):
            try:
                if bus.decode(fields).get("entry") == entry_id:
                    return True
            except bus.MessageError:
                continue
        return False

    def _commit(self, result: EvalResult) -> bool:
        """Append to `evals`, maybe replace `evals:best`, ack: one atomic script. False if the
        entry was taken over by another evaluator meanwhile (its result is then the one kept)."""
        value = repr(float(result.value)) if may_be_best(result) else ""  # '' : recorded, never best
        if result.status == "ok" and result.value is not None and not value:
            log.warning(
                "%s step %d: %.0f%% of its captions are empty (over %.0f%%): recorded, never kept as best",
                result.run,
                result.step,
                100 * result.empty_share,
                100 * MAX_EMPTY_SHARE_FOR_BEST,
            )
        best = [x for pair in best_fields(result).items() for x in pair] if value else []
        outcome = self.r.eval(
            _COMMIT_SCRIPT,
            3,
            self.keys.checkpoints,
            self.keys.evals,
            self.keys.evals_best,
            bus.GROUP_EVALUATORS,
            self.consumer,
            result.entry,
            bus.encode(result.to_json())["json"],
            result.metric,
            value,
            *best,
        )
        if outcome == -1:
            log.warning("entry %s was taken over by another evaluator; dropping this result", result.entry)
            return False
        self.evaluated += 1
        if result.status == "ok":
            self.latest = {"step": result.step, "run": result.run, **result.scores}
        if outcome == 1:
            self._keep_best_file(result)
        return True

    def _keep_best_file(self, result: EvalResult) -> None:
        try:
            path = keep_best(self.cfg.out_dir, result)
        except OSError as e:  # e.g. the trainer already deleted the file: Redis still says which
            log.warning("new best %s, but cannot keep a copy of %s: %s", result.metric, result.checkpoint, e)
        else:
            log.info(
                "new best %s %.4f: %s (step %d) -> %s",
                result.metric,
                result.value,
                result.checkpoint,
                result.step,
                path,
            )

    # --- heartbeat ------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state == "idle":
            self._beat = dataclasses.replace(self._beat, checkpoint="", step=None, run="", progress="")
        self._beat = dataclasses.replace(self._beat, state=state)
        self._heartbeat()

    def _heartbeat(self) -> None:
        best = self.r.hgetall(self.keys.evals_best)
        self._beat = dataclasses.replace(
            self._beat,
            evaluated=self.evaluated,
            latest=self.latest,
            best_value=float(best["value"]) if best.get("value") else None,
            best_step=int(best["step"]) if best.get("step") else None,
            best_checkpoint=best.get("checkpoint", ""),
        )
        bus.write_heartbeat(self.r, self.keys, self.consumer, self._beat)


# KEYS: checkpoints, evals, evals:best. ARGV: group, consumer, entry id ('' when not watched),
# result JSON, metric, value ('' for a failure), then the best hash's field/value pairs.
# Returns -1 when the entry is no longer this consumer's, 1 when the result became the best, else 0.
_COMMIT_SCRIPT = """
local entry = ARGV[3]
if entry ~= '' then
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if #p == 0 or p[1][2] ~= ARGV[2] then return -1 end
end
redis.call('XADD', KEYS[2], '*', 'json', ARGV[4])
local became = 0
if ARGV[6] ~= '' then
  local metric = redis.call('HGET', KEYS[3], 'metric')
  local value = redis.call('HGET', KEYS[3], 'value')
  if (not metric) or metric ~= ARGV[5] or tonumber(ARGV[6]) > tonumber(value) then
    redis.call('DEL', KEYS[3])
    redis.call('HSET', KEYS[3], unpack(ARGV, 7))
    became = 1
  end
end
if entry ~= '' then redis.call('XACK', KEYS[1], ARGV[1], entry) end
return became
"""


def best_fields(result: EvalResult) -> dict[str, str]:
    """The `evals:best` hash of a result: flat strings, scores as JSON."""
    return {
        "metric": result.metric,
        "value": repr(float(result.value)),
        "checkpoint": result.checkpoint,
        "step": str(result.step),
        "run": result.run,
        "entry": result.entry,
        "report": result.report,
        "scores": json.dumps(result.scores, sort_keys=True),
        "created": repr(result.created),
    }
