"""Trainer settings: one frozen dataclass, defaults < STREAMCAP_* variables < CLI flags.

    cfg = TrainerSettings(redis_url="redis://localhost:6379/0", tokenizer=Path("vocab.txt"), preset="tiny")
    cfg.run_dir        # checkpoints/<run>: checkpoints, training state, config.json, metrics.jsonl

Imports no torch: `streamcap --help` loads this module.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from streamcap.common.settings import (
    DEVICES,
    CommonSettings,
    ProgressSettings,
    at_least,
    between,
    directory_path,
    fail,
    one_of,
    optional,
    setting,
)
from streamcap.common.wandb_mode import WANDB_MODES
from streamcap.model.config import MAX_IMAGE_SIZE, MAX_LEN
from streamcap.model.config import PRESETS as MODEL_PRESETS

# Every preset the model defines: a second list here drifted once (`small` was documented and rejected).
PRESETS = tuple(sorted(MODEL_PRESETS))
PRECISIONS = ("auto", "bf16", "fp32")
REPLAY_RULES = ("balanced", "uniform")
# Upper bounds of the counts and sizes, past which a value is a slip rather than a plan.
MAX_STEPS = 10_000_000  # 100x the default run; every step/interval setting shares it
MAX_BATCH_SIZE = 4096  # per rank and micro-batch; --grad-accum multiplies it further
MAX_GRAD_ACCUM = 1024
MAX_LOADER_WORKERS = 64  # processes per rank, each with its own shuffle buffer and Redis connections
# Samples held per loader worker, raw bytes of tens of kB each: 20,000 is about a GB per worker.
MAX_SHUFFLE_BUFFER = 20_000
MAX_CAPTION_SENTENCES = 100
MAX_BAD_STEPS = 1000  # a streak longer than this is a diverged run, not a bad batch
MAX_UNUSABLE_SHARDS = 100_000  # shard reads in a row without a usable sample; more is never a plan
MAX_KEPT_CHECKPOINTS = 10_000  # 0 keeps all; above this, keep all is what is meant
MAX_SHARD_CACHE_BYTES = 1000 * 10**12  # more than any local disk holds


def _run_id(v: object) -> str | None:
    if v is None or re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", str(v)):
        return None
    return "1-64 letters, digits, '_', '-' or '.'"


@dataclass(frozen=True, kw_only=True)
class TrainerSettings(CommonSettings, ProgressSettings):
    """Everything `streamcap train` and `torchrun -m streamcap.trainer` accept."""

    # --- run and outputs ---
    run: str | None = setting(None, check=_run_id, flag="--run-id", env="STREAMCAP_RUN_ID")
    """Training run id: names the consumer group and the checkpoint folder (default: run-<date>-<time>)."""
    checkpoint_dir: Path = setting(Path("checkpoints"), check=directory_path)
    """Checkpoints, training state, config and metrics go to <dir>/<run>/."""
    resume: bool = setting(False)
    """Continue run --run-id from its latest checkpoint (from step 0 if it has none yet)."""
    # --- model and captions ---
    preset: str = setting("base", check=one_of(*PRESETS))
    """Model size preset."""
    tokenizer: Path | None = setting(None)
    """WordPiece vocab.txt (`streamcap tokenizer build` makes one from captions)."""
    pretrained: bool = setting(True, flag="--pretrained/--no-pretrained")
    """Start the encoder from ImageNet weights when they can be loaded."""
    image_size: int | None = setting(
        None, check=optional(between(32, MAX_IMAGE_SIZE)), env="STREAMCAP_TRAIN_IMAGE_SIZE"
    )
    """Square training image side in pixels (default: the preset's)."""
    max_len: int | None = setting(None, check=optional(between(3, MAX_LEN)))
    """Longest token sequence (with BOS/EOS); longer captions are cut (default: the preset's)."""
    caption_column: str = setting("caption")
    """'caption' (as downloaded), 'caption_raw', or an extra caption column kept in the shards."""
    caption_sentences: int | None = setting(
        None, check=optional(between(0, MAX_CAPTION_SENTENCES)), env="STREAMCAP_TRAIN_CAPTION_SENTENCES"
    )
    """Re-cut captions from the raw text to this many sentences (0 keeps all; default: as stored, 2 for another column)."""
    # --- data ---
    batch_size: int = setting(64, check=between(1, MAX_BATCH_SIZE), env="STREAMCAP_TRAIN_BATCH_SIZE")
    """Samples per micro-batch on each rank."""
    loader_workers: int = setting(4, check=between(0, MAX_LOADER_WORKERS))
    """DataLoader worker processes per rank (0 reads in the training process)."""
    shuffle_buffer: int = setting(1000, check=between(1, MAX_SHUFFLE_BUFFER))
    """Samples each loader worker mixes across shards before yielding."""
    fresh_wait_ms: int = setting(1000, check=between(0, 1900))
    """How long a loader worker waits for a fresh shard before replaying a read one."""
    replay: str = setting("balanced", check=one_of(*REPLAY_RULES))
    """Which read shard a loader worker replays when fresh ones lag: balanced (one it has read least often) or uniform
    (any, at random; the first shards end up read far more often)."""
    seed: int = setting(0, check=at_least(0))
    """Seed of model init, shuffling, replay choice and augmentation."""
    # --- optimisation ---
    max_steps: int = setting(100_000, check=between(1, MAX_STEPS))
    """Optimizer steps to train for."""
    # Not capped at 1: a learning rate that makes the run diverge is caught by --max-bad-steps.
    lr: float = setting(1e-4, check=at_least(0))
    """Peak Adam learning rate."""
    encoder_lr: float | None = setting(None, check=optional(between(0, 1)))
    """Peak learning rate of the image encoder (default: --lr)."""
    warmup_steps: int = setting(1000, check=between(0, MAX_STEPS))
    """Linear warmup, then inverse-square-root decay."""
    freeze_encoder_steps: int = setting(0, check=between(0, MAX_STEPS))
    """Keep the image encoder frozen for this many steps."""
    grad_clip: float = setting(1.0, check=at_least(0))
    """Clip the global gradient norm to this (0: off)."""
    grad_accum: int = setting(1, check=between(1, MAX_GRAD_ACCUM))
    """Micro-batches per optimizer step."""
    label_smoothing: float = setting(0.0, check=between(0, 0.5))
    """Label smoothing of the cross-entropy."""
    min_eos_position: int = setting(15, check=between(0, MAX_LEN))
    """EOS suppression: penalise P(EOS) at caption positions before this one whose target is not EOS."""
    eos_weight: float = setting(1.0, check=at_least(0))
    """Weight of the EOS-suppression term (0: off)."""
    # --- augmentation ---
    aug_max: float = setting(1.0, check=between(0, 1))
    """Augmentation strength reached at the end of the ramp (0: off)."""
    aug_ramp_steps: int = setting(10_000, check=between(0, MAX_STEPS))
    """Steps over which augmentation ramps up exponentially."""
    # --- hardware ---
    device: str = setting("auto", check=one_of(*DEVICES), env="STREAMCAP_TRAIN_DEVICE")
    """cuda when available under auto."""
    precision: str = setting("auto", check=one_of(*PRECISIONS))
    """auto: bf16 autocast on GPU, fp32 on CPU."""
    # --- checkpoints and logging ---
    checkpoint_every: int = setting(1000, check=between(1, MAX_STEPS))
    """Save and publish a checkpoint every N steps."""
    log_every: int = setting(10, check=between(1, MAX_STEPS))
    """Write metrics every N steps."""
    sample_every: int = setting(1000, check=between(0, MAX_STEPS))
    """Log a few greedy captions with their images every N steps (0: off)."""
    histogram_every: int = setting(1000, check=between(0, MAX_STEPS))
    """Log parameter/gradient histograms every N steps (0: off)."""
    wandb_project: str = setting("streamcap")
    """Weights & Biases project."""
    wandb_name: str | None = setting(None)
    """Weights & Biases run name (default: the run id)."""
    wandb_mode: str = setting("auto", check=one_of(*WANDB_MODES))
    """auto: online with an API key, offline without; WANDB_MODE=disabled turns it off."""
    # --- guards of long runs ---
    max_bad_steps: int = setting(5, check=between(1, MAX_BAD_STEPS))
    """Stop after this many non-finite steps in a row (each one is skipped: no optimizer step)."""
    max_unusable_shards: int = setting(8, check=between(1, MAX_UNUSABLE_SHARDS))
    """Stop when a loader worker reads this many shards in a row (replays included) without one usable sample (a wrong
    --caption-column, say)."""
    keep_checkpoints: int = setting(3, check=between(0, MAX_KEPT_CHECKPOINTS))
    """Keep the newest N checkpoints plus the evaluator's best and those it is evaluating (0: keep all)."""
    # --- shards in a bucket (--shard-dir s3://bucket/prefix): the local cache (trainer.shardcache) ---
    shard_cache: Path = setting(Path(".streamcap/shard-cache"), check=directory_path)
    """With --shard-dir s3://...: local folder the loader downloads shards into, ahead of reading them."""
    shard_cache_bytes: int = setting(20 * 10**9, check=between(0, MAX_SHARD_CACHE_BYTES))
    """With --shard-dir s3://...: the shard cache's size in bytes; least recently used shards go first (0 = no limit)."""

    def validate(self) -> None:
        if self.resume and not self.run:
            fail(self, "run", "the id of the run to resume (with --resume)", self.run)
        if self.tokenizer is not None and not self.tokenizer.is_file():
            fail(self, "tokenizer", "an existing vocab.txt file", str(self.tokenizer))
        if not self.caption_column:
            fail(self, "caption_column", "'caption', 'caption_raw' or a caption column name", self.caption_column)

    def require_tokenizer(self) -> Path:
        if self.tokenizer is None:
            fail(self, "tokenizer", "a vocab.txt (build one with `streamcap tokenizer build`)", None)
        return self.tokenizer  # type: ignore[return-value]

    def with_run(self, run: str) -> TrainerSettings:
        return dataclasses.replace(self, run=run)

    @property
    def run_dir(self) -> Path:
        return self.checkpoint_dir / (self.run or "unnamed")
