"""Self-contained model checkpoints: config, tokenizer vocabulary and weights in one file.

    save_checkpoint("runs/r1/step-001000.pt", model, tok, step=1000, run="r1", extra={"loss": 2.1})
    ckpt = load_checkpoint("runs/r1/step-001000.pt")        # needs nothing else
    ckpt.model, ckpt.tokenizer, ckpt.config, ckpt.step, ckpt.run, ckpt.extra

The file is a `torch.save` of plain data (strings, numbers, lists, dicts, tensors), so it loads
with `weights_only=True`: opening a checkpoint runs no pickled code. It is written to a temp
name in the same directory and renamed, so a reader (the evaluator) never sees half a file.
Training state (optimizer, schedule, RNG, data position) belongs in a separate file.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from streamcap.common.files import atomic_writer
from streamcap.common.logs import first_line
from streamcap.model.caption_model import CaptionModel, ModelConfig
from streamcap.text.tokenizer import VocabError, WordPieceTokenizer

FORMAT = "streamcap.checkpoint"  # the file header: stays as written by every earlier version
VERSION = 1
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class CheckpointError(ValueError):
    """A file is not a loadable streamcap checkpoint; the message says why in one line."""


@dataclass
class LoadedCheckpoint:
    model: CaptionModel  # in eval mode, on map_location
    tokenizer: WordPieceTokenizer
    config: ModelConfig  # as saved (pretrained may be True; the weights come from the file)
    step: int
    run: str
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def unwrap(model: nn.Module) -> CaptionModel:
    """The CaptionModel inside DDP (`.module`) and/or torch.compile (`._orig_mod`) wrappers."""
    while not isinstance(model, CaptionModel):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a CaptionModel, got {type(model).__name__}")
        model = inner
    return model


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    tokenizer: WordPieceTokenizer,
    *,
    step: int,
    run: str,
    extra: dict | None = None,
) -> None:
    """Write config + vocab + weights to `path` atomically. `extra`: JSON-like values only."""
    model = unwrap(model)
    cfg = model.cfg
    mismatch = {
        name: (getattr(cfg, name), value)
        for name, value in (
            ("vocab_size", tokenizer.vocab_size),
            ("pad_id", tokenizer.pad_id),
            ("bos_id", tokenizer.bos_id),
            ("eos_id", tokenizer.eos_id),
        )
        if getattr(cfg, name) != value
    }
    if mismatch:
        raise ValueError(f"model config and tokenizer disagree (config, tokenizer): {mismatch}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.time(),
        "config": cfg.to_dict(),
        "vocab": list(tokenizer.vocab),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": int(step),
        "run": str(run),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:  # mode from the umask: a host user reads what a container wrote
        torch.save(payload, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild model (eval mode) and tokenizer from one checkpoint file; no download, no other file."""
    path = Path(path)
    payload = _read_payload(path)  # on the CPU: the model is built there, then moved once
    try:
        config = ModelConfig.from_dict(payload["config"])
        tokenizer = WordPieceTokenizer.from_vocab(payload["vocab"])
        # The weights come from the file: never ask torchvision for ImageNet weights, and build
        # on the meta device so no time goes into initialising weights about to be replaced.
        with torch.device("meta"):
            model = CaptionModel(replace(config, pretrained=False))
        model.load_state_dict(payload["state_dict"], assign=True)
    except (KeyError, TypeError, ValueError, VocabError, RuntimeError) as e:
        reason = first_line(e)
        raise CheckpointError(f"{path}: damaged or incompatible checkpoint ({reason})") from None
    model.to(map_location).eval()
    return LoadedCheckpoint(
        model=model,
        tokenizer=tokenizer,
        config=config,
        step=int(payload.get("step", 0)),
        run=str(payload.get("run", "")),
        extra=dict(payload.get("extra") or {}),
        path=path,
    )


def _load_error(e: Exception) -> str:
    """torch's reason in our words: its own text carries terminal colour codes and advice to load
    the file with weights_only=False, i.e. to run whatever code the file holds."""
    found = _UNSUPPORTED_GLOBAL.search(str(e))
    if found or "Weights only load failed" in str(e):
        what = f" (a {found.group(1)})" if found else ""
        return (
            f"it holds pickled Python objects{what}, not plain tensors and data: not a file `streamcap train` "
            "wrote, and streamcap never runs code from a checkpoint"
        )
    return f"{type(e).__name__}: {_ANSI.sub('', first_line(e, 200))}"


def _read_payload(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for "not a torch file" (pickle, zip, EOF)
        raise CheckpointError(f"{path}: not a readable checkpoint ({_load_error(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a streamcap checkpoint (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('version')!r}, this streamcap reads {VERSION}"
        )
    return payload
