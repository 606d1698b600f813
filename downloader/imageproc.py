"""Image processing: downloaded bytes -> a stored image of the configured size, or a reason.

    opts = ImageOptions(image_size=256, resize_mode="keep_ratio", image_format="jpg", quality=95)
    out = process_image(data, opts)
    if isinstance(out, Rejection):
        out.reason                  # not_an_image, decode_error, decompression_bomb, too_small, ...
    else:
        out.data, out.ext, out.width, out.height, out.orig_width, out.orig_height, out.sha256

The format is detected from the bytes, never from the Content-Type. Size filters and the
decompression-bomb limit are applied to the header's dimensions (Pillow's, read without
decoding), before any pixel is decoded. Resizing happens before EXIF rotation and colour
conversion, so both touch only the small image.

Large JPEGs are decoded at a reduced scale (libjpeg's DCT scaling), which is most of the speed:
a 1600x1067 photo stored at 256 px decodes as 400x267. RGB and grey JPEGs are decoded by
simplejpeg (libjpeg-turbo), which scales by any M/8, the smallest that covers the target, and
then shrunk the rest of the way (under 2x, mostly under 1.35x) with BILINEAR. Pillow's decoder
only scales by 1/2, 1/4 or 1/8 ("draft"), which leaves up to 2x to shrink, done with BOX to stay
as cheap. Both cost the same CPU on the download benchmark's JPEGs (medians 3.86-3.91 ms per
image for Pillow's path, 3.89-3.94 for simplejpeg's on the 2-core CI machine; run
benchmarks/imageproc.py): both bundle libjpeg-turbo 3, whose entropy decoding (~1.7 of the
~2.3 ms decode) no scale avoids, and the copy of simplejpeg's array into Pillow (0.09 ms) takes
back what its decode saves. What simplejpeg buys is the picture: the stored image is 1.6-11 dB
(4.5 on average) closer in luma PSNR to a full decode + LANCZOS resize
(tests/unit/test_imageproc_quality.py).

Pillow still decodes every other format, CMYK/YCCK JPEGs, any JPEG libjpeg warns about (a
truncated or corrupt file: Pillow decodes some of those and refuses the rest, as it always
did), and every JPEG where simplejpeg is not installed. Pillow also encodes: simplejpeg's
encoder always uses libjpeg-turbo's fast integer DCT (its fastdct=False changes no byte), which
at quality 95 stores 7 dB lower luma PSNR at the same size, and it is no faster once the pixels
are copied out of Pillow.

The function is pure and picklable: `downloader.imagepool` runs it in worker processes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from streamcap.common.logs import first_line
from streamcap.downloader.config import DownloaderSettings

if TYPE_CHECKING:  # numpy is imported where it is used: rare images only
    import numpy as np

# The formats a web image comes in; anything else Pillow could open (EPS, PSD, ...) is refused.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
# Signatures of those formats: bytes that start like an image but fail to open are broken
# images (decode_error), anything else is not an image at all (e.g. an HTML error page).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Downscaling averages the source pixels each output pixel covers (BOX, what OpenCV calls
# INTER_AREA and img2dataset uses), after reduce() by an integer factor down to at most 2x the
# target. On the download benchmark's images: 1.1 ms per image, against 2.1 ms for BILINEAR,
# 3.5 ms for BICUBIC and 4.3 ms for LANCZOS. Upscaling (small images) uses BICUBIC.
_DOWNSCALE = Image.Resampling.BOX
# After simplejpeg's decode at M/8, what is left to shrink is under 2x and mostly under 1.35x,
# where BOX is little better than nearest-neighbour: on 39 photo sizes, BOX there lands 4.4 dB
# below the Pillow path at worst, BILINEAR (antialiased, as all of Pillow's filters) 1.6-10.9 dB
# above it (4.5 on average). From the smaller decode it costs 0.8 ms, what BOX costs from draft's.
_DOWNSCALE_DCT = Image.Resampling.BILINEAR
_UPSCALE = Image.Resampling.BICUBIC
_REDUCING_GAP = 2.0
# Formats whose EXIF block, if any, Pillow keeps in im.info["exif"]: no block, no parsing
# (getexif() costs ~0.8 ms even on a JPEG without orientation).
_EXIF_IN_INFO = frozenset({"JPEG", "MPO", "PNG", "WEBP", "AVIF"})
_BORDER_COLOR = (0, 0, 0)
_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as browsers show them
_Box = tuple[float, float, float, float]  # left, top, right, bottom
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, MemoryError)


@dataclass(frozen=True)
class ImageOptions:
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    image_format: str = "jpg"
    quality: int = 95
    max_pixels: int = 89_478_485
    min_size: int = 0
    max_aspect_ratio: float = 0.0

    @classmethod
    def from_settings(cls, cfg: DownloaderSettings) -> ImageOptions:
        return cls(
            image_size=cfg.image_size,
            resize_mode=cfg.resize_mode,
            image_format=cfg.image_format,
            quality=cfg.quality,
            max_pixels=cfg.max_pixels,
            min_size=cfg.min_size,
            max_aspect_ratio=cfg.max_aspect_ratio,
        )


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes
    ext: str
    width: int
    height: int
    orig_width: int  # as displayed (after EXIF rotation)
    orig_height: int
    sha256: str  # of the downloaded bytes


@dataclass(frozen=True)
class Rejection:
    reason: str  # one of streamcap.formats.records.FAILURE_REASONS
    detail: str = ""


def process_image(data: bytes, opts: ImageOptions) -> ProcessedImage | Rejection:
    """Decode, check, resize and re-encode one image; never raises for bad input.

    Not thread-safe (it sets Pillow's global pixel limit and a warnings filter): run it in one
    thread per process, as `downloader.imagepool` does.
    """
    return _process(data, opts, fast_jpeg=True)


def _process_image_pillow(data: bytes, opts: ImageOptions) -> ProcessedImage | Rejection:
    """process_image with every image through Pillow (the path before simplejpeg): what the
    quality test and benchmarks/imageproc.py compare the simplejpeg path against."""
    return _process(data, opts, fast_jpeg=False)


def _process(data: bytes, opts: ImageOptions, fast_jpeg: bool) -> ProcessedImage | Rejection:
    sha256 = hashlib.sha256(data).hexdigest()
    # Pillow only warns between 1x and 2x its limit; as an error, any image over --max-pixels
    # fails at open, before a pixel is decoded.
    Image.MAX_IMAGE_PIXELS = opts.max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return _bomb(e, opts)
        except UnidentifiedImageError:
            if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
                return Rejection("decode_error", "image header is broken")
            return Rejection("not_an_image", f"unknown content starting {data[:16]!r}")
        except _DECODE_ERRORS as e:
            return Rejection("decode_error", first_line(e, 200))
        try:
            with im:
                return _process_open(im, data, opts, sha256, fast_jpeg)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return _bomb(e, opts)
        except _DECODE_ERRORS as e:
            return Rejection("decode_error", first_line(e, 200))


def _bomb(e: BaseException, opts: ImageOptions) -> Rejection:
    """Pillow's bomb error names its own limit (twice ours, where it errors instead of warning):
    say which setting the image is over instead."""
    pixels = re.search(r"\((\d+) pixels\)", str(e))
    if pixels is None:
        return Rejection("decompression_bomb", first_line(e, 200))
    return Rejection("decompression_bomb", f"{pixels[1]} pixels > --max-pixels {opts.max_pixels}")


def _process_open(
    im: Image.Image, data: bytes, opts: ImageOptions, sha256: str, fast_jpeg: bool
) -> ProcessedImage | Rejection:
    w, h = im.size
    if w < 1 or h < 1:
        return Rejection("decode_error", f"image is {w}x{h}")
    if w * h > opts.max_pixels:
        return Rejection("decompression_bomb", f"{w}x{h} = {w * h} pixels > --max-pixels {opts.max_pixels}")
    if min(w, h) < opts.min_size:
        return Rejection("too_small", f"{w}x{h}: shorter side < --min-size {opts.min_size}")
    ratio = max(w, h) / min(w, h)
    if opts.max_aspect_ratio and ratio > opts.max_aspect_ratio:
        return Rejection("bad_aspect_ratio", f"{w}x{h}: aspect ratio {ratio:.1f} > {opts.max_aspect_ratio:g}")
    orientation = _orientation(im)
    target, box = _target(w, h, opts)
    if target[0] * target[1] > opts.max_pixels:
        return Rejection("decompression_bomb", f"resized to {target[0]}x{target[1]}: over --max-pixels")
    decoded = _decode_simplejpeg(im, data, target, box) if fast_jpeg else None
    if decoded is not None:
        im, scale, downscale = decoded
    else:
        (im, scale), downscale = _decode_pillow(im, target, box), _DOWNSCALE
    if box is not None:
        # The decoder's scale maps the box exactly (a partly covered last pixel stays partly in).
        scaled_box = (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
        if im.size != target or scaled_box != (0, 0, *im.size):
            shrinking = target[0] <= scaled_box[2] - scaled_box[0] and target[1] <= scaled_box[3] - scaled_box[1]
            resample = downscale if shrinking else _UPSCALE
            im = im.resize(target, resample, box=scaled_box, reducing_gap=_REDUCING_GAP)
    im = _to_rgb(im)
    if opts.resize_mode == "border" and im.size != (opts.image_size, opts.image_size):
        canvas = Image.new("RGB", (opts.image_size, opts.image_size), _BORDER_COLOR)
        canvas.paste(im, ((opts.image_size - im.size[0]) // 2, (opts.image_size - im.size[1]) // 2))
        im = canvas
    if orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orientation])
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    data, ext = _encode(im, opts)
    return ProcessedImage(
        data=data, ext=ext, width=im.size[0], height=im.size[1], orig_width=ow, orig_height=oh, sha256=sha256
    )


def _decode_pillow(im: Image.Image, target: tuple[int, int], box: _Box | None) -> tuple[Image.Image, float]:
    """(pixels in a mode resize handles, the scale they were decoded at)."""
    scale = 1.0
    if im.format in ("JPEG", "MPO") and box is not None:  # MPO: multi-picture JPEG
        # Decode at the smallest DCT scale that still covers the target (>= target on both sides):
        # 1/2, 1/4 or 1/8 here. draft() returns the whole image's box in the decoded pixels.
        w, h = im.size
        wanted = min(target[0] / (box[2] - box[0]), target[1] / (box[3] - box[1]))
        if wanted < 1:
            drafted = im.draft("RGB", (math.ceil(w * wanted), math.ceil(h * wanted)))
            if drafted is not None:
                scale = drafted[1][2] / w
    im.load()
    return _to_resizable(im), scale


def _decode_simplejpeg(
    im: Image.Image, data: bytes, target: tuple[int, int], box: _Box | None
) -> tuple[Image.Image, float, Image.Resampling] | None:
    """(RGB or L pixels, their scale, the filter that shrinks them) from libjpeg-turbo, which
    decodes at any scale M/8: the smallest that covers the target. None where Pillow decodes:
    not a JPEG, CMYK/YCCK, no simplejpeg on this platform, a header libjpeg reads otherwise
    than Pillow did, and any libjpeg error or warning (a truncated or corrupt file: Pillow
    decodes some of those and refuses the others, as it did before simplejpeg)."""
    if im.format not in ("JPEG", "MPO") or im.mode not in ("RGB", "L"):  # MPO: its frame 0 starts the file
        return None
    codec = _simplejpeg()
    if codec is None:
        return None
    w, h = im.size
    grey = im.mode == "L"
    eighths = 8
    if box is not None:
        bw, bh = box[2] - box[0], box[3] - box[1]
        eighths = next((m for m in range(1, 8) if bw * m >= 8 * target[0] and bh * m >= 8 * target[1]), 8)
    size = (-(-w * eighths // 8), -(-h * eighths // 8))  # libjpeg's size at that scale: rounded up
    try:
        # The header libjpeg decodes must be the one the checks passed: same size, same colours.
        height, width, colorspace, _ = codec.decode_jpeg_header(data)
        if (width, height) != (w, h) or colorspace not in (("Gray",) if grey else ("YCbCr", "RGB")):
            return None
        pixels = codec.decode_jpeg(data, "GRAY" if grey else "RGB", min_width=size[0], min_height=size[1], strict=True)
    except Exception:  # ValueError for libjpeg's errors and warnings; anything else: Pillow decides
        return None
    if pixels.shape[:2] != (size[1], size[0]):
        return None
    return Image.fromarray(pixels.reshape(pixels.shape[:2]) if grey else pixels), eighths / 8, _DOWNSCALE_DCT


@functools.cache
def _simplejpeg() -> Any:
    """The simplejpeg module, or None on a platform without it. Imported on first use: it
    brings numpy, which the event loop's process, importing this module, never needs."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _target(w: int, h: int, opts: ImageOptions) -> tuple[tuple[int, int], _Box | None]:
    """(output size, source box to resize from); box None means keep the pixels as they are."""
    size = opts.image_size
    if opts.resize_mode == "no":
        return (w, h), None
    if opts.resize_mode == "center_crop":
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        return (size, size), (left, top, left + side, top + side)
    scale = size / (min(w, h) if opts.resize_mode == "keep_ratio" else max(w, h))
    return (max(1, round(w * scale)), max(1, round(h * scale))), (0, 0, w, h)


def _orientation(im: Image.Image) -> int:
    if im.format in _EXIF_IN_INFO and "exif" not in im.info:
        return 1
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not cost the image; display it unrotated
        return 1


def _to_resizable(im: Image.Image) -> Image.Image:
    """A mode resize handles well: RGB, L, RGBA or LA (8 bits per channel)."""
    mode = im.mode
    if mode in ("RGB", "L", "RGBA", "LA"):
        return im
    if mode == "P" or mode == "PA":
        return im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    if mode.startswith("I") or mode == "F":
        import numpy as np

        return Image.fromarray(_to_8bit(np.asarray(im)), "L")
    if mode == "1":
        return im.convert("L")
    if mode in ("RGBa", "La"):
        return im.convert(mode.upper())
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _to_8bit(a: np.ndarray) -> np.ndarray:
    """16-bit or float grey to 8 bits by scaling (Pillow's own convert would clip at 255)."""
    import numpy as np  # rare images only; the worker boots faster without it

    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32))
        a = a * 255 if a.max(initial=0) <= 1.0 else a
        return np.clip(a, 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    if a.max(initial=0) > 255:
        a = a >> 8
    return np.clip(a, 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", im.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")


def _encode(im: Image.Image, opts: ImageOptions) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if opts.image_format == "webp":
        im.save(buf, "WEBP", quality=opts.quality, method=4)
    else:
        im.save(buf, "JPEG", quality=opts.quality)
    return buf.getvalue(), opts.image_format
