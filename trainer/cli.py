"""`streamcap train`: train the captioning model on shards as they land.

    streamcap train --tokenizer vocab.txt --preset tiny --max-steps 2000
    torchrun --standalone --nproc-per-node 8 -m streamcap.trainer --tokenizer vocab.txt   # the same command, DDP

Imports only typer and the settings; torch loads inside the command body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from streamcap.common.commands import LogLevel, Namespace, RedisUrl, ShardDir, option
from streamcap.common.settings import build
from streamcap.trainer.config import TrainerSettings

S = TrainerSettings


def train_command(
    run: Annotated[Optional[str], option(S, "run")] = None,
    checkpoint_dir: Annotated[Optional[Path], option(S, "checkpoint_dir")] = None,
    resume: Annotated[Optional[bool], option(S, "resume")] = None,
    preset: Annotated[Optional[str], option(S, "preset")] = None,
    tokenizer: Annotated[Optional[Path], option(S, "tokenizer")] = None,
    pretrained: Annotated[Optional[bool], option(S, "pretrained")] = None,
    image_size: Annotated[Optional[int], option(S, "image_size")] = None,
    max_len: Annotated[Optional[int], option(S, "max_len")] = None,
    caption_column: Annotated[Optional[str], option(S, "caption_column")] = None,
    caption_sentences: Annotated[Optional[int], option(S, "caption_sentences")] = None,
    batch_size: Annotated[Optional[int], option(S, "batch_size")] = None,
    loader_workers: Annotated[Optional[int], option(S, "loader_workers")] = None,
    shuffle_buffer: Annotated[Optional[int], option(S, "shuffle_buffer")] = None,
    fresh_wait_ms: Annotated[Optional[int], option(S, "fresh_wait_ms")] = None,
    seed: Annotated[Optional[int], option(S, "seed")] = None,
    max_steps: Annotated[Optional[int], option(S, "max_steps")] = None,
    lr: Annotated[Optional[float], option(S, "lr")] = None,
    encoder_lr: Annotated[Optional[float], option(S, "encoder_lr")] = None,
    warmup_steps: Annotated[Optional[int], option(S, "warmup_steps")] = None,
    freeze_encoder_steps: Annotated[Optional[int], option(S, "freeze_encoder_steps")] = None,
    grad_clip: Annotated[Optional[float], option(S, "grad_clip")] = None,
    grad_accum: Annotated[Optional[int], option(S, "grad_accum")] = None,
    label_smoothing: Annotated[Optional[float], option(S, "label_smoothing")] = None,
    min_eos_position: Annotated[Optional[int], option(S, "min_eos_position")] = None,
    eos_weight: Annotated[Optional[float], option(S, "eos_weight")] = None,
    aug_max: Annotated[Optional[float], option(S, "aug_max")] = None,
    aug_ramp_steps: Annotated[Optional[int], option(S, "aug_ramp_steps")] = None,
    device: Annotated[Optional[str], option(S, "device")] = None,
    precision: Annotated[Optional[str], option(S, "precision")] = None,
    checkpoint_every: Annotated[Optional[int], option(S, "checkpoint_every")] = None,
    log_every: Annotated[Optional[int], option(S, "log_every")] = None,
    sample_every: Annotated[Optional[int], option(S, "sample_every")] = None,
    histogram_every: Annotated[Optional[int], option(S, "histogram_every")] = None,
    wandb_project: Annotated[Optional[str], option(S, "wandb_project")] = None,
    wandb_name: Annotated[Optional[str], option(S, "wandb_name")] = None,
    wandb_mode: Annotated[Optional[str], option(S, "wandb_mode")] = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    shard_dir: ShardDir = None,
    log_level: LogLevel = None,
) -> int:
    """Train on the shards of the registry as they land (DDP under torchrun)."""
    cfg = build(S, **{k: v for k, v in locals().items()})
    from streamcap.trainer.train import run as run_training  # torch loads here, not at --help

    return run_training(cfg)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
