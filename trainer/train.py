"""The training run, in execution order: setup, data, model, optimizer, DDP, loop.

    streamcap train --redis-url redis://... --tokenizer vocab.txt --preset base --max-steps 100000
    torchrun --standalone --nproc-per-node 8 -m streamcap.trainer --tokenizer vocab.txt --preset base

One process per GPU under torchrun (nccl), or one CPU process (gloo under torchrun, none alone).
Each step: take `--grad-accum` batches (augmented at the level of this step) from the streaming loader,
forward under bf16 autocast on GPU, cross-entropy + EOS suppression, backward (gradients
all-reduced on the last micro-batch only), clip, Adam, schedule. Every `--checkpoint-every`
steps, at `--max-steps` and on SIGTERM: a checkpoint with the full training state, announced on
the `checkpoints` stream. `--resume` continues from the run's latest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from streamcap import bus
from streamcap.common.logs import first_line, setup_logging
from streamcap.common.settings import ConfigError, to_json_text
from streamcap.model.caption_model import CaptionModel, ModelConfig, format_parameter_counts
from streamcap.model.checkpoint import load_checkpoint, save_checkpoint
from streamcap.text.tokenizer import VocabError, WordPieceTokenizer
from streamcap.trainer import checkpointing as ckpt
from streamcap.trainer import distributed
from streamcap.trainer.augment import LevelSchedule
from streamcap.trainer.batch_accounting import BatchAccounting, cut_reads_log
from streamcap.trainer.config import TrainerSettings
from streamcap.trainer.dataset import NoUsableData, ShardStreamDataset, close_loader, make_loader, next_batch
from streamcap.trainer.faults import CUDA_OOM, NAN_LOSS, TrainerFaults
from streamcap.trainer.guards import RunFailed, StepGuard, describe_nonfinite, nonfinite_tensor
from streamcap.trainer.losses import caption_loss
from streamcap.trainer.metrics_sink import MetricsSink
from streamcap.trainer.redis_status import RedisStatus
from streamcap.trainer.retention import evaluator_needs, prune
from streamcap.trainer.samples import ImageNormalizer
from streamcap.trainer.schedule import make_scheduler
from streamcap.trainer.shardqueue import FinishedShard, ReadLedger
from streamcap.trainer.signals import StopRequested, StopSignal
from streamcap.trainer.step_report import StepReporter

log = logging.getLogger("streamcap.trainer")

# One out-of-memory step is a batch of unusually long captions or fragmentation; three in a row
# mean the settings do not fit the GPU, and skipping on would train on nothing.
MAX_OOM_STEPS = 3


class PeerFailed(Exception):
    """Another rank stopped the run (its heartbeat says why) while this one waited for data."""


@dataclass
class Run:
    """Everything the loop touches, built once by `_setup`."""

    cfg: TrainerSettings
    info: distributed.DistInfo
    redis_url: str  # resolved once at start (password included); the loader workers connect with it
    r: Any
    tokenizer: WordPieceTokenizer
    model: CaptionModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: int
    resumed: dict[str, Any] | None
    normalize: ImageNormalizer  # uint8 batch -> model input on the run's device
    wandb_id: str  # the W&B run this training continues (kept in the training state)
    ddp: torch.nn.Module | None = None
    sink: MetricsSink = field(default_factory=MetricsSink.disabled)
    announcer: ckpt.Announcer | None = None  # rank 0: checkpoints to announce on the stream
    nonfinite: StepGuard = field(default_factory=lambda: StepGuard(5))
    oom: StepGuard = field(default_factory=lambda: StepGuard(3))
    faults: TrainerFaults = field(default_factory=TrainerFaults.from_env)
    freed_bytes: int = 0  # rank 0: checkpoint bytes deleted by --keep-checkpoints since this process started
    while_waiting: Callable[[], None] = lambda: None  # heartbeats while no batch comes
    peer_failed: Callable[[], bool] = lambda: False  # another rank stopped the run while this one waits
    data_failed: Callable[[str], None] = lambda line: None  # say at once that this rank's data is unusable

    @property
    def rank_state(self) -> dict[str, Any]:
        ranks = (self.resumed or {}).get("ranks") or []
        return ranks[self.info.rank] if self.info.rank < len(ranks) else {}


def run(cfg: TrainerSettings) -> int:
    """Train until --max-steps or a stop signal; 0 when it ended cleanly."""
    redis_url = cfg.require_redis()
    tokenizer = _load_tokenizer(cfg.require_tokenizer())  # a bad vocab fails now, not after Redis is up
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device / STREAMCAP_TRAIN_DEVICE: expected a visible CUDA GPU for 'cuda', found none")
    info = distributed.setup(cfg.device)
    try:
        cfg = cfg.with_run(distributed.broadcast(info, cfg.run or time.strftime("run-%Y%m%d-%H%M%S")))
        setup_logging("trainer", cfg.log_level, instance=f"{cfg.run}-rank{info.rank}")
        r = bus.connect(redis_url, retries=2, keys=bus.Keys(cfg.namespace), who=f"trainer {cfg.run} rank {info.rank}")
        bus.wait_for_redis(r)
        state = _setup(cfg, info, redis_url, r, tokenizer)
        return _train(state)
    finally:
        distributed.teardown(info)


def _load_tokenizer(path) -> WordPieceTokenizer:
    try:
        return WordPieceTokenizer.from_file(path)
    except VocabError as e:
        raise ConfigError(f"--tokenizer / STREAMCAP_TOKENIZER: {e}") from None


# --- setup: resume point, model, optimizer ----------------------------------------------------


def _setup(
    cfg: TrainerSettings, info: distributed.DistInfo, redis_url: str, r: Any, tokenizer: WordPieceTokenizer
) -> Run:
    run_dir = cfg.run_dir
    latest = ckpt.find_latest(run_dir)
    if latest and not cfg.resume:
        raise ConfigError(
            f"--run-id / STREAMCAP_RUN_ID: run {cfg.run!r} already has checkpoints in {run_dir}; "
            "pass --resume to continue it, or choose another --run-id"
        )
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if latest:
        loaded = load_checkpoint(run_dir / latest["model"], map_location="cpu")
        _refuse_a_different_model(cfg, tokenizer, loaded)
        model, tokenizer = loaded.model, loaded.tokenizer
        resumed = ckpt.load_train_state(run_dir / latest["state"])
    else:
        if cfg.resume and info.is_main:
            log.info("run %s has no checkpoint yet; starting at step 0", cfg.run)
        overrides = {name: getattr(cfg, name) for name in ("image_size", "max_len") if getattr(cfg, name)}
        model_cfg = ModelConfig.from_preset(cfg.preset, tokenizer=tokenizer, pretrained=cfg.pretrained, **overrides)
        model, resumed = CaptionModel(model_cfg), None
    step = int(resumed["step"]) if resumed else 0
    model.set_encoder_trainable(step >= cfg.freeze_encoder_steps)
    model.to(info.device).train()
    cuda = info.device.type == "cuda"
    if cuda:  # convolutions in bf16 run fastest channels-last with autotuned kernels
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    optimizer = torch.optim.Adam(model.param_groups(cfg.lr, cfg.encoder_lr), lr=cfg.lr, fused=cuda)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps)
    state = Run(
        cfg=cfg,
        info=info,
        redis_url=redis_url,
        r=r,
        tokenizer=tokenizer,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        step=step,
        resumed=resumed,
        normalize=ImageNormalizer(info.device),
        wandb_id=_wandb_id(cfg, resumed),
        nonfinite=StepGuard(
            cfg.max_bad_steps,
            total=int((resumed or {}).get("nonfinite_steps", 0)),
            advice="lower --lr or check the data; resume from the last good checkpoint with --resume",
        ),
        oom=StepGuard(
            MAX_OOM_STEPS,
            what="out-of-memory",
            advice="lower --batch-size (raise --grad-accum to keep the effective batch), or use a smaller "
            "--preset or --image-size",
        ),
    )
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
    run_dir.mkdir(parents=True, exist_ok=True)  # every rank writes its reads log there
    if info.is_main:
        _announce(state)
    return state


def _wandb_id(cfg: TrainerSettings, resumed: dict[str, Any] | None) -> str:
    """The W&B run id: the checkpoint's for a resumed run (the run name for checkpoints older than
    the id in the state); a fresh one otherwise, so a run started again at step 0 under a reused
    --run-id never lands in the old W&B run, which would drop its steps as already logged."""
    if resumed:
        return str(resumed.get("wandb_id") or cfg.run)
    return f"{cfg.run}-{secrets.token_hex(4)}"


# What a model is made of; `pretrained` only chose the first weights, and the checkpoint's replace them.
_NOT_MODEL_DEFINING = {"pretrained"}


def _refuse_a_different_model(cfg: TrainerSettings, tokenizer: WordPieceTokenizer, loaded: Any) -> None:
    """A resume continues the checkpoint's model: settings that would make another model (a changed
    --preset, --tokenizer, --image-size or --max-len) are refused by name, never logged and saved
    in config.json as if they were in force."""
    overrides = {name: getattr(cfg, name) for name in ("image_size", "max_len") if getattr(cfg, name)}
    asked = ModelConfig.from_preset(cfg.preset, tokenizer=tokenizer, **overrides)
    have = loaded.model.cfg
    fields = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in _NOT_MODEL_DEFINING]
    changed = [
        f"{name} {getattr(have, name)} -> {getattr(asked, name)}"
        for name in fields
        if getattr(have, name) != getattr(asked, name)
    ]
    if tokenizer.vocab != loaded.tokenizer.vocab:
        changed.append(
            f"vocabulary ({loaded.tokenizer.vocab_size} tokens in the checkpoint, {tokenizer.vocab_size} in --tokenizer)"
        )
    if changed:
        was = loaded.extra.get("preset")
        raise ConfigError(
            f"--resume: run {cfg.run!r} is a {'--preset ' + was + ' ' if was else ''}model these settings would change "
            f"({'; '.join(changed)}); resume with the run's own --preset/--tokenizer/--image-size/--max-len, "
            "or start another --run-id"
        )


def _announce(state: Run) -> None:
    """Print the resolved config and parameter counts; save the config beside the checkpoints."""
    cfg, model = state.cfg, state.model
    resolved = {
        "trainer": json.loads(to_json_text(cfg)),
        "model": model.cfg.to_dict(),
        "world_size": state.info.world_size,
        "device": str(state.info.device),
    }
    ckpt.save_config(cfg.run_dir, resolved)
    log.info("config: %s", to_json_text(cfg))
    log.info("model %s (%s): %s", cfg.preset, model.cfg.backbone, format_parameter_counts(model.parameter_counts()))
    log.info(
        "run %s on %d rank(s), device %s, %s; %s",
        cfg.run,
        state.info.world_size,
        state.info.device,
        "resuming at step %d" % state.step if state.resumed else "starting at step 0",
        cfg.run_dir,
    )


def _wrap(state: Run) -> None:
    """(Re)build the DDP wrapper: DDP registers the parameters that require grad when built."""
    if not state.info.enabled:
        state.ddp = state.model
        return
    state.ddp = None
    gc.collect()  # the old wrapper's gradient hooks go with it
    ids = [state.info.device.index] if state.info.device.type == "cuda" else None
    state.ddp = DDP(state.model, device_ids=ids)


# --- data ------------------------------------------------------------------------------------


def _loader(state: Run) -> tuple[Any, BatchAccounting]:
    cfg, info = state.cfg, state.info
    saved = state.rank_state
    worker_states = saved.get("loader") if saved.get("loader_workers") == cfg.loader_workers else None
    if saved and worker_states is None:
        log.warning(
            "--loader-workers changed since the checkpoint: loader workers start their streams afresh "
            "(held shards are read again from their start; nothing acknowledged is re-read)"
        )
    ledger = ReadLedger(state.r, bus.Keys(cfg.namespace), cfg.run, info.rank)
    # Reads the checkpoint covers but Redis was down to record: record them before the workers
    # look at what they hold, so no finished shard is taken for an unfinished one.
    ledger.commit_saved(state.step, [FinishedShard.from_dict(d) for d in saved.get("unacknowledged", [])])
    levels = LevelSchedule(cfg.aug_ramp_steps, cfg.aug_max, cfg.grad_accum, start_step=state.step)
    dataset = ShardStreamDataset(
        cfg,
        state.model.cfg,  # a resumed run's, which may differ from a preset's
        state.tokenizer,
        levels,
        redis_url=state.redis_url,
        rank=info.rank,
        world_size=info.world_size,
        worker_states=worker_states,
        while_waiting=lambda: _waiting_in_process(state),
    )
    reads_log = cfg.run_dir / f"reads-rank{info.rank}.jsonl"
    if state.resumed:
        cut_reads_log(reads_log, state.step)
    tracker = BatchAccounting(ledger, reads_log, totals=saved.get("counters"))
    return make_loader(dataset, pin_memory=info.device.type == "cuda"), tracker


# --- the loop --------------------------------------------------------------------------------


def _train(state: Run) -> int:
    cfg, info = state.cfg, state.info
    redis_status = RedisStatus(state.r, bus.Keys(cfg.namespace), cfg.run, info.rank)
    redis_status.register()
    if info.is_main:
        state.sink = MetricsSink.open(
            run_dir=cfg.run_dir,
            run=cfg.run,
            mode=cfg.wandb_mode,
            project=cfg.wandb_project,
            name=cfg.wandb_name,
            config={"trainer": json.loads(to_json_text(cfg)), "model": state.model.cfg.to_dict()},
            wandb_id=state.wandb_id,
            resume_step=state.step if state.resumed else None,
        )
    loader, tracker = _loader(state)
    reporter = StepReporter(state, tracker, redis_status)
    state.while_waiting, state.data_failed = reporter.waiting, reporter.failed
    if info.world_size > 1:
        state.peer_failed = redis_status.peer_failed
    stop = StopSignal.install()
    _wrap(state)
    batches = iter(loader)
    if state.rank_state.get("rng"):  # last: building the model and the loader draw random numbers
        ckpt.set_rng_state(state.rank_state["rng"])
    finished = stopped = False
    failure = ""
    try:
        try:
            while state.step < cfg.max_steps:
                if state.model.encoder.trunk_frozen and state.step >= cfg.freeze_encoder_steps:
                    state.model.set_encoder_trainable(True)
                    _wrap(state)
                    log.info("step %d: image encoder unfrozen", state.step)
                terms = _optimizer_step(state, batches, tracker, stop)
                kind = terms["skip_kind"]
                state.nonfinite.record(state.step, terms["skipped"] if kind == "nonfinite" else None, terms["keys"])
                state.oom.record(state.step, terms["skipped"] if kind == "oom" else None, terms["keys"])
                reporter.after_step(terms, tracker.aug_level_seen)
                state.nonfinite.check()  # after the report: the step that ends the run is shown too
                state.oom.check()
                if state.announcer is not None:
                    state.announcer.retry()
                if state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps:
                    _checkpoint(state, tracker, tracker.aug_level_seen)
            finished = state.step >= cfg.max_steps
        except StopRequested as e:
            # Every rank raised it at the same meeting point (`_next_batch`), so all of them can join
            # the checkpoint's collectives; the batches fetched for the next step are not counted.
            log.info("stopped by %s at step %d", e, state.step)
            stopped = True
            if state.step > 0 and state.step % cfg.checkpoint_every:
                _checkpoint(state, tracker, tracker.aug_level_seen)
    except RunFailed as e:
        # Every rank raises it at the same step (the verdicts are agreed on), so none is left
        # waiting in a collective; no checkpoint: the weights are what is in doubt.
        failure = str(e)
        if info.is_main:
            log.error("%s", failure)
    finally:
        stop.uninstall()
        if state.announcer is not None:
            state.announcer.retry(force=True)  # a last try for what Redis was down to hear
        close_loader(batches)
        del batches
        reporter.close()
        tracker.close()
        state.sink.close()
        if finished:
            redis_status.finish()
        elif stopped:
            redis_status.leave()
        elif failure:
            redis_status.fail(failure)
    if failure:
        return 1
    if finished and info.is_main:
        log.info("done: %d steps, run %s, checkpoints in %s", state.step, cfg.run, cfg.run_dir)
    return 0


def _optimizer_step(state: Run, batches, tracker: BatchAccounting, stop: StopSignal) -> dict[str, Any]:
    """One optimizer step over --grad-accum micro-batches; returns the loss terms (tensors).

    A step is skipped (counted, nothing reaches the weights) when any rank's loss or gradient
    norm is not finite or any rank ran out of GPU memory; `skipped` says why, `skip_kind` which.
    """
    cfg, info = state.cfg, state.info
    sums: dict[str, Any] = {"loss": 0.0, "loss/ce": 0.0, "loss/eos": 0.0}
    keys: list[str] = []
    # The forward moves BatchNorm running statistics: a skipped step must take that back too,
    # or one NaN batch poisons every later forward pass (and the checkpoint). A few KB per step.
    buffers = [b.detach().clone() for b in state.model.buffers()]
    state.optimizer.zero_grad(set_to_none=True)
    oom = ""
    for micro in range(cfg.grad_accum):
        started = time.perf_counter()
        batch = _next_batch(state, batches, stop)
        tracker.consume(batch, state.step, time.perf_counter() - started)
        keys += batch.keys
        last = micro == cfg.grad_accum - 1
        if not oom:
            try:
                for name, value in _micro_step(state, batch, last).items():
                    sums[name] = sums[name] + value.detach() / cfg.grad_accum
                continue
            except torch.OutOfMemoryError as e:
                oom = first_line(e)[:200]
                state.optimizer.zero_grad(set_to_none=True)
                if info.device.type == "cuda":
                    torch.cuda.empty_cache()
        if last:  # this rank's step is lost: it still joins the others' gradient all-reduce
            _join_gradient_sync(state, batch)
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip)
    lr = state.scheduler.get_last_lr()
    loss, norm = torch.stack([torch.as_tensor(sums["loss"]).float().cpu(), grad_norm.float().cpu()]).tolist()
    # bf16 autocast needs no loss scaling, so a non-finite value here is a real divergence (or
    # bad data), never an overflow to retry at a lower scale. All ranks must skip together: a
    # rank stepping alone would leave the replicas different.
    any_oom, nonfinite = distributed.any_rank_each(info, [bool(oom), not (math.isfinite(loss) and math.isfinite(norm))])
    if any_oom or nonfinite:
        state.optimizer.zero_grad(set_to_none=True)  # the step counts; nothing reaches the weights
        with torch.no_grad():
            for b, saved in zip(state.model.buffers(), buffers):
                b.copy_(saved)
    else:
        state.optimizer.step()
        state.scheduler.step()
    state.step += 1
    kind = "oom" if any_oom else "nonfinite" if nonfinite else None
    skipped = (oom or "another rank ran out of GPU memory") if any_oom else None
    if nonfinite and not any_oom:
        skipped = describe_nonfinite(loss, norm)
    return sums | {
        "grad_norm": grad_norm.detach(),
        "lr": lr[-1],
        "lr/encoder": lr[0],
        "last_batch": batch,
        "skipped": skipped,
        "skip_kind": kind,
        "keys": keys,
    }


def _micro_step(state: Run, batch, last: bool) -> dict[str, torch.Tensor]:
    """Forward and backward of one micro-batch (gradients all-reduced on the last); its loss terms."""
    cfg, info, ddp = state.cfg, state.info, state.ddp
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if _bf16(cfg, info) else contextlib.nullcontext()
    images = state.normalize(batch.images)  # [B,3,S,S]
    if info.device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    tokens = batch.tokens.to(info.device, non_blocking=True)  # [B,T]
    sync = ddp.no_sync() if (info.enabled and not last) else contextlib.nullcontext()
    with sync:
        if state.faults.fire(CUDA_OOM, state.step + 1, info.rank):  # a test hook (trainer.faults)
            raise torch.OutOfMemoryError("CUDA out of memory (injected: STREAMCAP_FAULT=cuda_oom)")
        with autocast:
            logits = ddp(images, tokens[:, :-1])  # [B,T-1,V]
        terms = caption_loss(
            logits,
            tokens,
            pad_id=state.tokenizer.pad_id,
            eos_id=state.tokenizer.eos_id,
            min_eos_position=cfg.min_eos_position,
            eos_weight=cfg.eos_weight,
            label_smoothing=cfg.label_smoothing,
        )
        total = terms.total
        if state.faults.fire(NAN_LOSS, state.step + 1, info.rank):
            total = total * float("nan")  # a test hook (trainer.faults): gradients turn NaN too
        (total / cfg.grad_accum).backward()
    return {"loss": total, "loss/ce": terms.ce, "loss/eos": terms.eos}


def _join_gradient_sync(state: Run, batch) -> None:
    """After an out-of-memory error, take part in the last micro-batch's gradient all-reduce with
    a zero loss on two samples (BatchNorm needs more than one), so the other ranks' backward
    completes instead of waiting for this one until the collective times out; the step is skipped
    on every rank anyway. An error inside a backward (some gradient buckets already reduced)
    cannot be rejoined: the run then fails."""
    info = state.info
    if not info.enabled or info.world_size == 1:
        return
    images = state.normalize(batch.images[:2])
    tokens = batch.tokens[:2].to(info.device)
    logits = state.ddp(images, tokens[:, :-1])  # [2,T-1,V]
    (logits.float().sum() * 0.0).backward()
    state.optimizer.zero_grad(set_to_none=True)


def _next_batch(state: Run, batches, stop: StopSignal):
    """The next batch; StopRequested on every rank at once when any rank was asked to stop.

    The ranks meet here (one tiny all-reduce) before each micro-batch is computed on. So no rank
    ever sits in a gradient collective while another waits for data, and a stop seen by any rank,
    even one still waiting for data, ends the run on all of them at the same point: within
    seconds, with a checkpoint, instead of at the collective's timeout.

    A rank whose shards hold nothing to train on (`NoUsableData`) fails the run on every rank
    alike, and says so in its heartbeat first: a rank still waiting for its first shard is in no
    collective, and learns it from there (`RedisStatus.peer_failed`) to come to the meeting.
    """
    try:
        batch = _wait_for_batch(state, batches, stop)
    except StopRequested:
        batch = None
    except PeerFailed:
        batch = NoUsableData(worker=-1, reason="")
    mine = batch.reason if isinstance(batch, NoUsableData) else ""
    if mine:
        state.data_failed(mine)
    stopping, failing = distributed.any_rank_each(
        state.info, [batch is None or stop.requested, isinstance(batch, NoUsableData)]
    )
    if failing:
        lines = [line for line in distributed.gather(state.info, mine) if line]
        raise RunFailed(lines[0] if lines else "stopping: another rank found no usable data")
    if stopping:
        raise StopRequested(stop.signal_name or "another rank")
    return batch


def _wait_for_batch(state: Run, batches, stop: StopSignal):
    """Next batch; a stop signal (StopRequested) or another rank's failure (PeerFailed) ends the
    wait (the other ranks wait at `_next_batch`'s meeting)."""
    if state.cfg.loader_workers == 0:  # the wait runs in this process: the signal interrupts it
        with stop.interruptible():
            return next(batches)  # the stream calls `_waiting_in_process` while it has nothing

    def give_up() -> bool:
        state.while_waiting()
        return stop.requested or state.peer_failed()

    try:  # the wait is on worker processes: look up every few seconds
        return next_batch(batches, give_up=give_up)
    except StopIteration:
        if stop.requested:
            raise StopRequested(stop.signal_name) from None
        raise PeerFailed from None


def _waiting_in_process(state: Run) -> None:
    """With 0 loader workers, called by the sample stream while no shard exists at all."""
    state.while_waiting()
    if state.peer_failed():
        raise PeerFailed


def _bf16(cfg: TrainerSettings, info: distributed.DistInfo) -> bool:
    if cfg.precision == "bf16":
        return True
    return cfg.precision == "auto" and info.device.type == "cuda"


def _checkpoint(state: Run, tracker: BatchAccounting, aug_level: float) -> None:
    """Save model + training state (all ranks contribute their part), announce it, then
    record the reads it covers and acknowledge its fresh shards."""
    cfg, info = state.cfg, state.info
    bad = nonfinite_tensor(state.model, state.optimizer)
    if distributed.any_rank(info, bad is not None):
        raise RunFailed(
            f"stopping: refusing to save the checkpoint of step {state.step}: "
            f"{bad or 'a tensor of another rank'} is not finite; resume from the last good checkpoint with --resume"
        )
    mine = {
        "rng": ckpt.rng_state(),
        "loader": tracker.worker_states,
        "loader_workers": cfg.loader_workers,
        "counters": dict(tracker.totals),
        "unacknowledged": [f.to_dict() for f in tracker.ledger.unacknowledged],
        "param_digest": ckpt.parameter_digest(state.model) if info.world_size > 1 else None,
    }
    ranks = distributed.gather(info, mine)
    if info.is_main:
        _save(state, ranks, aug_level)
    distributed.broadcast(info, state.step)  # every rank waits until the checkpoint is on disk
    tracker.ledger.commit(state.step)
    if info.is_main:  # after the barrier: no rank waits for the chart
        state.sink.plot()


def _save(state: Run, ranks: list[dict[str, Any]], aug_level: float) -> None:
    cfg, info = state.cfg, state.info
    digests = {s["param_digest"] for s in ranks}
    if len(digests) > 1:
        log.error("parameters differ between ranks at step %d: DDP is out of sync", state.step)
    model_file = ckpt.model_path(cfg.run_dir, state.step)
    save_checkpoint(
        model_file,
        state.model,
        state.tokenizer,
        step=state.step,
        run=cfg.run,
        extra={"preset": cfg.preset, "samples_seen": sum(s["counters"]["samples"] for s in ranks)},
    )
    ckpt.save_train_state(
        ckpt.state_path(cfg.run_dir, state.step),
        {
            "step": state.step,
            "run": cfg.run,
            "world_size": info.world_size,
            "aug_level": aug_level,
            "nonfinite_steps": state.nonfinite.total,
            "wandb_id": state.wandb_id,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "ranks": ranks,
        },
    )
    ckpt.mark_latest(cfg.run_dir, state.step)
    if state.announcer is None:
        state.announcer = ckpt.Announcer(state.r, bus.Keys(cfg.namespace), cfg.run)
    state.announcer.add(model_file, state.step)  # kept and retried while Redis is down
    log.info("checkpoint %s (step %d)", model_file, state.step)
    _retain(state)


def _retain(state: Run) -> None:
    """Delete checkpoints past --keep-checkpoints that neither --resume nor the evaluator needs."""
    cfg = state.cfg
    if not cfg.keep_checkpoints:
        return
    needed = evaluator_needs(state.r, bus.Keys(cfg.namespace))
    if needed is None:  # Redis cannot say what is being evaluated: delete nothing this time
        return
    owed = {str(path.resolve()) for path, _ in state.announcer.owed} if state.announcer else set()
    freed, removed = prune(cfg.run_dir, cfg.keep_checkpoints, needed | owed)
    if removed:
        state.freed_bytes += freed
        log.info(
            "removed checkpoint(s) of step %s (--keep-checkpoints %d): %.1f MB freed, %.1f MB since this trainer started",
            ", ".join(map(str, removed)),
            cfg.keep_checkpoints,
            freed / 1e6,
            state.freed_bytes / 1e6,
        )
