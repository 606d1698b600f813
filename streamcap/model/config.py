"""Model size as a named preset: the captioning model's configuration, importable without torch.

    cfg = ModelConfig.from_preset("base")                      # ResNet101 + 6-layer decoder
    cfg = ModelConfig.from_preset("tiny", tokenizer=tok)       # vocab_size and special ids from tok
    sorted(PRESETS)                                            # ['base', 'small', 'tiny']

`streamcap.model` re-exports `ModelConfig`; this module exists so that settings modules and
`--help` can list presets without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Trunks built with torchvision. resnet10 is torchvision's ResNet class with one BasicBlock per
# stage: there are no ImageNet weights for it, it exists so that `tiny` trains on 2 CPU cores.
BACKBONES = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# The largest model inputs the settings accept: past them a value is a slip. Activations grow
# with the square of the image side; captions are a sentence or two, and attention over the
# tokens grows with the square of their number.
MAX_IMAGE_SIZE = 2048
MAX_LEN = 512


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a CaptionModel; saved inside every checkpoint."""

    backbone: str = "resnet101"
    image_size: int = 384  # square input side; the feature grid is image_size / 32
    d_model: int = 768
    n_layers: int = 6
    n_heads: int = 12
    d_ff: int = 2048
    dropout: float = 0.1
    max_len: int = 128  # longest token sequence the decoder accepts, BOS and EOS included
    vocab_size: int = 15000
    pretrained: bool = True  # ImageNet weights for the trunk when torchvision can load them
    # Token ids decoding needs; the defaults are the layout `streamcap tokenizer build` writes
    # ([PAD] [UNK] [CLS] [SEP] [MASK] first). `from_preset(..., tokenizer=tok)` fills all four.
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        for name in ("image_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 (the trunk downsamples 32x), got {self.image_size}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even width")
        if self.d_model % 4:
            raise ValueError(f"d_model must be a multiple of 4 for the 2D positions, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.max_len < 3:
            raise ValueError(f"max_len must be at least 3 (BOS, one token, EOS), got {self.max_len}")
        ids = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        for name, value in ids.items():
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be a token id below vocab_size {self.vocab_size}, got {value!r}")
        if len(set(ids.values())) != 3:
            raise ValueError(f"pad_id, bos_id and eos_id must differ, got {ids}")

    @classmethod
    def from_preset(cls, name: str, tokenizer: Any = None, **overrides: Any) -> ModelConfig:
        """A named preset; `tokenizer` (a WordPieceTokenizer) sets vocab_size and the special ids."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
        if tokenizer is not None:
            overrides = {
                "vocab_size": tokenizer.vocab_size,
                "pad_id": tokenizer.pad_id,
                "bos_id": tokenizer.bos_id,
                "eos_id": tokenizer.eos_id,
                **overrides,
            }
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    # The original configuration: ResNet101 (42.5M) + a 6-layer decoder (59.6M with a 15K vocab).
    "base": ModelConfig(),
    # A single-GPU middle ground: ResNet50 + a 4-layer 512-wide decoder.
    "small": ModelConfig(
        backbone="resnet50", image_size=256, d_model=512, n_layers=4, n_heads=8, d_ff=2048, max_len=96
    ),
    # Trains on 2 CPU cores in minutes: tests, the demo, overfitting checks.
    "tiny": ModelConfig(
        backbone="resnet10",
        image_size=64,
        d_model=128,
        n_layers=2,
        n_heads=4,
        d_ff=512,
        dropout=0.1,
        max_len=48,
        vocab_size=2000,
        pretrained=False,
    ),
}
