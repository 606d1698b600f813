"""Turning one raw shard sample into training inputs: caption choice, JPEG decoding, tokens.

    caption = choose_caption(sample, CaptionChoice("llava_caption", sentences=2))
    check_intact(sample)                                                 # SampleError when corrupted
    image = decode_image(sample.image, sample.image_ext, min_side=224)   # HxWx3 uint8 RGB
    tokens = encode_caption(tokenizer, caption, max_len=32)              # [BOS, ..., EOS]

Decoding, measured here (one thread, demo-world JPEGs at quality 95, decoded for a 224 px
target): `torchvision.io.decode_jpeg` does 1964 images/s at 256 px against Pillow's 1101 (1.8x)
and 1045 against 786 at 384 px (1.3x); at 768 px both do ~340/s, but Pillow's draft mode
(DCT-domain downscaling) hands over a quarter of the pixels, which the augmentation then
needn't touch. So a JPEG is decoded by torchvision unless its short side is at least twice
the training size; WebP by Pillow. (torchvision 0.29 deprecates its decoders in favour of
TorchCodec; the `train` extra pins torchvision below 0.30.)
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from streamcap.common.logs import first_line
from streamcap.formats.shards import Sample
from streamcap.model.caption_model import IMAGE_MEAN, IMAGE_STD
from streamcap.text.captions import process_caption

STORED_CAPTION = "caption"  # the processed caption the downloader wrote (<key>.txt)
RAW_CAPTION = "caption_raw"  # the source's caption column, as downloaded
DEFAULT_SENTENCES = 2  # the original model's cut, for captions re-shaped from raw text


class SampleError(ValueError):
    """This sample cannot be used; the message says why (it is counted and logged, not raised on)."""


@dataclass(frozen=True)
class CaptionChoice:
    """Which caption to train on: the stored one, or one re-cut from a raw caption column."""

    column: str = STORED_CAPTION
    sentences: int | None = None  # None: as stored (or DEFAULT_SENTENCES when re-cut)

    @property
    def reshapes(self) -> bool:
        return self.column != STORED_CAPTION or self.sentences is not None


def choose_caption(sample: Sample, choice: CaptionChoice) -> str:
    if not choice.reshapes:
        caption = sample.caption.strip()
    else:
        raw = _raw_caption(sample.meta, choice.column)
        sentences = DEFAULT_SENTENCES if choice.sentences is None else choice.sentences
        caption = process_caption(raw, sentences)
    if not caption:
        raise SampleError(f"empty caption in column {choice.column!r}")
    return caption


def _raw_caption(meta: dict[str, Any], column: str) -> str:
    if column in (STORED_CAPTION, RAW_CAPTION):
        raw = meta.get(RAW_CAPTION)
    else:
        extra = meta.get("captions") or {}
        if not isinstance(extra, dict) or column not in extra:
            kept = sorted(extra) if isinstance(extra, dict) else []
            raise SampleError(f"no caption column {column!r} in the sample's json (kept: {kept})")
        raw = extra[column]
    if not isinstance(raw, str):
        raise SampleError(f"caption column {column!r} is not text")
    return raw


def check_intact(sample: Sample) -> None:
    """Bytes flipped on disk can leave an image that still decodes, silently wrong (a flipped
    quantization table, say): the CRC-32 the shard writer stored in the json tells."""
    expected = sample.meta.get("image_crc32")
    if isinstance(expected, int) and zlib.crc32(sample.image) != expected:
        raise SampleError("image bytes do not match their image_crc32 (corrupted on disk)")


def decode_image(data: bytes, ext: str, min_side: int) -> np.ndarray:
    """RGB HxWx3 uint8; an image at least 2x `min_side` on its short side comes out smaller
    (but never below `min_side`) thanks to JPEG draft decoding."""
    try:
        if ext == "jpg":
            with Image.open(io.BytesIO(data)) as probe:
                large = min(probe.size) >= 2 * min_side
                if large:
                    probe.draft("RGB", (min_side, min_side))
                    return np.asarray(probe.convert("RGB"))
            with warnings.catch_warnings():  # deprecated for TorchCodec after 0.29; we pin torchvision < 0.30
                warnings.simplefilter("ignore", DeprecationWarning)
                tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            return tensor.permute(1, 2, 0).numpy()
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, RuntimeError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError(f"image does not decode: {first_line(e)}") from None


def encode_caption(tokenizer: Any, caption: str, max_len: int) -> list[int]:
    """[BOS, pieces..., EOS], cut to `max_len` ids. A cut caption loses its EOS, so the model
    is never taught to stop in mid-sentence."""
    ids = tokenizer.encode(caption, add_special_tokens=True)
    if len(ids) <= 2:
        raise SampleError("caption has no tokens")
    return ids[:max_len]


def collate(images: list[np.ndarray], token_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [B, 3, H, W] (normalised later, on the device) and tokens [B, T] padded
    to the longest caption of the batch."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # [B, 3, H, W]
    longest = max(len(t) for t in token_lists)
    tokens = torch.full((len(token_lists), longest), pad_id, dtype=torch.long)  # [B, T]
    for i, ids in enumerate(token_lists):
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return batch, tokens


class ImageNormalizer:
    """uint8 image batches [B,3,S,S] -> float, ImageNet-normalised, on `device`.

    The mean and std live on the device once: built per step, their host-to-device copy
    would make the CPU wait for the GPU every step.
    """

    def __init__(self, device: torch.device) -> None:
        self.mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.mean.device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)
