"""Image processing: the right reason for every bad input, the right pixels for odd valid ones."""

from __future__ import annotations

import hashlib
import io
import sys

import numpy as np
import pytest
from PIL import Image

from streamcap.downloader import imageproc
from streamcap.downloader.imageproc import ImageOptions, ProcessedImage, Rejection, process_image
from tests.support.images import encode, jpeg_bytes, photo, png_claiming

OPTS = ImageOptions(image_size=256, min_size=64, max_aspect_ratio=10)


def processed(data: bytes, opts: ImageOptions = OPTS) -> ProcessedImage:
    out = process_image(data, opts)
    assert isinstance(out, ProcessedImage), out
    return out


def rejected(data: bytes, opts: ImageOptions = OPTS) -> str:
    out = process_image(data, opts)
    assert isinstance(out, Rejection), out
    return out.reason


def pixels(out: ProcessedImage) -> np.ndarray:
    im = Image.open(io.BytesIO(out.data))
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def test_a_jpeg_is_resized_to_the_shorter_side_and_hashed():
    data = jpeg_bytes(640, 480)
    out = processed(data)
    assert (out.width, out.height, out.orig_width, out.orig_height) == (341, 256, 640, 480)
    assert out.ext == "jpg" and out.data[:3] == b"\xff\xd8\xff"
    assert out.sha256 == hashlib.sha256(data).hexdigest()


def test_a_large_jpeg_decoded_in_draft_mode_keeps_its_content():
    im = Image.new("RGB", (2000, 1500), (200, 30, 30))
    im.paste((30, 30, 200), (1000, 0, 2000, 1500))  # right half blue
    out = processed(encode(im, "JPEG", quality=90))
    px = pixels(out)
    assert (out.width, out.height) == (341, 256)
    assert px[128, 40].tolist() == pytest.approx([200, 30, 30], abs=12)
    assert px[128, 300].tolist() == pytest.approx([30, 30, 200], abs=12)


@pytest.mark.parametrize(
    "mode, size", [("keep_ratio", (341, 256)), ("center_crop", (256, 256)), ("border", (256, 256)), ("no", (640, 480))]
)
def test_resize_modes(mode, size):
    out = processed(jpeg_bytes(640, 480), ImageOptions(resize_mode=mode))
    assert (out.width, out.height) == size


def test_border_pads_with_black_and_center_crop_keeps_the_middle():
    im = Image.new("RGB", (600, 300), (250, 250, 250))
    im.paste((0, 200, 0), (0, 0, 150, 300))  # a green left quarter, cropped away by center_crop
    bordered = pixels(processed(encode(im, "PNG"), ImageOptions(resize_mode="border")))
    assert bordered[5, 128].tolist() == pytest.approx([0, 0, 0], abs=3)  # padding rows
    assert bordered[128, 200].tolist() == pytest.approx([250, 250, 250], abs=6)
    cropped = pixels(processed(encode(im, "PNG"), ImageOptions(resize_mode="center_crop")))
    assert cropped[128, 2].tolist() == pytest.approx([250, 250, 250], abs=6)


def test_webp_output():
    out = processed(jpeg_bytes(320, 240), ImageOptions(image_format="webp", quality=80))
    assert out.ext == "webp" and out.data[:4] == b"RIFF" and out.data[8:12] == b"WEBP"


def test_html_served_as_an_image_is_not_an_image():
    assert rejected(b"<!DOCTYPE html><html><body>Not found</body></html>") == "not_an_image"
    assert rejected(b"") == "not_an_image"


