"""Per-step reporting: metrics (JSONL + W&B), console lines, heartbeats, histograms, sample captions.

Metrics written every `--log-every` steps (averaged over ranks; rates summed over ranks):
    loss, loss/ce, loss/eos, grad_norm, lr, lr/encoder, aug_level, samples_per_s, data_wait_pct,
    fresh_ratio, fresh_samples, replay_samples, fresh_wait_s, bad_samples,
    nonfinite_steps (total skipped), nonfinite_in_a_row, oom_steps, oom_in_a_row,
    gpu/memory_allocated_gb, gpu/max_memory_allocated_gb, gpu/utilization_pct (CUDA only),
    downloader/<rate> (each *_per_s field of live downloader heartbeats, summed), downloader/live
A step skipped for a non-finite loss or gradient norm is always written, with `skipped: 1`, the
non-finite values as they were ("nan", "inf" in metrics.jsonl) and the sample keys of every
rank's batch (`skipped_keys`, with `skip_cause`: metrics.jsonl only); so is a step skipped for
running out of GPU memory.
Parameter and gradient histograms every `--histogram-every` steps and a few greedy captions
with their images every `--sample-every` steps (rank 0).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import torch

from streamcap.common.progress import Progress
from streamcap.formats.heartbeats import TRAINER_TRAINING, TRAINER_WAITING_FOR_DATA, TrainerHeartbeat
from streamcap.model.decoding import greedy_decode
from streamcap.trainer import distributed
from streamcap.trainer.batch_accounting import BatchAccounting
from streamcap.trainer.redis_status import RedisStatus

log = logging.getLogger("streamcap.trainer")

SAMPLE_IMAGES = 4
# How often rank 0 asks why no shard comes while it starves: the answer lists the shard dir (a
# paid LIST on a bucket) and changes only when someone acts.
WHY_WAITING_EVERY_S = 15.0


class StepReporter:
    def __init__(self, state: Any, tracker: BatchAccounting, redis_status: RedisStatus) -> None:
        self.state, self.tracker, self.redis_status = state, tracker, redis_status
        self.last: dict[str, float] = {}
        self._said_waiting = ""  # the wait's reason last logged, its numbers left out
        self._waiting_reason, self._next_why = "", 0.0
        cfg = state.cfg
        self.progress = (
            Progress("train", unit="steps", total=cfg.max_steps, start=state.step, every=cfg.progress_every)
            if state.info.is_main
            else None
        )

    def after_step(self, terms: dict[str, Any], aug_level: float) -> None:
        state, cfg = self.state, self.state.cfg
        step = state.step
        if step % cfg.log_every == 0 or step == 1 or terms["skipped"]:  # every rank agrees on skipped
            self._log(step, terms, aug_level)
        if state.info.is_main and cfg.histogram_every and step % cfg.histogram_every == 0:
            state.sink.histograms(step, state.model)
        if state.info.is_main and cfg.sample_every and step % cfg.sample_every == 0:
            state.sink.samples(step, *caption_samples(state, terms["last_batch"]))
        if self.redis_status.due():
            self._heartbeat(step, aug_level)
        if self.progress is not None:
            self.progress.update(step, note=self._progress_note())

    def _progress_note(self) -> str:
        """The numbers of the latest logged step (every --log-every steps)."""
        if not self.last:
            return ""
        last = self.last
        return (
            f"loss {last['loss']:.4f}, {last['samples_per_s']:.0f} samples/s, data wait {last['data_wait_pct']:.0f} %"
        )

    def _log(self, step: int, terms: dict[str, Any], aug_level: float) -> None:
        state, info = self.state, self.state.info
        names = ("loss", "loss/ce", "loss/eos", "grad_norm")
        window = self.tracker.window("log")
        counted = ("samples_per_s", "fresh", "replay", "fresh_wait_s", "bad_samples", "data_wait_pct")
        values = distributed.mean_over_ranks(info, [float(terms[n]) for n in names] + [window[n] for n in counted])
        metrics = dict(zip(names, values[: len(names)]))
        rank_mean = dict(zip(counted, values[len(names) :]))
        world = info.world_size
        seen = rank_mean["fresh"] + rank_mean["replay"]
        metrics |= {
            "lr": terms["lr"],
            "lr/encoder": terms["lr/encoder"],
            "aug_level": aug_level,
            "aug_level_workers": self.tracker.aug_level_seen,
            "samples_per_s": rank_mean["samples_per_s"] * world,
            "data_wait_pct": rank_mean["data_wait_pct"],
            "fresh_ratio": rank_mean["fresh"] / seen if seen else 0.0,
            "fresh_samples": rank_mean["fresh"] * world,
            "replay_samples": rank_mean["replay"] * world,
            "fresh_wait_s": rank_mean["fresh_wait_s"],
            "bad_samples": rank_mean["bad_samples"] * world,
        }
        metrics |= state.nonfinite.fields("nonfinite") | state.oom.fields("oom")
        extra = {}
        if terms["skipped"]:
            metrics["skipped"] = 1
            extra["skipped_keys"] = [k for keys in distributed.gather(info, terms["keys"]) for k in keys]
            extra["skip_cause"] = terms["skipped"]
        self.last = metrics
        if not info.is_main:
            return
        metrics |= _gpu_metrics(info.device)
        metrics |= {f"downloader/{k}": v for k, v in self.redis_status.downloader_rates().items()}
        state.sink.log(step, metrics, extra)
        log.info(
            "step %d/%d loss %.4f (ce %.4f, eos %.4f) lr %.2e | %.0f samples/s, data wait %.0f%%, fresh %.0f%% | aug %.2f"
            + (f" | SKIPPED: {terms['skipped']}" if terms["skipped"] else ""),
            step,
            state.cfg.max_steps,
            metrics["loss"],
            metrics["loss/ce"],
            metrics["loss/eos"],
            metrics["lr"],
            metrics["samples_per_s"],
            metrics["data_wait_pct"],
            100 * metrics["fresh_ratio"],
            aug_level,
        )

    def waiting(self) -> None:
        """Called while the loop waits for data: keep the heartbeat going, saying so."""
        if self.redis_status.due():
            self._heartbeat(self.state.step, float(self.last.get("aug_level", 0.0)), starving=True)
        if self.progress is not None:
            self.progress.update(self.state.step, note="waiting for data")

    def _heartbeat(self, step: int, aug_level: float, starving: bool = False) -> None:
        state, totals = self.state, self.tracker.totals
        window = self.tracker.window("heartbeat")
        reason = ""
        if starving:  # the wait in progress is not in the window yet
            window["data_wait_pct"] = 100.0
            reason = self._why_waiting()
        else:
            self._next_why = 0.0  # the next wait asks afresh
        self.redis_status.beat(
            TrainerHeartbeat(
                state=TRAINER_WAITING_FOR_DATA if starving else TRAINER_TRAINING,
                error="",
                waiting_reason=reason,
                run=state.cfg.run,
                rank=state.info.rank,
                world_size=state.info.world_size,
                step=step,
                max_steps=state.cfg.max_steps,
                samples_per_s=round(window["samples_per_s"], 2),
                data_wait_pct=round(window["data_wait_pct"], 1),
                fresh=int(totals["fresh"]),
                replay=int(totals["replay"]),
                fresh_ratio=round(window["fresh_ratio"], 3),
                fresh_wait_s=round(totals["fresh_wait_s"], 1),
                fresh_shards_pending=-1,  # counted by rank 0 (RedisStatus.beat)
                bad_samples=int(totals["bad_samples"]),
                loss=round(float(self.last.get("loss", float("nan"))), 5),
                lr=float(self.last.get("lr", 0.0)),
                aug_level=round(aug_level, 4),
                nonfinite_steps=state.nonfinite.total,
                nonfinite_in_a_row=state.nonfinite.in_a_row,
                last_nonfinite_step=state.nonfinite.last_bad_step,
                oom_steps=state.oom.total,
                oom_in_a_row=state.oom.in_a_row,
                checkpoints_freed_bytes=state.freed_bytes,
            )
        )

    def _why_waiting(self) -> str:
        """What keeps shards away ("" while they are on their way), logged when it changes. Only
        rank 0 asks, at most every WHY_WAITING_EVERY_S: every rank waits for the same reason, and
        `streamcap status` shows the reasons of all live ranks together."""
        if not self.state.info.is_main:
            return ""
        now = time.monotonic()
        if now < self._next_why:
            return self._waiting_reason
        self._next_why = now + WHY_WAITING_EVERY_S
        reason = self._waiting_reason = self.redis_status.why_waiting(self.state.cfg.shard_dir)
        gist = re.sub(r"\d+", "N", reason)
        if reason and gist != self._said_waiting:
            log.warning("waiting for data: %s", reason)
        self._said_waiting = gist
        return reason

    def failed(self, line: str) -> None:
        """This rank's data is unusable: its heartbeat says so now, before the ranks meet (a rank
        waiting for its first shard reads it there; `streamcap status` shows it)."""
        self._heartbeat(self.state.step, float(self.last.get("aug_level", 0.0)))
        self.redis_status.fail(line)

    def close(self) -> None:
        """A last heartbeat, so `streamcap status` shows where the rank stopped."""
        self._heartbeat(self.state.step, float(self.last.get("aug_level", 0.0)))
        if self.progress is not None:
            self.progress.close()


def _gpu_metrics(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    out = {
        "gpu/memory_allocated_gb": torch.cuda.memory_allocated(device) / 2**30,
        "gpu/max_memory_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
    }
    try:
        out["gpu/utilization_pct"] = float(torch.cuda.utilization(device))
    except Exception:  # no NVML on this machine: memory only
        pass
    return out


def caption_samples(state: Any, batch: Any, count: int = SAMPLE_IMAGES) -> tuple[torch.Tensor, list[str], list[str]]:
    """Greedy captions of the first images of a batch, with their reference captions."""
    images = batch.images[:count]
    ids = greedy_decode(state.model, state.normalize(images), max_len=state.model.cfg.max_len - 1)
    return images, [state.tokenizer.decode(x) for x in ids], batch.captions[:count]
