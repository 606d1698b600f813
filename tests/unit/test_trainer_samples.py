"""One raw sample to training inputs: caption choice at load time, decoding, tokens, collation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from streamcap.formats.shards import Sample
from streamcap.text.tokenizer import WordPieceTokenizer
from streamcap.trainer.samples import CaptionChoice, SampleError, choose_caption, collate, decode_image, encode_caption

RAW = "A red car is parked. It is near a tree. The sky is blue."
WORDS = "a red car is parked it near tree the sky blue . dog runs".split()


def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])


def sample(caption: str = "A red car is parked.", **meta) -> Sample:
    return Sample(
        key="k_000000000001",
        image=b"",
        image_ext="jpg",
        caption=caption,
        meta={"caption_raw": RAW, "captions": {"alt_txt": "a dog runs"}} | meta,
    )


def jpeg(width: int, height: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


def test_caption_as_stored_by_default():
    assert choose_caption(sample(), CaptionChoice()) == "A red car is parked."


@pytest.mark.parametrize(
    "sentences, expected",
    [
        (1, "A red car is parked."),
        (2, "A red car is parked. It is near a tree."),
        (0, RAW),
    ],
)
def test_caption_recut_from_the_raw_text(sentences, expected):
    assert choose_caption(sample(), CaptionChoice(sentences=sentences)) == expected


def test_another_caption_column_kept_in_the_json():
    assert choose_caption(sample(), CaptionChoice(column="alt_txt")) == "a dog runs"
    assert choose_caption(sample(), CaptionChoice(column="caption_raw")) == "A red car is parked. It is near a tree."
    with pytest.raises(SampleError, match="no caption column 'llava_caption'.*alt_txt"):
        choose_caption(sample(), CaptionChoice(column="llava_caption"))
    with pytest.raises(SampleError, match="empty caption"):
        choose_caption(sample(caption="  "), CaptionChoice())


def test_tokens_are_wrapped_and_a_cut_caption_loses_its_eos():
    tok = tokenizer()
    full = encode_caption(tok, "a red car is parked", max_len=32)
    assert full[0] == tok.bos_id and full[-1] == tok.eos_id and len(full) == 7
    cut = encode_caption(tok, "a red car is parked", max_len=4)
    assert cut == full[:4] and tok.eos_id not in cut
    with pytest.raises(SampleError, match="no tokens"):
        encode_caption(tok, "", max_len=8)


@pytest.mark.parametrize("size", [(64, 48), (300, 200)])
def test_jpeg_decodes_to_rgb_at_least_the_training_size(size):
    image = decode_image(jpeg(*size), "jpg", min_side=40)
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert min(image.shape[:2]) >= 40
    assert abs(int(image[5, 5, 0]) - 200) < 8
    if size == (300, 200):  # large: draft-decoded smaller than stored, never below the minimum
        assert image.shape[:2] == (50, 75)


def test_webp_and_broken_images():
    assert decode_image(jpeg(50, 40, "WEBP"), "webp", min_side=32).shape == (40, 50, 3)
    with pytest.raises(SampleError, match="does not decode"):
        decode_image(b"\xff\xd8not really a jpeg", "jpg", min_side=32)
    with pytest.raises(SampleError, match="does not decode"):
        decode_image(jpeg(80, 80)[:300], "jpg", min_side=32)


def test_collate_pads_to_the_longest_caption():
    images = [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)]
    batch, tokens = collate(images, [[2, 5, 3], [2, 5, 6, 7, 3]], pad_id=0)
    assert batch.shape == (2, 3, 8, 8) and batch.dtype.is_floating_point is False
    assert tokens.tolist() == [[2, 5, 3, 0, 0], [2, 5, 6, 7, 3]]
