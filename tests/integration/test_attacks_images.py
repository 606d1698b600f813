"""Hostile and odd images through the whole download service (docs/testing.md, attack 17).

Every body is served as `image/jpeg`, whatever it is: the service must judge the bytes, refuse
what is not an image, broken, a decompression bomb or absurdly shaped with the right reason
(before decoding a pixel where the header already tells), and convert the valid odd ones
(animated, palette, transparent, CMYK, 16-bit, grey, 1-bit) to the right RGB pixels.
`tests/unit/test_imageproc.py` checks `process_image` itself; here the same inputs cross the
real HTTP client, the image process pool, the shard writer and the commit, and the test ends
with the accounting check.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.support.fleet import download
from tests.support.http import ImageServer
from tests.support.images import encode, jpeg_bytes, photo, png_claiming
from tests.support.pipeline import enqueue_rows, final_audit, outcomes, samples_by_row

RED, GREEN, BLUE = (200, 30, 30), (30, 180, 40), (30, 40, 200)
WHITE = (255, 255, 255)


def png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, row: bytes | None = None) -> bytes:
    """A real PNG whose every row is `row` (default: zeros), streamed through zlib so even a
    10000x10000 one costs little memory. color_type: 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = row if row is not None else bytes(width * channels * bit_depth // 8)
    line = b"\0" + row  # filter type 0 per row
    packer, idat = zlib.compressobj(6), bytearray()
    block = line * max(1, min(height, 2**22 // len(line)))
    rows_left = height
    while rows_left:
        n = min(rows_left, len(block) // len(line))
        idat += packer.compress(block[: n * len(line)])
        rows_left -= n
    idat += packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (200, 150), colour) for colour in (RED, GREEN, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def transparent_gif() -> bytes:
    im = Image.new("P", (160, 160), 0)
    im.putpalette([0, 0, 0, *GREEN] + [0] * 762)
    im.paste(1, (40, 40, 120, 120))
    return encode(im, "GIF", transparency=0)


def palette_png(transparent: bool) -> bytes:
    im = Image.new("P", (160, 120), 0)
    im.putpalette([*BLUE, *RED] + [0] * 762)
    im.paste(1, (40, 30, 120, 90))
    return encode(im, "PNG", **({"transparency": 0} if transparent else {}))


def half_transparent_rgba() -> bytes:
    im = Image.new("RGBA", (200, 100), (*GREEN, 255))
    im.paste((0, 0, 0, 0), (0, 0, 100, 100))
    return encode(im, "PNG")


@functools.lru_cache(maxsize=1)
def cases() -> dict[str, tuple[bytes, str, list]]:
    """name -> (body, expected outcome, pixel checks: [((x, y) as fractions of the stored image, RGB)])."""
    return {
        "html": (b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>", "not_an_image", []),
        "empty": (b"", "not_an_image", []),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>', "not_an_image", []),
        "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n", "not_an_image", []),
        "truncated.jpg": (jpeg_bytes(640, 480)[:6000], "decode_error", []),
        "jpeg-then-html": (b"\xff\xd8\xff\xe0" + b"<html>" * 200, "decode_error", []),
        "claims-50000.png": (png_claiming(50_000, 50_000), "decompression_bomb", []),
        "real-10000.png": (png(10_000, 10_000, row=b"\x80" * 10_000), "decompression_bomb", []),
        "1x100000.png": (png(1, 100_000), "too_small", []),
        "100000x64.png": (png(100_000, 64), "bad_aspect_ratio", []),
        "animated.gif": (animated_gif(), "sample", [((0.5, 0.5), RED)]),  # the first frame
        "transparent.gif": (transparent_gif(), "sample", [((0.05, 0.05), WHITE), ((0.5, 0.5), GREEN)]),
        "palette.png": (palette_png(False), "sample", [((0.05, 0.05), BLUE), ((0.5, 0.5), RED)]),
        "palette-trns.png": (palette_png(True), "sample", [((0.05, 0.05), WHITE), ((0.5, 0.5), RED)]),
        "rgba.png": (half_transparent_rgba(), "sample", [((0.2, 0.5), WHITE), ((0.8, 0.5), GREEN)]),
        "cmyk.jpg": (
            encode(Image.new("RGB", (300, 200), RED).convert("CMYK"), "JPEG", quality=95),
            "sample",
            [((0.5, 0.5), RED)],
        ),
        "grey16.png": (
            png(120, 90, bit_depth=16, color_type=0, row=b"\xa0\x00" * 120),
            "sample",
            [((0.5, 0.5), (160,) * 3)],
        ),
        "rgb48.png": (
            png(120, 90, bit_depth=16, color_type=2, row=b"\xc8\x00\x32\x00\x19\x00" * 120),
            "sample",
            [((0.5, 0.5), (200, 50, 25))],
        ),
        "grey-alpha.png": (encode(Image.new("LA", (100, 100), (90, 255)), "PNG"), "sample", [((0.5, 0.5), (90,) * 3)]),
        "1bit.png": (encode(Image.new("1", (128, 128), 1), "PNG"), "sample", [((0.5, 0.5), WHITE)]),
        "large.jpg": (encode(photo(2400, 1600), "JPEG", quality=90), "sample", []),  # decoded at a reduced scale
        "webp": (encode(Image.new("RGB", (200, 200), BLUE), "WEBP", quality=90), "sample", [((0.5, 0.5), BLUE)]),
        "bmp": (encode(Image.new("RGB", (200, 100), GREEN), "BMP"), "sample", [((0.5, 0.5), GREEN)]),
    }


def served(server: ImageServer) -> list[str]:
    urls = []
    for name, (body, _, _) in cases().items():
        server.images[name] = body
        urls.append(server.url(f"/img/{name}"))
    return urls


def test_odd_images_get_the_right_reason_or_the_right_pixels(r, keys, redis_url, tmp_path):
    with ImageServer() as server:
        urls = served(server)
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, urls, part_size=8)
        ran = download(redis_url, keys, shard_dir, tmp_path / "download.log", "--allow-private")
        assert ran.returncode == 0, ran.log
    rows, samples = outcomes(shard_dir), samples_by_row(shard_dir)
    for row, (name, (_, expected, checks)) in enumerate(cases().items()):
        assert rows[row][0] == expected, (name, rows[row])
        if expected != "sample":
            continue
        sample = samples[row]
        im = np.asarray(Image.open(io.BytesIO(sample.image)))
        assert im.ndim == 3 and im.shape[2] == 3 and min(im.shape[:2]) == 256, (name, im.shape)  # RGB, shorter side 256
        for (fx, fy), colour in checks:
            pixel = im[int(fy * (im.shape[0] - 1)), int(fx * (im.shape[1] - 1))].tolist()
            assert pixel == pytest.approx(list(colour), abs=14), (name, (fx, fy), pixel)
    assert rows[list(cases()).index("claims-50000.png")][1] == "2500000000 pixels > --max-pixels 89478485"
    report = final_audit(r, keys, shard_dir)
    assert report.samples == sum(1 for _, expected, _ in cases().values() if expected == "sample")


def test_without_size_limits_an_absurd_shape_still_cannot_blow_up_the_resize(r, keys, redis_url, tmp_path):
    # 1 x 100000 resized to a 256 px shorter side would be 256 x 25,600,000 pixels.
    with ImageServer() as server:
        server.images.update({"tall.png": png(1, 100_000), "wide.png": png(100_000, 1), "ok.png": png(300, 200)})
        shard_dir = tmp_path / "shards"
        enqueue_rows(r, keys, shard_dir, [server.url(f"/img/{n}") for n in ("tall.png", "wide.png", "ok.png")], 3)
        ran = download(
            redis_url,
            keys,
            shard_dir,
            tmp_path / "download.log",
            "--allow-private",
            "--min-size",
            "0",
            "--max-aspect-ratio",
            "0",
        )
        assert ran.returncode == 0, ran.log
    rows = outcomes(shard_dir)
    assert [rows[i][0] for i in range(3)] == ["decompression_bomb", "decompression_bomb", "sample"]
    assert "over --max-pixels" in rows[0][1]
    final_audit(r, keys, shard_dir)
