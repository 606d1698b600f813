"""Captioning image files with a checkpoint: what `streamcap caption` runs.

    ckpt = load_checkpoint("step-001000.pt")
    for result in caption_images(ckpt, expand_image_args(["photo.jpg", "album/", "shots/*.png"])):
        print(result.path, result.caption or result.error)

A missing file, a directory without images, a glob without matches or a file that is no image
becomes a result with an `error` (one line); every other image still gets its caption.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from streamcap.model.caption_model import image_transform
from streamcap.model.checkpoint import LoadedCheckpoint
from streamcap.model.decoding import beam_search_with_scores

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageItem:
    path: str
    error: str | None = None  # set when the argument named no readable file


@dataclass(frozen=True)
class CaptionResult:
    path: str
    caption: str | None = None
    score: float | None = None  # length-normalised log-probability (streamcap.model.decoding)
    error: str | None = None

    def to_json(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "caption": self.caption, "score": self.score}


@dataclass(frozen=True)
class DecodeOptions:
    beam: int = 5
    alpha: float = 0.6
    max_len: int = 30
    min_len: int = 0
    no_repeat_ngram: int = 0
    batch_size: int = 16


def expand_image_args(args: Iterable[str]) -> list[ImageItem]:
    """Files as given, directories as their image files (recursively, sorted), globs expanded."""
    items: list[ImageItem] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            items += [ImageItem(str(p)) for p in found] or [ImageItem(arg, "directory holds no image files")]
        elif path.exists():
            items.append(ImageItem(arg))
        elif glob.has_magic(arg):
            matches = sorted(m for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            items += [ImageItem(m) for m in matches] or [ImageItem(arg, "no file matches this pattern")]
        else:
            items.append(ImageItem(arg, "no such file"))
    return items


def load_image(path: str) -> Image.Image:
    """The decoded image, or ValueError with a one-line reason."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except UnidentifiedImageError:
        raise ValueError("not an image (no format Pillow can read)") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"image too large to decode safely ({e})") from None
    except (OSError, SyntaxError) as e:  # truncated or corrupt data, unreadable file
        raise ValueError(f"cannot read image ({e})") from None


def caption_images(
    ckpt: LoadedCheckpoint,
    items: list[ImageItem],
    options: DecodeOptions = DecodeOptions(),
    device: torch.device | str = "cpu",
) -> Iterator[CaptionResult]:
    """One result per item, in order; images are decoded and captioned in batches."""
    transform = image_transform(ckpt.config)
    model = ckpt.model.to(device).eval()
    pending: list[tuple[str, torch.Tensor]] = []
    for item in items:
        if item.error is not None:
            yield from _flush(ckpt, model, pending, options, device)
            yield CaptionResult(item.path, error=item.error)
            continue
        try:
            pending.append((item.path, transform(load_image(item.path))))
        except ValueError as e:
            yield from _flush(ckpt, model, pending, options, device)
            yield CaptionResult(item.path, error=str(e))
            continue
        if len(pending) >= options.batch_size:
            yield from _flush(ckpt, model, pending, options, device)
    yield from _flush(ckpt, model, pending, options, device)


def _flush(
    ckpt: LoadedCheckpoint,
    model,
    pending: list[tuple[str, torch.Tensor]],
    options: DecodeOptions,
    device: torch.device | str,
) -> Iterator[CaptionResult]:
    if not pending:
        return
    images = torch.stack([x for _, x in pending]).to(device)
    results = beam_search_with_scores(
        model,
        images,
        beam_size=options.beam,
        alpha=options.alpha,
        max_len=options.max_len,
        min_len=options.min_len,
        no_repeat_ngram=options.no_repeat_ngram,
    )
    for (path, _), (ids, score) in zip(pending, results):
        yield CaptionResult(path, caption=ckpt.tokenizer.decode(ids), score=score)
    pending.clear()


def pick_device(name: str) -> torch.device:
    """'auto' is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device
