"""The simplejpeg path stores images at least as close to an ideal resize as the Pillow path did.

The reference is the best resize Pillow has: a full decode and a LANCZOS resize to the stored
size. Both paths are scored by the PSNR of their stored JPEG's luma (Y of BT.601) against it.
On these images (run with -s to see them): Pillow path (1/2, 1/4 or 1/8 draft + BOX) 35.0-42.3
dB, simplejpeg path (M/8 scaled decode + BILINEAR) 42.9-45.7 dB.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from streamcap.downloader.imageproc import (
    ImageOptions,
    ProcessedImage,
    _process_image_pillow,
    _simplejpeg,
    process_image,
)

TOLERANCE_DB = 0.1


def photo_jpeg(width: int, height: int, seed: int, **save: object) -> bytes:
    """Smooth structure and fine grain, like benchmarks/download.py's images."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((height // 24 + 2, width // 24 + 2, 3)) * 255).astype(np.uint8))
    smooth = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    grain = rng.normal(0, 7, (height, width, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(buf, "JPEG", **{"quality": 85, **save})
    return buf.getvalue()


def luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def psnr(stored: ProcessedImage, reference: np.ndarray) -> float:
    got = np.asarray(Image.open(io.BytesIO(stored.data)).convert("RGB"))
    mse = float(np.mean((luma(got) - luma(reference)) ** 2))
    return 10 * np.log10(255**2 / mse)


def reference(data: bytes, out: ProcessedImage, opts: ImageOptions) -> np.ndarray:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    if opts.resize_mode == "center_crop":
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        return np.asarray(im.resize((out.width, out.height), Image.Resampling.LANCZOS, box=box))
    if opts.resize_mode == "border":  # the picture, black bars above and below or left and right
        scale = opts.image_size / max(w, h)
        inner = im.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (out.width, out.height))
        canvas.paste(inner, ((out.width - inner.size[0]) // 2, (out.height - inner.size[1]) // 2))
        return np.asarray(canvas)
    return np.asarray(im.resize((out.width, out.height), Image.Resampling.LANCZOS))


@pytest.mark.parametrize(
    "size, opts, save",
    [
        ((1600, 1067), ImageOptions(), {}),
        ((1200, 800), ImageOptions(), {}),
        ((900, 600), ImageOptions(), {}),
        ((513, 400), ImageOptions(), {}),
        ((1600, 1067), ImageOptions(resize_mode="center_crop"), {}),
        ((900, 600), ImageOptions(image_size=384), {"progressive": True}),
        ((1000, 700), ImageOptions(resize_mode="border"), {"subsampling": 0}),
    ],
    ids=["1600x1067", "1200x800", "900x600", "513x400", "center_crop", "progressive-384", "border-444"],
)
def test_the_simplejpeg_path_is_as_close_to_lanczos_as_the_pillow_path(size, opts, save):
    assert _simplejpeg() is not None, "simplejpeg is a dependency of streamcap: install it (make venv)"
    for seed in range(2):
        data = photo_jpeg(*size, seed=seed, **save)
        new, old = process_image(data, opts), _process_image_pillow(data, opts)
        assert isinstance(new, ProcessedImage) and isinstance(old, ProcessedImage)
        assert (new.width, new.height, new.orig_width, new.orig_height) == (
            old.width,
            old.height,
            old.orig_width,
            old.orig_height,
        )
        ref = reference(data, new, opts)
        new_db, old_db = psnr(new, ref), psnr(old, ref)
        print(f"{size[0]}x{size[1]} {opts.resize_mode} seed {seed}: simplejpeg {new_db:.2f} dB, pillow {old_db:.2f} dB")
        assert new_db >= old_db - TOLERANCE_DB
