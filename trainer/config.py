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
    CommonSettings,
    at_least,
    between,
    directory_path,
    fail,
    one_of,
    optional,
    setting,
)
from streamcap.model.config import PRESETS as MODEL_PRESETS

# Every preset the model defines: a second list here drifted once (`small` was documented and rejected).
PRESETS = tuple(sorted(MODEL_PRESETS))
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")
WANDB_MODES = ("auto", "online", "offline", "disabled")
REPLAY_RULES = ("balanced", "uniform")


def _run_id(v: object) -> str | None:
    if v is None or re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", str(v)):
        return None
    return "1-64 letters, digits, '_', '-' or '.'"


@dataclass(frozen=True, kw_only=True)
class TrainerSettings(CommonSettings):
    """Everything `streamcap train` and `torchrun -m streamcap.trainer` accept."""

    # --- run and outputs ---
    run: str | None = setting(
        None,
        flag="--run-id",
        env="STREAMCAP_RUN_ID",
        check=_run_id,
        help="Training run id: names the consumer group and the checkpoint folder (default: run-<date>-<time>).",
    )
    checkpoint_dir: Path = setting(
        Path("checkpoints"),
        flag="--checkpoint-dir",
        env="STREAMCAP_CHECKPOINT_DIR",
        check=directory_path,
        help="Checkpoints, training state, config and metrics go to <dir>/<run>/.",
    )
    resume: bool = setting(
        False,
        flag="--resume",
        env="STREAMCAP_RESUME",
        help="Continue run --run-id from its latest checkpoint (from step 0 if it has none yet).",
    )
    # --- model and captions ---
    preset: str = setting(
        "base", flag="--preset", env="STREAMCAP_PRESET", check=one_of(*PRESETS), help="Model size preset."
    )
    tokenizer: Path | None = setting(
        None,
        flag="--tokenizer",
        env="STREAMCAP_TOKENIZER",
        help="WordPiece vocab.txt (`streamcap tokenizer build` makes one from captions).",
    )
    pretrained: bool = setting(
        True,
        flag="--pretrained/--no-pretrained",
        env="STREAMCAP_PRETRAINED",
        help="Start the encoder from ImageNet weights when they can be loaded.",
    )
    image_size: int | None = setting(
        None,
        flag="--image-size",
        env="STREAMCAP_TRAIN_IMAGE_SIZE",
        check=optional(at_least(32)),
        help="Square training image side in pixels (default: the preset's).",
    )
    max_len: int | None = setting(
        None,
        flag="--max-len",
        env="STREAMCAP_MAX_LEN",
        check=optional(at_least(3)),
        help="Longest token sequence (with BOS/EOS); longer captions are cut (default: the preset's).",
    )
    caption_column: str = setting(
        "caption",
        flag="--caption-column",
        env="STREAMCAP_CAPTION_COLUMN",
        help="'caption' (as downloaded), 'caption_raw', or an extra caption column kept in the shards.",
    )
    caption_sentences: int | None = setting(
        None,
        flag="--caption-sentences",
        env="STREAMCAP_TRAIN_CAPTION_SENTENCES",
        check=optional(at_least(0)),
        help="Re-cut captions from the raw text to this many sentences (0 keeps all; default: as stored, "
        "2 for another column).",
    )
    # --- data ---
    batch_size: int = setting(
        64,
        flag="--batch-size",
        env="STREAMCAP_TRAIN_BATCH_SIZE",
        check=at_least(1),
        help="Samples per micro-batch on each rank.",
    )
    loader_workers: int = setting(
        4,
        flag="--loader-workers",
        env="STREAMCAP_LOADER_WORKERS",
        check=at_least(0),
        help="DataLoader worker processes per rank (0 reads in the training process).",
    )
    shuffle_buffer: int = setting(
        1000,
        flag="--shuffle-buffer",
        env="STREAMCAP_SHUFFLE_BUFFER",
        check=at_least(1),
        help="Samples each loader worker mixes across shards before yielding.",
    )
    fresh_wait_ms: int = setting(
        1000,
        flag="--fresh-wait-ms",
        env="STREAMCAP_FRESH_WAIT_MS",
        check=between(0, 1900),
        help="How long a loader worker waits for a fresh shard before replaying a read one.",
    )
    replay: str = setting(
        "balanced",
        flag="--replay",
        env="STREAMCAP_REPLAY",
        check=one_of(*REPLAY_RULES),
        help="Which read shard a loader worker replays when fresh ones lag: balanced (one it has read "
        "least often) or uniform (any, at random; the first shards end up read far more often).",
    )
    seed: int = setting(
        0,
        flag="--seed",
        env="STREAMCAP_SEED",
        check=at_least(0),
        help="Seed of model init, shuffling, replay choice and augmentation.",
    )
    # --- optimisation ---
    max_steps: int = setting(
        100_000, flag="--max-steps", env="STREAMCAP_MAX_STEPS", check=at_least(1), help="Optimizer steps to train for."
    )
    lr: float = setting(1e-4, flag="--lr", env="STREAMCAP_LR", check=at_least(0), help="Peak Adam learning rate.")
    encoder_lr: float | None = setting(
        None,
        flag="--encoder-lr",
        env="STREAMCAP_ENCODER_LR",
        check=optional(between(0, 1)),
        help="Peak learning rate of the image encoder (default: --lr).",
    )
    warmup_steps: int = setting(
        1000,
        flag="--warmup-steps",
        env="STREAMCAP_WARMUP_STEPS",
        check=at_least(0),
        help="Linear warmup, then inverse-square-root decay.",
    )
    freeze_encoder_steps: int = setting(
        0,
        flag="--freeze-encoder-steps",
        env="STREAMCAP_FREEZE_ENCODER_STEPS",
        check=at_least(0),
        help="Keep the image encoder frozen for this many steps.",
    )
    grad_clip: float = setting(
        1.0,
        flag="--grad-clip",
        env="STREAMCAP_GRAD_CLIP",
        check=at_least(0),
        help="Clip the global gradient norm to this (0: off).",
    )
    grad_accum: int = setting(
        1, flag="--grad-accum", env="STREAMCAP_GRAD_ACCUM", check=at_least(1), help="Micro-batches per optimizer step."
    )
    label_smoothing: float = setting(
        0.0,
        flag="--label-smoothing",
        env="STREAMCAP_LABEL_SMOOTHING",
        check=between(0, 0.5),
        help="Label smoothing of the cross-entropy.",
    )
    min_eos_position: int = setting(
        15,
        flag="--min-eos-position",
        env="STREAMCAP_MIN_EOS_POSITION",
        check=at_least(0),
        help="EOS suppression: penalise P(EOS) at caption positions before this one whose target is not EOS.",
    )
    eos_weight: float = setting(
        1.0,
        flag="--eos-weight",
        env="STREAMCAP_EOS_WEIGHT",
        check=at_least(0),
        help="Weight of the EOS-suppression term (0: off).",
    )
    # --- augmentation ---
    aug_max: float = setting(
        1.0,
        flag="--aug-max",
        env="STREAMCAP_AUG_MAX",
        check=between(0, 1),
        help="Augmentation strength reached at the end of the ramp (0: off).",
    )
    aug_ramp_steps: int = setting(
        10_000,
        flag="--aug-ramp-steps",
        env="STREAMCAP_AUG_RAMP_STEPS",
        check=at_least(0),
        help="Steps over which augmentation ramps up exponentially.",
    )
    # --- hardware ---
    device: str = setting(
        "auto",
        flag="--device",
        env="STREAMCAP_TRAIN_DEVICE",
        check=one_of(*DEVICES),
        help="cuda when available under auto.",
    )
    precision: str = setting(
        "auto",
        flag="--precision",
        env="STREAMCAP_PRECISION",
        check=one_of(*PRECISIONS),
        help="auto: bf16 autocast on GPU, fp32 on CPU.",
    )
    # --- checkpoints and logging ---
    checkpoint_every: int = setting(
        1000,
        flag="--checkpoint-every",
        env="STREAMCAP_CHECKPOINT_EVERY",
        check=at_least(1),
        help="Save and publish a checkpoint every N steps.",
    )
    log_every: int = setting(
        10, flag="--log-every", env="STREAMCAP_LOG_EVERY", check=at_least(1), help="Write metrics every N steps."
    )
    sample_every: int = setting(
        1000,
        flag="--sample-every",
        env="STREAMCAP_SAMPLE_EVERY",
        check=at_least(0),
        help="Log a few greedy captions with their images every N steps (0: off).",
    )
    histogram_every: int = setting(
        1000,
        flag="--histogram-every",
        env="STREAMCAP_HISTOGRAM_EVERY",
        check=at_least(0),
        help="Log parameter/gradient histograms every N steps (0: off).",
    )
    wandb_project: str = setting(
        "streamcap", flag="--wandb-project", env="STREAMCAP_WANDB_PROJECT", help="Weights & Biases project."
    )
    wandb_name: str | None = setting(
        None, flag="--wandb-name", env="STREAMCAP_WANDB_NAME", help="Weights & Biases run name (default: the run id)."
    )
    wandb_mode: str = setting(
        "auto",
        flag="--wandb-mode",
        env="STREAMCAP_WANDB_MODE",
        check=one_of(*WANDB_MODES),
        help="auto: online with an API key, offline without; WANDB_MODE=disabled turns it off.",
    )
    # --- guards of long runs (issue 23) ---
    max_bad_steps: int = setting(
        5,
        flag="--max-bad-steps",
        env="STREAMCAP_MAX_BAD_STEPS",
        check=at_least(1),
        help="Stop after this many non-finite steps in a row (each one is skipped: no optimizer step).",
    )
    keep_checkpoints: int = setting(
        3,
        flag="--keep-checkpoints",
        env="STREAMCAP_KEEP_CHECKPOINTS",
        check=at_least(0),
        help="Keep the newest N checkpoints plus the evaluator's best and those it is evaluating (0: keep all).",
    )

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
