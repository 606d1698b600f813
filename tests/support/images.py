"""The one image maker of the tests: smooth, photo-like pictures in any size and format.

    jpeg_bytes(320, 240, seed=3)                  # JPEG bytes of a photo-like image
    encode(photo(300, 200), "PNG")                # any format Pillow writes
    png_claiming(50_000, 50_000)                  # a 1x1 PNG whose header claims 50,000 x 50,000
    save_image(root / "images" / "1001.jpg", 7)   # a file of an evaluation set (format by suffix)

Images compress like photos (not like noise or a flat colour), and each seed gives another one.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image: random colours on a coarse grid, scaled up bicubically."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((height // 16 + 2, width // 16 + 2, 3)) * 255).astype(np.uint8))
    return base.resize((width, height), Image.Resampling.BICUBIC)


def encode(im: Image.Image, fmt: str = "JPEG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg_bytes(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=85)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (nothing else is there)."""
    raw = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = bytearray(raw[12:29])  # b'IHDR' + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(raw)


def save_image(path: Path, seed: int, size: int = 48) -> Path:
    """A photo of its own per seed, (size + seed % 7) x size, saved in the format of path's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(size + seed % 7, size, seed).save(path)
    return path