def test_a_truncated_jpeg_is_a_decode_error():
    data = jpeg_bytes(640, 480)
    assert rejected(data[: len(data) // 2]) == "decode_error"


def test_a_jpeg_signature_followed_by_garbage_is_a_decode_error():
    assert rejected(b"\xff\xd8\xff\xe0" + b"\x13" * 500) == "decode_error"


def test_a_png_header_claiming_50000x50000_is_a_bomb_and_never_decoded():
    assert rejected(png_claiming(50_000, 50_000)) == "decompression_bomb"


def test_between_one_and_two_times_the_limit_is_a_bomb_too():
    # Pillow only warns in this range; the limit here is --max-pixels, not Pillow's 2x error.
    opts = ImageOptions(max_pixels=1_000_000)
    assert rejected(png_claiming(1100, 1000), opts) == "decompression_bomb"
    assert rejected(png_claiming(10_000, 10_000)) == "decompression_bomb"  # 100 MP > the default limit


def test_a_real_image_over_max_pixels_is_refused():
    assert rejected(jpeg_bytes(640, 480), ImageOptions(max_pixels=300_000)) == "decompression_bomb"


def test_too_small_and_bad_aspect_ratio():
    assert rejected(encode(Image.new("RGB", (40, 300)), "PNG")) == "too_small"
    assert (
        rejected(encode(Image.new("L", (1, 100_000)), "PNG"), ImageOptions(max_aspect_ratio=10)) == "bad_aspect_ratio"
    )


def test_an_absurd_aspect_ratio_without_limits_cannot_blow_up_the_output():
    opts = ImageOptions(min_size=0, max_aspect_ratio=0)
    assert rejected(encode(Image.new("L", (1, 100_000)), "PNG"), opts) == "decompression_bomb"


def test_cmyk_comes_out_as_the_right_rgb():
    cmyk = Image.new("RGB", (320, 240), (220, 40, 40)).convert("CMYK")
    px = pixels(processed(encode(cmyk, "JPEG", quality=95)))
    assert px[100, 100].tolist() == pytest.approx([220, 40, 40], abs=15)


def test_alpha_becomes_white_not_black():
    im = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    im.paste((10, 160, 10, 255), (100, 100, 200, 200))
    px = pixels(processed(encode(im, "PNG")))
    assert px[10, 10].tolist() == pytest.approx([255, 255, 255], abs=4)
    assert px[128, 128].tolist() == pytest.approx([10, 160, 10], abs=10)


def test_a_palette_image_with_a_transparent_colour_becomes_white_there():
    im = Image.new("P", (200, 200), 0)
    im.putpalette([0, 0, 0, 200, 20, 20] + [0] * 762)
    im.paste(1, (50, 50, 150, 150))
    px = pixels(processed(encode(im, "PNG", transparency=0), ImageOptions(image_size=200)))
    assert px[5, 5].tolist() == pytest.approx([255, 255, 255], abs=4)
    assert px[100, 100].tolist() == pytest.approx([200, 20, 20], abs=10)


def test_exif_orientation_is_applied():
    # Stored 400x200, red left half; orientation 6 means "rotate 90 degrees clockwise to show".
    im = Image.new("RGB", (400, 200), (20, 20, 220))
    im.paste((220, 20, 20), (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = processed(encode(im, "JPEG", quality=95, exif=exif.tobytes()))
    assert (out.orig_width, out.orig_height) == (200, 400)
    assert (out.width, out.height) == (256, 512)
    px = pixels(out)
    assert px[50, 128].tolist() == pytest.approx([220, 20, 20], abs=15)  # red is on top now
    assert px[460, 128].tolist() == pytest.approx([20, 20, 220], abs=15)


def test_16_bit_grey_is_scaled_not_clipped():
    grey = np.full((200, 200), 32768, dtype=np.uint16)  # mid grey in 16 bits
    im = Image.fromarray(grey)
    assert im.mode.startswith("I")
    px = pixels(processed(encode(im, "PNG")))
    assert px[100, 100].tolist() == pytest.approx([128, 128, 128], abs=3)


def test_grayscale_is_stored_as_rgb():
    px = pixels(processed(encode(Image.new("L", (300, 300), 90), "JPEG")))
    assert px[10, 10].tolist() == pytest.approx([90, 90, 90], abs=3)


def test_an_animated_gif_keeps_its_first_frame():
    frames = [Image.new("RGB", (200, 200), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    px = pixels(processed(buf.getvalue(), ImageOptions(image_size=200)))
    assert px[100, 100].tolist() == pytest.approx([200, 0, 0], abs=12)


@pytest.mark.parametrize(
    "fmt, kwargs", [("PNG", {}), ("WEBP", {"quality": 90}), ("BMP", {}), ("TIFF", {}), ("GIF", {})]
)
def test_other_web_formats_are_read(fmt, kwargs):
    out = processed(encode(photo(320, 240), fmt, **kwargs))
    assert (out.width, out.height) == (341, 256)


def test_formats_outside_the_web_set_are_refused():
    assert rejected(encode(photo(100, 100), "PPM")) == "not_an_image"


# --- the simplejpeg path for JPEGs, and where Pillow still decodes them -------------------------------


class SpyCodec:
    """simplejpeg, noting what process_image asks it to decode and what it refused."""

    def __init__(self, real: object) -> None:
        self.real, self.decoded, self.refused = real, [], []

    def decode_jpeg_header(self, data: bytes, *args: object, **kwargs: object) -> tuple:
        return self._call(self.real.decode_jpeg_header, data, *args, **kwargs)

    def decode_jpeg(self, data: bytes, *args: object, **kwargs: object) -> np.ndarray:
        self.decoded.append(kwargs)
        return self._call(self.real.decode_jpeg, data, *args, **kwargs)

    def _call(self, fn, *args: object, **kwargs: object):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.refused.append(e)
            raise


@pytest.fixture
def codec(monkeypatch) -> SpyCodec:
    real = imageproc._simplejpeg()
    assert real is not None, "simplejpeg is a dependency of streamcap: install it (make venv)"
    spy = SpyCodec(real)
    monkeypatch.setattr(imageproc, "_simplejpeg", lambda: spy)
    return spy


def test_a_large_jpeg_is_decoded_by_simplejpeg_at_the_smallest_eighth_covering_the_target(codec):
    out = processed(jpeg_bytes(1600, 1200))
    # 341x256 needs 1600 * m/8 >= 341 and 1200 * m/8 >= 256: m = 2, so 400x300 is decoded.
    assert codec.decoded == [{"min_width": 400, "min_height": 300, "strict": True}]
    assert (out.width, out.height, out.orig_width, out.orig_height) == (341, 256, 1600, 1200)
    cropped = processed(jpeg_bytes(1000, 600), ImageOptions(resize_mode="center_crop"))
    # the 600x600 middle to 256x256: m = 4 (600 * 3/8 = 225 < 256), so 500x300
    assert codec.decoded[-1]["min_width"] == 500 and (cropped.width, cropped.height) == (256, 256)


def test_without_simplejpeg_jpegs_are_decoded_by_pillow_as_before(monkeypatch):
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # what `import simplejpeg` finds: ImportError
    assert imageproc._simplejpeg.__wrapped__() is None
    monkeypatch.setattr(imageproc, "_simplejpeg", lambda: None)
    data = jpeg_bytes(640, 480)
    out = processed(data)
    assert (out.width, out.height) == (341, 256)
    assert out.data == imageproc._process_image_pillow(data, OPTS).data


def test_a_jpeg_cut_short_but_closed_is_still_decoded_by_pillow(codec):
    # Half the scan is missing but the file ends with its EOI marker: libjpeg warns ("premature
    # end of data segment"), simplejpeg refuses, and Pillow decodes it as it always did (the
    # lost half comes out grey).
    data = jpeg_bytes(640, 480)
    cut = data[: len(data) // 2] + b"\xff\xd9"
    out = processed(cut)
    assert len(codec.refused) == 1
    assert out.data == imageproc._process_image_pillow(cut, OPTS).data
    assert pixels(out)[250, 170].tolist() == pytest.approx([128, 128, 128], abs=3)


def test_junk_between_jpeg_markers_is_still_decoded_by_pillow(codec):
    data = jpeg_bytes(640, 480)
    assert data[20:22] == b"\xff\xdb"  # JFIF's APP0 ends here; the quantisation table follows
    junk = data[:20] + b"\x00\x11junk" + data[20:]
    out = processed(junk)
    assert len(codec.refused) == 1
    assert out.data == imageproc._process_image_pillow(junk, OPTS).data


def test_a_truncated_jpeg_is_refused_by_both_decoders(codec):
    data = jpeg_bytes(640, 480)
    assert rejected(data[:-100]) == "decode_error"
    assert len(codec.refused) == 1


def test_jpegs_over_the_pixel_limit_never_reach_simplejpeg(codec):
    assert rejected(jpeg_bytes(640, 480), ImageOptions(max_pixels=300_000)) == "decompression_bomb"
    assert codec.decoded == []


def test_cmyk_jpegs_are_left_to_pillow(codec):
    cmyk = Image.new("RGB", (320, 240), (220, 40, 40)).convert("CMYK")
    processed(encode(cmyk, "JPEG", quality=95))
    assert codec.decoded == []


def test_a_multi_picture_jpeg_keeps_its_first_picture(codec):
    buf = io.BytesIO()
    first, second = Image.new("RGB", (640, 480), (200, 30, 30)), Image.new("RGB", (640, 480), (30, 30, 200))
    first.save(buf, "MPO", save_all=True, append_images=[second], quality=90)
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    px = pixels(processed(buf.getvalue()))
    assert len(codec.decoded) == 1 and not codec.refused
    assert px[128, 170].tolist() == pytest.approx([200, 30, 30], abs=10)


def test_a_grey_jpeg_is_decoded_grey_and_stored_as_rgb(codec):
    im = Image.fromarray(np.tile(np.linspace(0, 255, 800).astype(np.uint8), (600, 1)), "L")
    px = pixels(processed(encode(im, "JPEG", quality=95)))
    assert len(codec.decoded) == 1 and not codec.refused
    assert px[100, 10, 0] == px[100, 10, 1] == px[100, 10, 2]
    assert np.diff(px[100, :, 0]).min() >= -3 and px[100, 330, 0] - px[100, 10, 0] > 200  # still a ramp
