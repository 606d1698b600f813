"""Evaluation sets: images with their reference captions.

Two formats, chosen by the file name:

- `*.json`: the Karpathy split format of Flickr30K / Flickr8K / COCO (`dataset_flickr30k.json`):
  `{"images": [{"filename": "1000092795.jpg", "split": "test", "sentences": [{"raw": "..."}, ...],
  "filepath": "val2014" (COCO only)}, ...]}`. One split is chosen (`test`, `val`, ...).
- `*.jsonl`: one `{"image": "path/to/x.jpg", "references": ["...", ...], "id": "optional"}` per line.

Image paths are relative to `image_dir` (default: the data file's directory).

    evalset = load_eval_set(Path("flickr30k/dataset_flickr30k.json"), split="test",
                            image_dir=Path("flickr30k/flickr30k-images"))
    len(evalset), evalset.images[0].references

A malformed file, an entry without references or a missing image raise EvalSetError with a
message that names the file and the entry.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcap.formats.jsonlines import iter_objects

MISSING_SHOWN = 5


class EvalSetError(ValueError):
    """The evaluation set cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class EvalImage:
    id: str  # unique within the set: the Karpathy filename or the jsonl id
    path: Path
    references: tuple[str, ...]


@dataclass(frozen=True)
class EvalSet:
    source: Path
    split: str | None  # None for jsonl sets
    images: tuple[EvalImage, ...]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def references(self) -> dict[str, list[str]]:
        return {im.id: list(im.references) for im in self.images}

    @property
    def name(self) -> str:
        return f"{self.source.name}:{self.split}" if self.split else self.source.name


def load_eval_set(
    path: Path, *, split: str = "test", image_dir: Path | None = None, limit: int | None = None
) -> EvalSet:
    """Load a Karpathy json or a jsonl set; `limit` keeps the first N images."""
    path = Path(path)
    if not path.is_file():
        raise EvalSetError(f"{path}: no such file")
    root = Path(image_dir) if image_dir is not None else path.parent
    if path.suffix == ".jsonl":
        images, split_name = _read_jsonl(path, root), None
    else:
        images, split_name = _read_karpathy(path, root, split), split
    if limit is not None:
        images = images[:limit]
    _check_unique(path, images)
    _check_images_exist(path, images)
    return EvalSet(source=path, split=split_name, images=tuple(images))


def split_counts(path: Path) -> dict[str, int]:
    """Images per split of a Karpathy json, counted from its `split` fields."""
    return dict(Counter(str(entry.get("split")) for entry in _karpathy_entries(Path(path))))


def _karpathy_entries(path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise EvalSetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise EvalSetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise EvalSetError(f'{path}: not a Karpathy split file (expected {{"images": [...]}} at the top)')
    return doc["images"]


def _read_karpathy(path: Path, root: Path, split: str) -> list[EvalImage]:
    entries = _karpathy_entries(path)
    images = []
    for index, entry in enumerate(entries):
        where = f"{path}: images[{index}]"
        if not isinstance(entry, dict):
            raise EvalSetError(f"{where}: expected an object, got {type(entry).__name__}")
        for key in ("filename", "split", "sentences"):
            if key not in entry:
                raise EvalSetError(f"{where}: missing {key!r}")
        if entry["split"] != split:
            continue
        filename = entry["filename"]
        if not isinstance(filename, str) or not filename:
            raise EvalSetError(f"{where}: 'filename' must be a non-empty string, got {filename!r}")
        where = f"{path}: images[{index}] ({filename})"
        sentences = entry["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise EvalSetError(f"{where}: 'sentences' must be a non-empty list")
        refs = []
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                raise EvalSetError(f"{where}: sentences[{k}] has no 'raw' caption")
            refs.append(raw)
        relative = Path(entry.get("filepath") or "") / filename
        images.append(EvalImage(id=relative.as_posix(), path=root / relative, references=tuple(refs)))
    if not images:
        counts = ", ".join(f"{name}: {n}" for name, n in sorted(Counter(str(e.get("split")) for e in entries).items()))
        raise EvalSetError(f"{path}: no images in split {split!r} (images per split: {counts or 'none'})")
    return images


def _read_jsonl(path: Path, root: Path) -> list[EvalImage]:
    images = []
    for where, entry in iter_objects(path, EvalSetError):
        image, refs = entry.get("image"), entry.get("references")
        if not isinstance(image, str) or not image:
            raise EvalSetError(f"{where}: missing 'image' (a path)")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise EvalSetError(f"{where} ({image}): 'references' must be a non-empty list of strings")
        image_id = str(entry.get("id") or image)
        images.append(EvalImage(id=image_id, path=root / image, references=tuple(refs)))
    if not images:
        raise EvalSetError(f"{path}: no entries")
    return images


def _check_unique(path: Path, images: list[EvalImage]) -> None:
    dupes = [i for i, n in Counter(im.id for im in images).items() if n > 1]
    if dupes:
        raise EvalSetError(f"{path}: image id(s) used more than once: {', '.join(sorted(dupes)[:MISSING_SHOWN])}")


def _check_images_exist(path: Path, images: list[EvalImage]) -> None:
    missing = [im for im in images if not im.path.is_file()]
    if missing:
        shown = "; ".join(f"{im.id} -> {im.path}" for im in missing[:MISSING_SHOWN])
        more = f" (+{len(missing) - MISSING_SHOWN} more)" if len(missing) > MISSING_SHOWN else ""
        raise EvalSetError(
            f"{path}: {len(missing)} image(s) not found: {shown}{more} (set --images to the image directory)"
        )
