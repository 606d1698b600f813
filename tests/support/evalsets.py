"""Evaluation fixtures on disk: tiny generated evaluation sets, tiny random checkpoints, and
announcing a checkpoint on the `checkpoints` stream the way the trainer does."""

from __future__ import annotations

import json
import time
from pathlib import Path

from streamcap import bus
from streamcap.formats.records import CheckpointRecord
from tests.support.images import save_image

WORDS = ["a", "dog", "cat", "man", "woman", "runs", "sits", "on", "the", "beach", "grass", "red", "blue", "ball"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "."]


def references(seed: int) -> list[str]:
    w = WORDS
    return [
        f"A {w[seed % 4 + 1]} {w[5 + seed % 2]} on the {w[9 + seed % 2]}.",
        f"the {w[seed % 4 + 1]} is on {w[9 + seed % 2]}",
        f"a {w[11 + seed % 2]} {w[13]} and a {w[seed % 4 + 1]}",
    ]


def karpathy_set(root: Path, *, test: int = 4, val: int = 2, train: int = 3, image_dir: str = "images") -> Path:
    """A dataset_flickr30k.json in Karpathy's format with generated images under root/image_dir."""
    entries = []
    for i in range(test + val + train):
        split = "test" if i < test else "val" if i < test + val else "train"
        filename = f"{1000 + i}.jpg"
        save_image(root / image_dir / filename, i)
        entries.append(
            {
                "filename": filename,
                "imgid": i,
                "split": split,
                "sentids": [5 * i + k for k in range(3)],
                "sentences": [{"raw": s, "tokens": s.lower().split(), "imgid": i} for s in references(i)],
            }
        )
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"dataset": "flickr30k", "images": entries}), encoding="utf-8")
    return path


def jsonl_set(root: Path, n: int = 3) -> Path:
    lines = []
    for i in range(n):
        save_image(root / "pics" / f"p{i}.png", 50 + i)
        lines.append(json.dumps({"image": f"pics/p{i}.png", "references": references(i)}))
    path = root / "set.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_checkpoint(path: Path, *, seed: int = 0, step: int = 100, run: str = "r1") -> Path:
    """A randomly initialised tiny model saved with `save_checkpoint` (no training)."""
    import torch

    from streamcap.model.caption_model import CaptionModel, ModelConfig
    from streamcap.model.checkpoint import save_checkpoint
    from streamcap.text.tokenizer import WordPieceTokenizer

    torch.manual_seed(seed)
    tok = WordPieceTokenizer.from_vocab(VOCAB)
    cfg = ModelConfig.from_preset(
        "tiny", tokenizer=tok, image_size=32, d_model=32, n_heads=2, d_ff=64, n_layers=1, max_len=16
    )
    save_checkpoint(path, CaptionModel(cfg), tok, step=step, run=run)
    return path


def publish(r, keys: bus.Keys, path: Path, step: int, run: str = "r1") -> str:
    """Announce a checkpoint as the trainer does; returns the stream entry id."""
    record = CheckpointRecord(path=str(Path(path).resolve()), step=step, run=run, created=time.time())
    return r.xadd(keys.checkpoints, bus.encode(record.to_message()))
