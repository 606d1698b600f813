"""Turning one raw shard sample into training inputs: caption choice, JPEG decoding, tokens.

    caption = choose_caption(sample, CaptionChoice("llava_caption", sentences=2))
    check_intact(sample)                                                 # SampleError when corrupted
    image = decode_image(sample.image, sample.image_ext, min_side=224)   # HxWx3 uint8 RGB
    tokens = encode_caption(tokenizer, caption, max_len=32)              # [BOS, ..., EOS]

Decoding: a JPEG goes to libjpeg-turbo through simplejpeg, which decodes straight into a numpy
array (no tensor, no bytearray copy) and, for an image at least twice the training size on its
short side, scales in the DCT domain by 1/2, 1/4 or 1/8 (never below the training size: the same
sizes Pillow's draft mode gave). Measured on demo-world JPEGs at quality 95, one thread: 0.38 ms
at 384 px against torchvision's 0.44 and Pillow's 0.73-0.90, the same pixels as both. CMYK/YCCK
JPEGs (whose inversion conventions libjpeg-turbo does not share with Pillow), images over Pillow's
pixel limit and anything libjpeg-turbo's strict mode refuses go to Pillow as before, which decodes
what it can and names what is wrong with the rest; WebP and PNG go to Pillow.

Batches hand their images over as uint8 [B, 3, S, S] *views* of one [B, S, S, 3] block (channels
last, the layout the augmentation writes and the GPU trains in): no transpose in the worker, and
in a DataLoader worker the block is allocated in shared memory, so sending it to the training
process copies nothing. `ImageNormalizer` turns it into float on the device.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import get_worker_info

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
            columns = ", ".join([STORED_CAPTION, RAW_CAPTION, *kept])
            raise SampleError(f"no caption column {column!r} in the sample (it has: {columns})")
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
    """RGB HxWx3 uint8; a JPEG at least 2x `min_side` on its short side comes out smaller (but
    never below `min_side`): DCT-domain scaling by 1/2, 1/4 or 1/8."""
    try:
        if ext == "jpg" and _turbo_decodes(data):
            try:
                return simplejpeg.decode_jpeg(
                    data, colorspace="RGB", min_height=min_side, min_width=min_side, min_factor=2
                )
            except ValueError:
                pass  # strict libjpeg-turbo refuses it (truncated, corrupt): Pillow decodes it or says why
        with Image.open(io.BytesIO(data)) as image:
            if ext == "jpg":
                image.draft("RGB", (min_side, min_side))  # the same 1/2, 1/4, 1/8 scaling
            return np.asarray(image.convert("RGB"))
    except (OSError, RuntimeError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError(f"image does not decode: {first_line(e)}") from None


def _turbo_decodes(data: bytes) -> bool:
    """Whether simplejpeg should decode this JPEG: not CMYK/YCCK, and within Pillow's pixel
    limit (a decompression bomb must fail as it did with Pillow, not allocate gigabytes)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False
    limit = Image.MAX_IMAGE_PIXELS
    return colorspace not in ("CMYK", "YCCK") and (limit is None or height * width <= limit)


def encode_caption(tokenizer: Any, caption: str, max_len: int) -> list[int]:
    """[BOS, pieces..., EOS], cut to `max_len` ids. A cut caption loses its EOS, so the model
    is never taught to stop in mid-sentence."""
    ids = tokenizer.encode(caption, add_special_tokens=True)
    if len(ids) <= 2:
        raise SampleError("caption has no tokens")
    return ids[:max_len]


def collate(images: list[np.ndarray], token_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [B, 3, H, W] (a channels-last view of one [B, H, W, 3] block, normalised
    later, on the device) and tokens [B, T] padded to the longest caption of the batch."""
    height, width, channels = images[0].shape
    block = _uint8_block((len(images), height, width, channels))
    np.stack(images, out=block.numpy())
    longest = max(len(t) for t in token_lists)
    tokens = np.full((len(token_lists), longest), pad_id, dtype=np.int64)  # [B, T]
    for i, ids in enumerate(token_lists):
        tokens[i, : len(ids)] = ids
    return block.permute(0, 3, 1, 2), torch.from_numpy(tokens)  # [B, 3, H, W] channels last, [B, T]


def _uint8_block(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty uint8 tensor; in a DataLoader worker, in shared memory from the start (as torch's
    default_collate does), so handing it to the training process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).new(storage).view(shape)


class ImageNormalizer:
    """uint8 image batches [B,3,S,S] -> float, ImageNet-normalised, on `device`; channels last
    on CUDA (the layout the model trains in there), contiguous elsewhere. The layout change rides
    on the float conversion, so it costs no extra pass.

    The mean and std live on the device once: built per step, their host-to-device copy
    would make the CPU wait for the GPU every step.
    """

    def __init__(self, device: torch.device) -> None:
        self.mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)
        self.memory_format = torch.channels_last if self.mean.device.type == "cuda" else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.mean.device, non_blocking=True)
        return images.to(torch.float32, memory_format=self.memory_format).div_(255).sub_(self.mean).div_(self.std)
