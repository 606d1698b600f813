"""Decoding with simplejpeg (libjpeg-turbo, DCT-domain scaling) gives the images the previous
decoder gave (torchvision's decode_jpeg, Pillow's draft mode for large JPEGs), handles what it
handled, and batches reach the training step as the same uint8 pixels, without a copy."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from streamcap.trainer import samples
from streamcap.trainer.samples import ImageNormalizer, SampleError, collate, decode_image
from tests.support.images import encode, photo


def previous_decode(data: bytes, ext: str, min_side: int) -> np.ndarray:
    """trainer.samples.decode_image as it was before simplejpeg: the reference."""
    if ext == "jpg":
        with Image.open(io.BytesIO(data)) as probe:
            if min(probe.size) >= 2 * min_side:
                probe.draft("RGB", (min_side, min_side))
                return np.asarray(probe.convert("RGB"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        return tensor.permute(1, 2, 0).numpy()
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def assert_same_image(new: np.ndarray, old: np.ndarray) -> None:
    assert new.dtype == np.uint8 and new.shape == old.shape
    assert np.abs(new.astype(np.int16) - old).mean() < 1.0


@pytest.mark.parametrize(
    ("size", "min_side", "decoded"),
    [
        ((384, 384), 384, (384, 384)),  # the base preset's sizes: full decode
        ((256, 256), 384, (256, 256)),  # stored smaller than trained: full decode
        ((300, 200), 40, (50, 75)),  # large: 1/4 scale, never below the minimum
        ((768, 768), 384, (384, 384)),  # exactly twice: 1/2 scale
        ((800, 700), 384, (700, 800)),  # short side under twice the minimum: full decode
        ((512, 384), 64, (96, 128)),  # 1/4, not 1/8 (48 < 64)
    ],
)
@pytest.mark.parametrize("options", [{"quality": 95}, {"quality": 80, "progressive": True}, {"subsampling": 0}])
def test_jpeg_decodes_to_the_previous_image(size, min_side, decoded, options):
    data = encode(photo(*size, seed=sum(size)), "JPEG", **options)
    new = decode_image(data, "jpg", min_side)
    assert new.shape == (*decoded, 3)
    assert_same_image(new, previous_decode(data, "jpg", min_side))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
@pytest.mark.parametrize("min_side", [40, 150])
def test_grey_and_cmyk_jpegs_decode_to_rgb_as_before(mode, min_side):
    data = encode(photo(300, 200, seed=3).convert(mode), "JPEG", quality=95)
    new = decode_image(data, "jpg", min_side)
    assert new.shape[2] == 3
    assert_same_image(new, previous_decode(data, "jpg", min_side))


@pytest.mark.parametrize(("fmt", "ext"), [("WEBP", "webp"), ("PNG", "png")])
def test_webp_and_png_as_before(fmt, ext):
    im = photo(120, 90, seed=5)
    for image in (im, im.convert("RGBA"), im.convert("L")):
        data = encode(image, fmt)
        assert_same_image(decode_image(data, ext, 32), previous_decode(data, ext, 32))


def test_broken_jpegs_are_sample_errors():
    good = encode(photo(200, 160, seed=9), "JPEG", quality=95)
    for broken in (good[: len(good) * 6 // 10], good[:300], b"\xff\xd8not really a jpeg", b""):
        with pytest.raises(SampleError, match="does not decode"):
            decode_image(broken, "jpg", min_side=32)


def test_a_jpeg_over_pillows_pixel_limit_still_fails(monkeypatch):
    """A decompression bomb fails as it did with Pillow, before libjpeg-turbo allocates it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(SampleError, match="does not decode"):
        decode_image(encode(photo(100, 100), "JPEG"), "jpg", min_side=32)  # over twice the limit


def test_collate_hands_over_the_same_pixels_channels_last(monkeypatch):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    previous = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    batch, tokens = collate(images, [[2, 5, 3], [2, 3], [2, 5, 6, 3]], pad_id=0)
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.uint8 and batch.equal(previous)
    assert batch.is_contiguous(memory_format=torch.channels_last)  # no transpose in the worker
    assert tokens.dtype == torch.long and tokens.tolist() == [[2, 5, 3, 0], [2, 3, 0, 0], [2, 5, 6, 3]]
    assert not batch.is_shared()
    # In a DataLoader worker the block is born in shared memory: sending it copies nothing.
    monkeypatch.setattr(samples, "get_worker_info", lambda: object())
    shared, _ = collate(images, [[2, 3]] * 3, pad_id=0)
    assert shared.is_shared() and shared.equal(previous)


def test_normalizer_gives_the_previous_model_input():
    rng = np.random.default_rng(1)
    batch, _ = collate([rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)], [[2, 3]] * 2, 0)
    normalize = ImageNormalizer(torch.device("cpu"))
    out = normalize(batch)
    previous = batch.contiguous().float().div(255).sub(normalize.mean).div(normalize.std)
    assert out.is_contiguous() and out.dtype == torch.float32
    assert torch.equal(out, previous)
