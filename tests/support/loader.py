"""The trainer's streaming dataset as the loader tests build it: small settings, a model that
takes 32-pixel images and 24-token captions.

    dataset = stream_dataset(redis_url, keys, shard_dir, tokenizer, loader_workers=2, shuffle_buffer=4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamcap.model.config import ModelConfig
from streamcap.trainer.augment import LevelSchedule
from streamcap.trainer.config import TrainerSettings
from streamcap.trainer.dataset import ShardStreamDataset

# The loader reads only the input size and the caption length of the model's config.
MODEL = ModelConfig.from_preset("tiny", image_size=32, max_len=24)


def loader_settings(keys, shard_dir: Path, **overrides: Any) -> TrainerSettings:
    small = dict(run="t", loader_workers=0, batch_size=4, shuffle_buffer=8, fresh_wait_ms=200, seed=3)
    return TrainerSettings(namespace=keys.namespace, shard_dir=shard_dir, **(small | overrides))


def stream_dataset(
    redis_url: str,
    keys,
    shard_dir: Path,
    tokenizer: Any,
    levels: LevelSchedule | None = None,
    worker_states: dict[int, dict[str, Any]] | None = None,
    **settings: Any,
) -> ShardStreamDataset:
    """Rank 0 of 1 reading `shard_dir`; `settings` override the trainer settings above."""
    cfg = loader_settings(keys, shard_dir, **settings)
    return ShardStreamDataset(
        cfg, MODEL, tokenizer, levels or LevelSchedule(), redis_url=redis_url, worker_states=worker_states
    )
