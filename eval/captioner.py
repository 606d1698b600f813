"""Captions for an evaluation set from one checkpoint: batched beam search, GPU when available.

    ckpt = load_checkpoint(Path("checkpoints/r1/step-001000.pt"), map_location=device)
    predictions = caption_set(ckpt, evalset, cfg, device, on_batch=lambda done, total: ...)
    # {"1000092795.jpg": "two young men in the yard", ...}

Images are decoded by a small thread pool one batch ahead of the model, so the GPU does not
wait for JPEG decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image, UnidentifiedImageError

from streamcap.common.settings import fail
from streamcap.eval.config import EvalSettings
from streamcap.eval.datasets import EvalImage, EvalSet, EvalSetError
from streamcap.model import inference
from streamcap.model.caption_model import image_transform
from streamcap.model.checkpoint import LoadedCheckpoint
from streamcap.model.decoding import beam_search

DECODE_THREADS = 4

Progress = Callable[[int, int], None]


def pick_device(cfg: EvalSettings) -> torch.device:
    """`auto`: the first GPU when one is usable, else the CPU."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        fail(cfg, "device", "auto or cpu: no CUDA device is available here", cfg.device)
    return inference.pick_device(cfg.device)


def caption_set(
    ckpt: LoadedCheckpoint, evalset: EvalSet, cfg: EvalSettings, device: torch.device, on_batch: Progress | None = None
) -> dict[str, str]:
    """Beam-search caption of every image of `evalset`, keyed by image id."""
    transform = image_transform(ckpt.config)
    images = list(evalset.images)
    batches = [images[i : i + cfg.batch_size] for i in range(0, len(images), cfg.batch_size)]
    predictions: dict[str, str] = {}
    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="eval-decode") as pool:
        pending = pool.submit(_load_batch, pool, batches[0], transform) if batches else None
        for index, batch in enumerate(batches):
            pixels = pending.result()  # type: ignore[union-attr]
            if index + 1 < len(batches):  # decode the next batch while this one is captioned
                pending = pool.submit(_load_batch, pool, batches[index + 1], transform)
            ids = beam_search(
                ckpt.model,
                pixels.to(device, non_blocking=True),
                beam_size=cfg.beam,
                alpha=cfg.alpha,
                max_len=cfg.max_tokens,
                min_len=cfg.min_tokens,
                no_repeat_ngram=cfg.no_repeat_ngram,
            )
            for image, caption_ids in zip(batch, ids):
                predictions[image.id] = ckpt.tokenizer.decode(caption_ids)
            if on_batch is not None:
                on_batch(len(predictions), len(images))
    return predictions


def _load_batch(pool: ThreadPoolExecutor, batch: list[EvalImage], transform) -> torch.Tensor:
    return torch.stack(list(pool.map(lambda image: _load_image(image, transform), batch)))


def _load_image(image: EvalImage, transform) -> torch.Tensor:
    try:
        with Image.open(image.path) as im:
            return transform(im)
    except FileNotFoundError:
        raise EvalSetError(f"{image.id}: image not found at {image.path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise EvalSetError(f"{image.id}: cannot read image {image.path} ({e})") from None
